//! Routes built into the server on the library API: the echo route (Autobahn, interop tests,
//! benchmarks) and the raw fan-out route (benchmarks against servers without rooms). Both are
//! off unless configured.

pub mod echo;
pub mod raw_fanout;

pub use echo::Echo;
pub use raw_fanout::RawFanout;
