//! Examples of embedding Switchboard; run them with `cargo run -p switchboard-examples --example NAME`.
