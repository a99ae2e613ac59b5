//! The content of a published message: its send time and index, padded to a size.
//!
//! `{"t":<unix nanos>,"i":<index>,"p":"xxxx"}` — `t` is taken just before the publish
//! request is written, `i` counts messages from 0, and `p` pads the content to the
//! requested size (no `p` when the size is smaller than the rest). The fields come in this
//! order, so a subscriber reads them without a JSON parser.

/// Writes the content for message `i` sent at `t_ns`, padded to `size` bytes.
pub fn encode(t_ns: u64, i: u32, size: usize) -> String {
    let mut s = format!("{{\"t\":{t_ns},\"i\":{i}");
    // `,"p":""}` costs 8 bytes.
    if size >= s.len() + 8 {
        s.push_str(",\"p\":\"");
        let pad = size - s.len() - 2;
        s.extend(std::iter::repeat_n('x', pad));
        s.push('"');
    }
    s.push('}');
    s
}

/// Reads `(t_ns, i)` from a content written by [`encode`]; `None` for anything else.
pub fn decode(content: &[u8]) -> Option<(u64, u32)> {
    let rest = content.strip_prefix(b"{\"t\":")?;
    let (t, rest) = number(rest)?;
    let rest = rest.strip_prefix(b",\"i\":")?;
    let (i, rest) = number(rest)?;
    if !matches!(rest.first(), Some(b',' | b'}')) {
        return None;
    }
    Some((t, u32::try_from(i).ok()?))
}

/// A decimal number at the start of `s` (1 to 20 digits) and what follows it.
fn number(s: &[u8]) -> Option<(u64, &[u8])> {
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &d in &s[..digits] {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some((n, &s[digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_size() {
        let t = 1_760_000_000_123_456_789;
        let small = encode(t, 7, 0);
        assert_eq!(small, format!("{{\"t\":{t},\"i\":7}}"));
        assert_eq!(decode(small.as_bytes()), Some((t, 7)));
        for size in [0, 30, 38, 39, 40, 41, 64, 200, 4096] {
            let s = encode(t, 123, size);
            assert_eq!(decode(s.as_bytes()), Some((t, 123)), "{s}");
            assert!(serde_json::from_str::<serde_json::Value>(&s).is_ok(), "{s}");
            if size >= 40 {
                assert_eq!(s.len(), size, "{s}");
            }
        }
    }

    #[test]
    fn rejects_foreign_content() {
        for bad in [
            &b""[..],
            b"hello",
            b"{\"t\":1}",
            b"{\"t\":,\"i\":1}",
            b"{\"t\":1,\"i\":1",
            b"{\"t\":1,\"i\":1x}",
            b"{\"t\":99999999999999999999999,\"i\":1}",
            b"{\"t\":1,\"i\":4294967296}",
            b"{\"i\":1,\"t\":1}",
        ] {
            assert_eq!(decode(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
