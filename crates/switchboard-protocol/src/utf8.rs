//! Incremental UTF-8 validation across fragments and partial frames, failing on the first
//! invalid byte (built on simdutf8's `compat` API, which reports where an error is and whether
//! the input merely ends inside a character).

use simdutf8::compat::from_utf8;

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
        let mut rest = piece;
        let have = usize::from(self.pending_len);
        if have > 0 {
            // Complete the split character with up to 4 bytes in all, then go on with the rest.
            let take = (4 - have).min(rest.len());
            let mut joined = self.pending;
            joined[have..have + take].copy_from_slice(&rest[..take]);
            match from_utf8(&joined[..have + take]) {
                Ok(_) => rest = &rest[take..],
                Err(e) if e.error_len().is_some() => return Err(()),
                // The split character is complete; what follows it starts over below.
                Err(e) if e.valid_up_to() >= have => rest = &rest[e.valid_up_to() - have..],
                // Still inside the character: `piece` was shorter than what it needs.
                Err(_) => {
                    self.pending = joined;
                    self.pending_len = (have + take) as u8;
                    return Ok(());
                }
            }
            self.pending_len = 0;
        }
        match from_utf8(rest) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(()),
            Err(e) => {
                // `error_len() == None`: the input ends inside a character, at most 3 bytes.
                let tail = &rest[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// Ends the message: `Err(())` if it stops inside a character. Resets for the next message.
    #[allow(clippy::result_unit_err)]
    pub fn finish(&mut self) -> Result<(), ()> {
        let complete = self.pending_len == 0;
        self.pending_len = 0;
        if complete { Ok(()) } else { Err(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: &[&str] = &[
        "",
        "hello",
        "κόσμε",
        "Hello-µ@ßöäüàá-UTF-8!!",
        "\u{10FFFF}\u{1F600}a\u{800}\u{7FF}\u{80}",
        "日本語のテキスト",
    ];

    fn validate_split(bytes: &[u8], split: usize) -> Result<(), ()> {
        let mut v = Utf8Validator::new();
        v.feed(&bytes[..split])?;
        v.feed(&bytes[split..])?;
        v.finish()
    }

    #[test]
    fn valid_text_at_every_split() {
        for sample in SAMPLES {
            let bytes = sample.as_bytes();
            for split in 0..=bytes.len() {
                assert_eq!(
                    validate_split(bytes, split),
                    Ok(()),
                    "{sample:?} split at {split}"
                );
            }
            // One byte at a time.
            let mut v = Utf8Validator::new();
            for b in bytes {
                v.feed(std::slice::from_ref(b)).unwrap();
            }
            v.finish().unwrap();
        }
    }

    #[test]
    fn invalid_text_at_every_split() {
        let cases: &[&[u8]] = &[
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
            b"abc\xff",
            b"\xc0\xaf",
            b"\xe0\x80\xaf",
            b"\xf4\x90\x80\x80",
            b"\xed\xa0\x80",
            b"ok\x80",
        ];
        for bytes in cases {
            for split in 0..=bytes.len() {
                assert_eq!(
                    validate_split(bytes, split),
                    Err(()),
                    "{bytes:?} split at {split}"
                );
            }
        }
    }

    #[test]
    fn truncated_character_fails_at_finish_only() {
        let bytes = "€".as_bytes();
        for end in 1..bytes.len() {
            let mut v = Utf8Validator::new();
            assert_eq!(v.feed(&bytes[..end]), Ok(()));
            assert_eq!(v.finish(), Err(()));
            // finish() resets for the next message.
            assert_eq!(v.feed(b"next"), Ok(()));
            assert_eq!(v.finish(), Ok(()));
        }
    }

    #[test]
    fn fails_on_first_invalid_byte() {
        // A surrogate's second byte is already impossible: no need to wait for the third.
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"ab\xed"), Ok(()));
        assert_eq!(v.feed(b"\xa0"), Err(()));
        // A code point above U+10FFFF shows at its second byte.
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xf4\x90"), Err(()));
    }
}
