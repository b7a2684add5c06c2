//! Incremental UTF-8 validation for text messages that arrive in pieces.
//!
//! Fails on the first byte that can never be part of valid UTF-8, even when the
//! message is not complete yet (Autobahn 6.4.x checks exactly this).

/// Validates a byte stream fed in arbitrary pieces.
#[derive(Clone, Copy, Debug, Default)]
pub struct Utf8Validator {
    /// Bytes of a code point cut off at the end of the previous piece.
    pending: [u8; 4],
    pending_len: u8,
}

/// The stream holds a byte sequence that is not UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Utf8Error;

impl Utf8Validator {
    /// A validator at the start of a message.
    pub const fn new() -> Self {
        Utf8Validator { pending: [0; 4], pending_len: 0 }
    }

    /// Forgets any state, ready for the next message.
    pub fn reset(&mut self) {
        self.pending_len = 0;
    }

    /// Feeds the next piece. An error means no continuation can make it valid.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(), Utf8Error> {
        if self.pending_len > 0 {
            // Complete the cut-off code point with as few new bytes as it needs.
            let have = self.pending_len as usize;
            let need = utf8_len(self.pending[0]).ok_or(Utf8Error)?;
            let take = (need - have).min(input.len());
            self.pending[have..have + take].copy_from_slice(&input[..take]);
            let now = have + take;
            match std::str::from_utf8(&self.pending[..now]) {
                Ok(_) => {
                    self.pending_len = 0;
                    input = &input[take..];
                }
                Err(e) if e.error_len().is_none() => {
                    // Still incomplete: only possible when the input ran out.
                    self.pending_len = now as u8;
                    return Ok(());
                }
                Err(_) => return Err(Utf8Error),
            }
        }
        match std::str::from_utf8(input) {
            Ok(_) => Ok(()),
            Err(e) => match e.error_len() {
                Some(_) => Err(Utf8Error),
                None => {
                    let rest = &input[e.valid_up_to()..];
                    self.pending[..rest.len()].copy_from_slice(rest);
                    self.pending_len = rest.len() as u8;
                    Ok(())
                }
            },
        }
    }

    /// Ends the message: a code point left incomplete is an error.
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        let incomplete = self.pending_len != 0;
        self.pending_len = 0;
        if incomplete {
            Err(Utf8Error)
        } else {
            Ok(())
        }
    }
}

/// Length of the code point a lead byte starts, or `None` for a byte that cannot lead.
fn utf8_len(lead: u8) -> Option<usize> {
    match lead {
        0x00..=0x7f => Some(1),
        0xc2..=0xdf => Some(2),
        0xe0..=0xef => Some(3),
        0xf0..=0xf4 => Some(4),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_all_splits(bytes: &[u8]) -> bool {
        let whole = std::str::from_utf8(bytes).is_ok();
        for cut in 0..=bytes.len() {
            let mut v = Utf8Validator::new();
            let r = v.feed(&bytes[..cut]).and_then(|_| v.feed(&bytes[cut..])).and_then(|_| v.finish());
            assert_eq!(r.is_ok(), whole, "split at {cut} of {bytes:x?}");
        }
        // Byte by byte.
        let mut v = Utf8Validator::new();
        let r = bytes.iter().try_for_each(|b| v.feed(std::slice::from_ref(b))).and_then(|_| v.finish());
        assert_eq!(r.is_ok(), whole);
        whole
    }

    #[test]
    fn valid_text_in_any_split() {
        assert!(check_all_splits("κόσμε Hello-µ@ßöäüàá-UTF-8!! 𝄞".as_bytes()));
        assert!(check_all_splits(&[0xf4, 0x8f, 0xbf, 0xbf]));
    }

    #[test]
    fn invalid_text_in_any_split() {
        for bad in [
            &[0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80][..],
            &[0xf4, 0x90, 0x80, 0x80],
            &[0xc0, 0xaf],
            &[0xff],
            &[0xe0, 0x80, 0xaf],
            &[0xed, 0xa0, 0x80],
            &[0xce],
        ] {
            assert!(!check_all_splits(bad));
        }
    }

    #[test]
    fn fails_fast_before_the_message_ends() {
        // 6.4.1-style: an impossible sequence is reported without waiting for the rest.
        let mut v = Utf8Validator::new();
        assert!(v.feed("κόσμε".as_bytes()).is_ok());
        assert_eq!(v.feed(&[0xf4, 0x90]), Err(Utf8Error));
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[0xed, 0xa0]), Err(Utf8Error));
    }
}
