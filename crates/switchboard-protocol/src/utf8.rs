//! Incremental UTF-8 validation across fragments and partial frames, failing on the first
//! invalid byte (built on simdutf8's `compat` API, which reports where an error is and whether
//! the input merely ends inside a character).

/// Validates a text message that arrives in pieces.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    /// The bytes of a character split across pieces (at most 3).
    pending: [u8; 4],
    pending_len: u8,
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next piece. `Err(())` as soon as the bytes seen so far cannot begin valid UTF-8.
    #[allow(clippy::result_unit_err)]
    pub fn feed(&mut self, piece: &[u8]) -> Result<(), ()> {
        let _ = piece;
        todo!()
    }

    /// Ends the message: `Err(())` if it stops inside a character. Resets for the next message.
    #[allow(clippy::result_unit_err)]
    pub fn finish(&mut self) -> Result<(), ()> {
        todo!()
    }
}
