//! Token claims: the signature check of one token ([`decode`]), what its claims grant
//! ([`Grant`]), and minting `HS256` tokens ([`sign`], for `/sign`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;
use sha2::Sha256;

use super::{Alg, TokenError, Verifier};
use crate::config::pattern_matches;
use crate::limits::MAX_SUB_LEN;

pub(super) type HmacSha256 = Hmac<Sha256>;

/// Checks the signature of `token` with `key` for `alg`, and reads its claims. Time and
/// the registered claims are checked by [`grant`], against the caller's clock.
pub(super) fn decode(token: &str, key: &DecodingKey, alg: Alg) -> Result<Claims, TokenError> {
    let mut v = Validation::new(alg.jwt());
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.leeway = 0;
    match jsonwebtoken::decode::<Claims>(token, key, &v) {
        Ok(data) => Ok(data.claims),
        Err(e) => Err(match e.kind() {
            ErrorKind::InvalidSignature => TokenError::Signature,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::MissingAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::UnsupportedAlgorithm => TokenError::Algorithm,
            // A key the provider cannot use (checked at load, so not expected).
            ErrorKind::InvalidKeyFormat
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_) => TokenError::Signature,
            _ => TokenError::Malformed,
        }),
    }
}

#[derive(Deserialize)]
pub(super) struct Header {
    pub(super) alg: String,
    #[serde(default)]
    pub(super) kid: Option<String>,
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
pub(super) struct Claims {
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default, rename = "pub")]
    publish: Option<Names>,
    #[serde(default)]
    sub: Option<String>,
    /// What presence shows of the client, any JSON value.
    #[serde(default)]
    info: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    exp: Option<u64>,
}

/// What a verified token grants.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    patterns: Box<[Box<str>]>,
    publish: Box<[Box<str>]>,
    /// Who the client is (`sub`), stamped on what it publishes.
    pub sub: Option<Box<str>>,
    /// The `info` claim (JSON text, at most [`crate::limits::MAX_INFO_LEN`] bytes): what
    /// presence shows of the client.
    pub info: Option<Box<str>>,
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

/// Verifies an `HS256` token against `secret` at time `now` (Unix seconds). The server
/// uses its [`Verifier`] (`Shared::verifier`), which also knows `RS256` and `ES256`.
pub fn verify(token: &str, secret: &[u8], now: u64) -> Result<Grant, TokenError> {
    Verifier::hs256(secret).verify(token, now)
}

/// What verified claims grant at time `now`.
pub(super) fn grant(claims: Claims, now: u64) -> Result<Grant, TokenError> {
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
    let info = match claims.info {
        Some(raw) if raw.get().len() > crate::limits::MAX_INFO_LEN => {
            return Err(TokenError::Malformed)
        }
        Some(raw) => Some(raw.get().into()),
        None => None,
    };
    Ok(Grant {
        patterns: patterns.into_boxed_slice(),
        publish: claims
            .publish
            .map(|n| n.into_patterns().collect())
            .unwrap_or_default(),
        sub: claims.sub.map(String::into_boxed_str),
        info,
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
