//! Subscriber tokens: JWT (RFC 7519) signed with HS256 only.
//!
//! A token carries `channels` (a list) or `channel` (one name): what the client may
//! subscribe to; `pub` (a list, or one name): what it may publish to (checked together
//! with `client_publish`); `sub`: who the client is, stamped as `"from"` on every message
//! it publishes; and `exp` (Unix seconds; required), when its rights end. A name
//! containing `*` is a pattern, as in `client_publish`. The header must say
//! `"alg":"HS256"`: `none` and every other algorithm are refused, whatever the signature.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::config::pattern_matches;
use crate::limits::{MAX_SUB_LEN, MAX_TOKEN_LEN};

type HmacSha256 = Hmac<Sha256>;

/// Why a token is refused (the subscriber gets 401, or close 1008 on WebSocket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// No token was given.
    Missing,
    /// Not three base64url parts of JSON, or too long.
    Malformed,
    /// The header names an algorithm other than HS256.
    Algorithm,
    /// The signature does not match.
    Signature,
    /// `exp` is missing or in the past.
    Expired,
    /// The token does not grant this channel.
    Channel,
    /// The `sub` claim is longer than [`MAX_SUB_LEN`], or holds control characters.
    SubTooLong,
}

impl TokenError {
    /// A reason for the client.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Missing => "token required",
            TokenError::Malformed => "malformed token",
            TokenError::Algorithm => "token algorithm must be HS256",
            TokenError::Signature => "bad token signature",
            TokenError::Expired => "token expired or without exp",
            TokenError::Channel => "token does not grant this channel",
            TokenError::SubTooLong => {
                "token sub claim longer than 256 bytes or with control characters"
            }
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// A claim that is one name or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum Names {
    One(String),
    Many(Vec<String>),
}

impl Names {
    fn into_patterns(self) -> impl Iterator<Item = Box<str>> {
        match self {
            Names::One(n) => vec![n],
            Names::Many(v) => v,
        }
        .into_iter()
        .map(String::into_boxed_str)
    }
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default, rename = "pub")]
    publish: Option<Names>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
}

/// What a verified token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    patterns: Box<[Box<str>]>,
    publish: Box<[Box<str>]>,
    /// Who the client is (`sub`), stamped on what it publishes.
    pub sub: Option<Box<str>>,
    /// Expiry (Unix seconds).
    pub exp: u64,
}

impl Grant {
    /// True when the token grants subscribing to `channel`.
    pub fn allows(&self, channel: &str) -> bool {
        self.patterns.iter().any(|p| pattern_matches(p, channel))
    }

    /// True when the token grants publishing to `channel` (its `pub` claim).
    pub fn may_publish(&self, channel: &str) -> bool {
        self.publish.iter().any(|p| pattern_matches(p, channel))
    }
}

/// Verifies a token against `secret` at time `now` (Unix seconds).
pub fn verify(token: &str, secret: &[u8], now: u64) -> Result<Grant, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header_bytes = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| TokenError::Malformed)?;
    let header: Header =
        serde_json::from_slice(&header_bytes).map_err(|_| TokenError::Malformed)?;
    if header.alg != "HS256" {
        return Err(TokenError::Algorithm);
    }
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| TokenError::Malformed)?;
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| TokenError::Signature)?;
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    // verify_slice compares in constant time.
    mac.verify_slice(&sig).map_err(|_| TokenError::Signature)?;
    let claims_bytes = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| TokenError::Malformed)?;
    let claims: Claims =
        serde_json::from_slice(&claims_bytes).map_err(|_| TokenError::Malformed)?;
    let exp = claims.exp.ok_or(TokenError::Expired)?;
    if exp <= now {
        return Err(TokenError::Expired);
    }
    let mut patterns: Vec<Box<str>> = Vec::new();
    if let Some(list) = claims.channels {
        patterns.extend(list.into_iter().map(String::into_boxed_str));
    }
    if let Some(one) = claims.channel {
        patterns.push(one.into_boxed_str());
    }
    // A control character would be taken for the separator of a message's sender and
    // event (`msg::META_SEP`).
    if claims
        .sub
        .as_ref()
        .is_some_and(|s| s.len() > MAX_SUB_LEN || s.chars().any(char::is_control))
    {
        return Err(TokenError::SubTooLong);
    }
    Ok(Grant {
        patterns: patterns.into_boxed_slice(),
        publish: claims
            .publish
            .map(|n| n.into_patterns().collect())
            .unwrap_or_default(),
        sub: claims.sub.map(String::into_boxed_str),
        exp,
    })
}

/// What a minted token grants.
#[derive(Debug, Clone, Copy, Default)]
pub struct Claim<'a> {
    /// Channels (or patterns) to subscribe to.
    pub channels: &'a [&'a str],
    /// Channels (or patterns) to publish to (`pub`); none when empty.
    pub publish: &'a [&'a str],
    /// The client's identity (`sub`).
    pub sub: Option<&'a str>,
}

/// Mints a token with `claim` that expires at `exp`.
pub fn sign(claim: &Claim<'_>, exp: u64, secret: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let mut claims = serde_json::json!({ "channels": claim.channels, "exp": exp });
    if !claim.publish.is_empty() {
        claims["pub"] = serde_json::json!(claim.publish);
    }
    if let Some(sub) = claim.sub {
        claims["sub"] = serde_json::json!(sub);
    }
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{header}.{payload}.{sig}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"secret";

    #[test]
    fn round_trip() {
        let channels = ["news", "chat.*"];
        let t = sign(
            &Claim {
                channels: &channels,
                ..Claim::default()
            },
            2000,
            KEY,
        );
        let g = verify(&t, KEY, 1000).unwrap();
        assert!(g.allows("news"));
        assert!(g.allows("chat.x"));
        assert!(!g.allows("other"));
        assert!(!g.may_publish("news"), "no pub claim: no publishing");
        assert_eq!(g.sub, None);
        assert_eq!(verify(&t, KEY, 2000), Err(TokenError::Expired));
        assert_eq!(verify(&t, b"other", 1000), Err(TokenError::Signature));
    }

    #[test]
    fn pub_and_sub_claims() {
        let t = sign(
            &Claim {
                channels: &["chat.*"],
                publish: &["chat.dm.bob", "chat.room.*"],
                sub: Some("bob"),
            },
            2000,
            KEY,
        );
        let g = verify(&t, KEY, 1000).unwrap();
        assert!(g.may_publish("chat.dm.bob") && g.may_publish("chat.room.7"));
        assert!(!g.may_publish("chat.dm.alice") && !g.may_publish("chat.lobby"));
        assert_eq!(g.sub.as_deref(), Some("bob"));
        let long = "x".repeat(MAX_SUB_LEN + 1);
        let t = sign(
            &Claim {
                channels: &["c"],
                sub: Some(&long),
                ..Claim::default()
            },
            2000,
            KEY,
        );
        assert_eq!(verify(&t, KEY, 1000), Err(TokenError::SubTooLong));
    }

    #[test]
    fn known_vector() {
        // Header {"alg":"HS256","typ":"JWT"}, claims {"channel":"news","exp":4102444800},
        // signed with "secret" (checked against an independent implementation).
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = URL_SAFE_NO_PAD.encode(br#"{"channel":"news","exp":4102444800}"#);
        let mut mac = HmacSha256::new_from_slice(KEY).unwrap();
        mac.update(format!("{header}.{claims}").as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        let token = format!("{header}.{claims}.{sig}");
        let g = verify(&token, KEY, 0).unwrap();
        assert!(g.allows("news"));
        assert!(!g.allows("news2"));
    }

    #[test]
    fn refuses_other_algorithms_and_garbage() {
        let claims = URL_SAFE_NO_PAD.encode(br#"{"channel":"news","exp":4102444800}"#);
        for alg in ["none", "HS512", "RS256", "hs256"] {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}"}}"#));
            let t = format!("{header}.{claims}.");
            assert_eq!(verify(&t, KEY, 0), Err(TokenError::Algorithm), "{alg}");
        }
        assert_eq!(verify("", KEY, 0), Err(TokenError::Missing));
        assert_eq!(verify("a.b", KEY, 0), Err(TokenError::Malformed));
        assert_eq!(verify("a.b.c.d", KEY, 0), Err(TokenError::Malformed));
        assert_eq!(verify("!!.b.c", KEY, 0), Err(TokenError::Malformed));
        let no_exp = URL_SAFE_NO_PAD.encode(br#"{"channel":"news"}"#);
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#);
        let mut mac = HmacSha256::new_from_slice(KEY).unwrap();
        mac.update(format!("{header}.{no_exp}").as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        assert_eq!(
            verify(&format!("{header}.{no_exp}.{sig}"), KEY, 0),
            Err(TokenError::Expired)
        );
    }
}
