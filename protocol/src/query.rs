//! Request targets and query strings (`application/x-www-form-urlencoded` style).
//!
//! [`split_target`] separates path and query; [`pairs`] walks `key=value` pairs with
//! percent-decoding and `+` as space; [`percent_decode`] decodes one component. Decoded
//! text must be UTF-8; anything else is a [`QueryError`] (the server answers 400).

use std::borrow::Cow;
use std::fmt;

/// Most `key=value` pairs [`Query::parse`] keeps; more is an error.
pub const MAX_QUERY_PAIRS: usize = 32;

/// A query string that cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryError {
    /// `%` not followed by two hex digits.
    BadEscape,
    /// The decoded bytes are not UTF-8.
    NotUtf8,
    /// More pairs than [`MAX_QUERY_PAIRS`].
    TooManyPairs,
}

impl QueryError {
    /// A short reason for the 400 response.
    pub fn reason(&self) -> &'static str {
        match self {
            QueryError::BadEscape => "invalid percent-escape in query",
            QueryError::NotUtf8 => "query is not valid UTF-8",
            QueryError::TooManyPairs => "too many query parameters",
        }
    }
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for QueryError {}

/// Splits a request target into path and query (`/a?b=c` -> `("/a", Some("b=c"))`).
/// A fragment (`#...`), which clients should not send, is dropped.
pub fn split_target(target: &str) -> (&str, Option<&str>) {
    let target = match target.find('#') {
        Some(i) => &target[..i],
        None => target,
    };
    match target.find('?') {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    }
}

/// Percent-decodes one query component. With `plus_as_space`, `+` becomes a space (as in
/// form-encoded queries). Borrows when nothing needs decoding.
pub fn percent_decode(input: &str, plus_as_space: bool) -> Result<Cow<'_, str>, QueryError> {
    let bytes = input.as_bytes();
    let needs = bytes
        .iter()
        .any(|&b| b == b'%' || (plus_as_space && b == b'+'));
    if !needs {
        return Ok(Cow::Borrowed(input));
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_val);
                let lo = bytes.get(i + 2).copied().and_then(hex_val);
                match (hi, lo) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => return Err(QueryError::BadEscape),
                }
                i += 3;
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| QueryError::NotUtf8)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Iterates the decoded `key=value` pairs of a query string. Empty segments (`a=1&&b=2`)
/// are skipped; a key without `=` has an empty value.
pub fn pairs(
    query: &str,
) -> impl Iterator<Item = Result<(Cow<'_, str>, Cow<'_, str>), QueryError>> {
    query.split('&').filter(|s| !s.is_empty()).map(|seg| {
        let (k, v) = match seg.find('=') {
            Some(i) => (&seg[..i], &seg[i + 1..]),
            None => (seg, ""),
        };
        Ok((percent_decode(k, true)?, percent_decode(v, true)?))
    })
}

/// A decoded query string, for lookups by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query<'a> {
    pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Query<'a> {
    /// Decodes every pair of `query` (at most [`MAX_QUERY_PAIRS`]).
    pub fn parse(query: &'a str) -> Result<Query<'a>, QueryError> {
        let mut out = Vec::new();
        for pair in pairs(query) {
            if out.len() == MAX_QUERY_PAIRS {
                return Err(QueryError::TooManyPairs);
            }
            out.push(pair?);
        }
        Ok(Query { pairs: out })
    }

    /// The first value for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// The first value for any of `keys`, in the order given (for aliases such as
    /// `channel` / `cname`).
    pub fn get_any(&self, keys: &[&str]) -> Option<&str> {
        keys.iter().find_map(|k| self.get(k))
    }

    /// Every pair, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// True when there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_targets() {
        assert_eq!(split_target("/ws?channel=a"), ("/ws", Some("channel=a")));
        assert_eq!(split_target("/ws"), ("/ws", None));
        assert_eq!(split_target("/ws?"), ("/ws", Some("")));
        assert_eq!(split_target("/a?b=c#frag"), ("/a", Some("b=c")));
        assert_eq!(split_target("/a?b=?c"), ("/a", Some("b=?c")));
    }

    #[test]
    fn decodes_components() {
        assert_eq!(percent_decode("plain", true).unwrap(), "plain");
        assert!(matches!(
            percent_decode("plain", true).unwrap(),
            Cow::Borrowed(_)
        ));
        assert_eq!(percent_decode("a+b%20c", true).unwrap(), "a b c");
        assert_eq!(percent_decode("a+b", false).unwrap(), "a+b");
        assert_eq!(percent_decode("%E2%9C%93", true).unwrap(), "\u{2713}");
        assert_eq!(percent_decode("%2b%2B", true).unwrap(), "++");
        assert_eq!(percent_decode("%", true), Err(QueryError::BadEscape));
        assert_eq!(percent_decode("%4", true), Err(QueryError::BadEscape));
        assert_eq!(percent_decode("%zz", true), Err(QueryError::BadEscape));
        assert_eq!(percent_decode("%FF", true), Err(QueryError::NotUtf8));
        assert_eq!(percent_decode("%C3", true), Err(QueryError::NotUtf8));
    }

    #[test]
    fn parses_queries() {
        let q = Query::parse("channel=news,chat&since=12&&flag&content=hi+there%21").unwrap();
        assert_eq!(q.get("channel"), Some("news,chat"));
        assert_eq!(q.get("since"), Some("12"));
        assert_eq!(q.get("flag"), Some(""));
        assert_eq!(q.get("content"), Some("hi there!"));
        assert_eq!(q.get("missing"), None);
        assert_eq!(q.get_any(&["cname", "channel"]), Some("news,chat"));
        assert_eq!(q.len(), 4);
        let q = Query::parse("a=1&a=2").unwrap();
        assert_eq!(q.get("a"), Some("1"));
        assert!(Query::parse("").unwrap().is_empty());
        assert_eq!(Query::parse("a=%"), Err(QueryError::BadEscape));
        let many = vec!["x=1"; MAX_QUERY_PAIRS + 1].join("&");
        assert_eq!(Query::parse(&many), Err(QueryError::TooManyPairs));
    }
}
