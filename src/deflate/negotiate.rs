//! permessage-deflate negotiation (RFC 7692 sections 5 to 7): the client's offers in,
//! the one the server accepts and its answer out. Pure: no compressor is touched here.

/// Which compression the server offers, and how it holds compression state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    /// permessage-deflate offers are declined (the default).
    #[default]
    Off,
    /// One compressor and one decompressor per worker, reset after every message: the
    /// answer is always `server_no_context_takeover; client_no_context_takeover`, so no
    /// connection holds compression state.
    Shared,
    /// A compressor per connection that keeps its context between the connection's
    /// messages (no `server_no_context_takeover` in the answer, unless the client asks
    /// for it), taken on the first compressed send and released once the connection
    /// has sent nothing compressed for `compression_idle`. The decompressor stays the
    /// worker's: the answer still asks for `client_no_context_takeover`, so nothing
    /// about a client's messages outlives them (RFC 7692 7.1.1.2).
    Dedicated,
}

/// What one connection negotiated: the server's window for its own messages and
/// whether the server keeps its compression context between them. The server always
/// asks the client not to keep one (`client_no_context_takeover`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreed {
    /// The LZ77 window the server compresses with (9 to 15).
    pub server_max_window_bits: u8,
    /// The answer left out `server_no_context_takeover`: the server's messages may
    /// refer back to its earlier ones (`dedicated` mode).
    pub server_context_takeover: bool,
}

/// [`Agreed::to_byte`]'s flag for context takeover (window bits fit in the low nibble).
const TAKEOVER: u8 = 0x80;

impl Agreed {
    /// Packed into one byte, never 0, so a session holds a negotiation in its padding.
    pub fn to_byte(self) -> u8 {
        self.server_max_window_bits | if self.server_context_takeover { TAKEOVER } else { 0 }
    }

    /// The inverse of [`Agreed::to_byte`]; 0 is "not negotiated".
    pub fn from_byte(b: u8) -> Option<Agreed> {
        (b != 0).then_some(Agreed { server_max_window_bits: b & !TAKEOVER, server_context_takeover: b & TAKEOVER != 0 })
    }
}

/// Parameters of one offer, after the RFC's checks.
#[derive(Default)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: offered without a value.
    client_max_window_bits: Option<Option<u8>>,
}

/// A window-bits value: 8 to 15 in decimal with no leading zero, quoted or not
/// (RFC 7692 7.1.2.1).
fn window_bits(v: &str) -> Option<u8> {
    let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
    if v.is_empty() || v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u8 = v.parse().ok()?;
    (8..=15).contains(&n).then_some(n)
}

/// Parses one element of `Sec-WebSocket-Extensions` if it is a permessage-deflate
/// offer. `None`: another extension, or an offer that must be declined (an unknown
/// parameter, a parameter twice, a bad value: RFC 7692 5.1).
fn parse_offer(element: &str) -> Option<Offer> {
    let mut parts = element.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut o = Offer::default();
    for p in parts {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (p, None),
        };
        let name = name.to_ascii_lowercase();
        match (name.as_str(), value) {
            ("server_no_context_takeover", None) if !o.server_no_context_takeover => {
                o.server_no_context_takeover = true
            }
            ("client_no_context_takeover", None) if !o.client_no_context_takeover => {
                o.client_no_context_takeover = true
            }
            ("server_max_window_bits", Some(v)) if o.server_max_window_bits.is_none() => {
                o.server_max_window_bits = Some(window_bits(v)?)
            }
            ("client_max_window_bits", v) if o.client_max_window_bits.is_none() => {
                o.client_max_window_bits = Some(match v {
                    None => None,
                    Some(v) => Some(window_bits(v)?),
                })
            }
            _ => return None,
        }
    }
    Some(o)
}

/// Picks the first offer in `offers` (every element of every `Sec-WebSocket-Extensions`
/// field, in order) that the server can honour. Returns what was agreed and the
/// `Sec-WebSocket-Extensions` header line to answer with (CRLF included), or `None`:
/// the connection goes on uncompressed.
///
/// `window_bits` is the most the server compresses with (9 to 15). An offer that asks
/// for `server_max_window_bits=8` is declined: zlib compresses with 9 bits at least
/// (RFC 7692 7.1.2.1 lets the server decline a window it does not support).
pub fn negotiate<'a>(
    mode: Compression,
    window_bits: u8,
    offers: impl Iterator<Item = &'a str>,
) -> Option<(Agreed, String)> {
    if mode == Compression::Off {
        return None;
    }
    for element in offers {
        let Some(o) = parse_offer(element) else {
            continue;
        };
        let server_bits = o.server_max_window_bits.unwrap_or(15).min(window_bits);
        if server_bits < 9 {
            continue;
        }
        // Every parameter the server applies, and only those. client_no_context_takeover
        // is always asked for (the worker's decompressor is reset after every message;
        // RFC 7692 7.1.1.2 lets a server ask for it unoffered). server_no_context_takeover
        // is given in shared mode (its compressor is reset too), and in dedicated mode
        // only when the client asks for it (7.1.1.1: then it must be honoured, and the
        // connection uses the worker's compressor).
        let takeover = mode == Compression::Dedicated && !o.server_no_context_takeover;
        let mut header = String::from("Sec-WebSocket-Extensions: permessage-deflate");
        if !takeover {
            header.push_str("; server_no_context_takeover");
        }
        header.push_str("; client_no_context_takeover");
        if o.server_max_window_bits.is_some() || server_bits < 15 {
            header.push_str(&format!("; server_max_window_bits={server_bits}"));
        }
        header.push_str("\r\n");
        // The decompressor has a 15-bit window: it inflates whatever window the client
        // uses, so an offered client_max_window_bits needs no answer; the context
        // takeover parameters offered are already met.
        let agreed = Agreed { server_max_window_bits: server_bits, server_context_takeover: takeover };
        return Some((agreed, header));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(offers: &[&str]) -> Option<String> {
        negotiate(Compression::Shared, 15, offers.iter().copied()).map(|(_, h)| h)
    }

    const BASE: &str =
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    #[test]
    fn offers_and_answers() {
        let cases: &[(&[&str], Option<&str>)] = &[
            (&["permessage-deflate"], Some("")),
            (&["permessage-deflate; client_max_window_bits"], Some("")),
            (&["permessage-deflate; client_max_window_bits=10"], Some("")),
            (&["permessage-deflate; server_max_window_bits=10"], Some("; server_max_window_bits=10")),
            (&["permessage-deflate; server_max_window_bits=\"12\""], Some("; server_max_window_bits=12")),
            (&["permessage-deflate;server_no_context_takeover;client_no_context_takeover"], Some("")),
            (&["PerMessage-Deflate; Client_Max_Window_Bits"], Some("")),
            // Declined: 8 bits, bad values, unknown or repeated parameters.
            (&["permessage-deflate; server_max_window_bits=8"], None),
            (&["permessage-deflate; server_max_window_bits"], None),
            (&["permessage-deflate; server_max_window_bits=16"], None),
            (&["permessage-deflate; server_max_window_bits=010"], None),
            (&["permessage-deflate; client_max_window_bits=7"], None),
            (&["permessage-deflate; server_no_context_takeover=1"], None),
            (&["permessage-deflate; foo"], None),
            (&["permessage-deflate; client_no_context_takeover; client_no_context_takeover"], None),
            (&["x-webkit-deflate-frame"], None),
            // The first offer the server can honour.
            (&["permessage-deflate; server_max_window_bits=8", "permessage-deflate"], Some("")),
            (&["foo", "permessage-deflate; server_max_window_bits=9"], Some("; server_max_window_bits=9")),
        ];
        for (offers, want) in cases {
            let want = want.map(|w| format!("{BASE}{w}\r\n"));
            assert_eq!(answer(offers), want, "{offers:?}");
        }
    }

    #[test]
    fn dedicated_keeps_context_unless_the_client_asks_not_to() {
        let ask = |offer: &str| negotiate(Compression::Dedicated, 12, [offer].into_iter()).unwrap();
        let (a, h) = ask("permessage-deflate; client_max_window_bits");
        assert_eq!(a, Agreed { server_max_window_bits: 12, server_context_takeover: true });
        assert_eq!(
            h,
            "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; server_max_window_bits=12\r\n"
        );
        let (a, h) = ask("permessage-deflate; server_no_context_takeover; server_max_window_bits=10");
        assert_eq!(a, Agreed { server_max_window_bits: 10, server_context_takeover: false });
        assert_eq!(h, format!("{BASE}; server_max_window_bits=10\r\n"));
        for a in [a, Agreed { server_max_window_bits: 15, server_context_takeover: true }] {
            assert_ne!(a.to_byte(), 0);
            assert_eq!(Agreed::from_byte(a.to_byte()), Some(a));
        }
        assert_eq!(Agreed::from_byte(0), None);
    }

    #[test]
    fn off_declines_and_window_bits_bound_the_answer() {
        assert_eq!(negotiate(Compression::Off, 15, ["permessage-deflate"].into_iter()), None);
        let (a, h) = negotiate(Compression::Shared, 11, ["permessage-deflate"].into_iter()).unwrap();
        assert_eq!(a.server_max_window_bits, 11);
        assert!(h.ends_with("; server_max_window_bits=11\r\n"), "{h}");
    }
}
