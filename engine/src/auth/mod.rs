//! Subscriber tokens: JWT (RFC 7519), verified with the `jsonwebtoken` crate.
//!
//! A token carries `channels` (a list) or `channel` (one name): what the client may
//! subscribe to; `pub` (a list, or one name): what it may publish to (checked together
//! with `client_publish`); `sub`: who the client is, stamped as `"from"` on every message
//! it publishes; and `exp` (Unix seconds; required), when its rights end. A name
//! containing `*` is a pattern, as in `client_publish`.
//!
//! The header's `alg` must be one of `token_algorithms` (`HS256`, `RS256`, `ES256`):
//! `none` and every other algorithm are refused, whatever the signature. `HS256` is checked
//! with `token_secret` and nothing else; `RS256` and `ES256` with the public keys of
//! `token_public_key` (PEM) or `token_jwks` (JWKS, chosen by the header's `kid`), an RSA key
//! for `RS256` and a P-256 key for `ES256`. A [`Verifier`] holds the secret and the decoded
//! keys, loaded once at start.

mod claims;
mod keys;

pub use claims::{sign, verify, Claim, Grant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::config::{AuthMode, Config, ConfigError};
use crate::limits::MAX_TOKEN_LEN;
use claims::{decode, grant, Header};
use keys::{load_jwks, load_pem, PublicKey};

/// Why a token is refused (the subscriber gets 401, or close 1008 on WebSocket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// No token was given.
    Missing,
    /// Not three base64url parts of JSON, or too long.
    Malformed,
    /// The header names an algorithm that is not in `token_algorithms`.
    Algorithm,
    /// No configured key for the header's `kid` and algorithm.
    Key,
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
            TokenError::Algorithm => "token algorithm not accepted",
            TokenError::Key => "no key for this token (kid)",
            TokenError::Signature => "bad token signature",
            TokenError::Expired => "token expired or without exp",
            TokenError::Channel => "token does not grant this channel",
            TokenError::SubTooLong => {
                "token sub claim longer than 256 bytes or with control characters"
            }
        }
    }
}

/// The algorithms a token may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Hs256,
    Rs256,
    Es256,
}

impl Alg {
    /// The exact (case-sensitive) JOSE name; `None` for every other algorithm.
    fn parse(name: &str) -> Option<Alg> {
        match name {
            "HS256" => Some(Alg::Hs256),
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            Alg::Hs256 => Algorithm::HS256,
            Alg::Rs256 => Algorithm::RS256,
            Alg::Es256 => Algorithm::ES256,
        }
    }
}

/// The names accepted in `token_algorithms`, for messages.
pub const ALGORITHMS: &str = "HS256, RS256, ES256";

/// Checks the names of `token_algorithms` (config validation).
pub fn check_algorithms(names: &[String]) -> Result<(), ConfigError> {
    for n in names {
        if Alg::parse(n).is_none() {
            return Err(ConfigError(format!(
                "token_algorithms: unknown algorithm '{n}' (accepted: {ALGORITHMS})"
            )));
        }
    }
    Ok(())
}

/// Verifies subscriber tokens: the `HS256` secret and the public keys, loaded once.
pub struct Verifier {
    /// The algorithms of `token_algorithms`.
    algorithms: Vec<Alg>,
    /// The `HS256` secret, when `HS256` is accepted and a secret is set.
    secret: Option<DecodingKey>,
    /// Public keys (PEM or JWKS).
    keys: Vec<PublicKey>,
    /// Keys came from a JWKS: a token names its key with `kid`.
    by_kid: bool,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.algorithms)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field(
                "keys",
                &self
                    .keys
                    .iter()
                    .map(|k| (k.kid.as_deref(), k.alg.name()))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Verifier {
    /// An `HS256`-only verifier with `secret` (none accepted when it is empty).
    pub fn hs256(secret: &[u8]) -> Verifier {
        Verifier {
            algorithms: vec![Alg::Hs256],
            secret: DecodingKey::from_secret(secret).ok(),
            keys: Vec::new(),
            by_kid: false,
        }
    }

    /// A verifier that accepts no token.
    pub fn refusing() -> Verifier {
        Verifier {
            algorithms: Vec::new(),
            secret: None,
            keys: Vec::new(),
            by_kid: false,
        }
    }

    /// The verifier of a configuration: reads `token_public_key` or `token_jwks` when
    /// `auth = "token"` accepts `RS256` or `ES256`. Refuses unknown algorithms, files that
    /// cannot be read or parsed, keys of the wrong kind, and accepted algorithms left
    /// without a key.
    pub fn new(cfg: &Config) -> Result<Verifier, ConfigError> {
        check_algorithms(&cfg.token_algorithms)?;
        let mut algorithms: Vec<Alg> = Vec::new();
        for a in cfg.token_algorithms.iter().filter_map(|n| Alg::parse(n)) {
            if !algorithms.contains(&a) {
                algorithms.push(a);
            }
        }
        let secret = if algorithms.contains(&Alg::Hs256) {
            DecodingKey::from_secret(cfg.token_secret.as_bytes()).ok()
        } else {
            None
        };
        let mut v = Verifier {
            algorithms,
            secret,
            keys: Vec::new(),
            by_kid: false,
        };
        if cfg.auth != AuthMode::Token {
            return Ok(v);
        }
        if v.algorithms.is_empty() {
            return cfg_err("auth = \"token\" needs at least one of token_algorithms");
        }
        if v.algorithms.contains(&Alg::Hs256) && v.secret.is_none() {
            return cfg_err("token_algorithms has HS256: auth = \"token\" needs token_secret");
        }
        let public = v.algorithms.iter().any(|&a| a != Alg::Hs256);
        match (cfg.token_public_key.as_str(), cfg.token_jwks.as_str()) {
            (p, j) if !p.is_empty() && !j.is_empty() => {
                return cfg_err("set token_public_key or token_jwks, not both");
            }
            ("", "") if public => {
                return cfg_err("token_algorithms has RS256 or ES256: set token_public_key (PEM) or token_jwks (JWKS)");
            }
            ("", "") => {}
            _ if !public => {
                return cfg_err(
                    "token_public_key / token_jwks are set but token_algorithms has neither RS256 nor ES256",
                );
            }
            (path, "") => v.keys = load_pem(path, &v.algorithms)?,
            (_, path) => {
                v.keys = load_jwks(path, &v.algorithms)?;
                v.by_kid = true;
            }
        }
        for &a in v.algorithms.iter().filter(|&&a| a != Alg::Hs256) {
            if !v.keys.iter().any(|k| k.alg == a) {
                let (key, path) = if v.by_kid {
                    ("token_jwks", cfg.token_jwks.as_str())
                } else {
                    ("token_public_key", cfg.token_public_key.as_str())
                };
                return cfg_err(format!(
                    "token_algorithms has {} but {key} ({path}) holds no {} key",
                    a.name(),
                    key_kind(a)
                ));
            }
        }
        Ok(v)
    }

    /// Verifies `token` at time `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Grant, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header_bytes = URL_SAFE_NO_PAD
            .decode(h)
            .map_err(|_| TokenError::Malformed)?;
        let header: Header =
            serde_json::from_slice(&header_bytes).map_err(|_| TokenError::Malformed)?;
        // Only the exact names of `token_algorithms`: never `none`, never a guess.
        let alg = Alg::parse(&header.alg)
            .filter(|a| self.algorithms.contains(a))
            .ok_or(TokenError::Algorithm)?;
        let claims = match alg {
            // HS256 is checked with the secret alone, never with a public key.
            Alg::Hs256 => {
                let key = self.secret.as_ref().ok_or(TokenError::Signature)?;
                decode(token, key, alg)?
            }
            Alg::Rs256 | Alg::Es256 => {
                if self.by_kid && header.kid.is_none() {
                    return Err(TokenError::Key);
                }
                let mut keys = self
                    .keys
                    .iter()
                    .filter(|k| k.alg == alg && (!self.by_kid || k.kid == header.kid))
                    .peekable();
                if keys.peek().is_none() {
                    return Err(TokenError::Key);
                }
                let mut result = Err(TokenError::Signature);
                for k in keys {
                    result = decode(token, &k.key, alg);
                    if !matches!(result, Err(TokenError::Signature)) {
                        break;
                    }
                }
                result?
            }
        };
        grant(claims, now)
    }
}

fn cfg_err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

fn key_kind(a: Alg) -> &'static str {
    match a {
        Alg::Hs256 => "secret",
        Alg::Rs256 => "RSA (RS256)",
        Alg::Es256 => "EC P-256 (ES256)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::MAX_SUB_LEN;
    use claims::HmacSha256;
    use hmac::Mac;

    /// The fixtures of `tests/fixtures/jwt/` (made by `make.sh` there).
    fn fixture(name: &str) -> String {
        format!(
            "{}/../tests/fixtures/jwt/{name}",
            env!("CARGO_MANIFEST_DIR")
        )
    }

    fn read(name: &str) -> Vec<u8> {
        std::fs::read(fixture(name)).unwrap()
    }

    fn config(algs: &[&str], pem: &str, jwks: &str) -> Config {
        Config {
            auth: AuthMode::Token,
            token_algorithms: algs.iter().map(|a| a.to_string()).collect(),
            token_public_key: if pem.is_empty() {
                String::new()
            } else {
                fixture(pem)
            },
            token_jwks: if jwks.is_empty() {
                String::new()
            } else {
                fixture(jwks)
            },
            token_secret: "secret".into(),
            ..Config::default()
        }
    }

    fn verifier(algs: &[&str], pem: &str, jwks: &str) -> Verifier {
        Verifier::new(&config(algs, pem, jwks)).unwrap()
    }

    fn claims() -> serde_json::Value {
        serde_json::json!({"channels": ["news"], "pub": "news", "sub": "alice", "exp": 2000})
    }

    /// A token signed by the crate with a private key fixture.
    fn signed(alg: Algorithm, kid: Option<&str>, claims: &serde_json::Value, key: &str) -> String {
        let pem = read(key);
        let key = match alg {
            Algorithm::ES256 => jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap(),
            _ => jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
        };
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    /// A token with `header`, signed HS256 with `secret` whatever the header says.
    fn hmac_signed(
        header: &serde_json::Value,
        claims: &serde_json::Value,
        secret: &[u8],
    ) -> String {
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        let p = URL_SAFE_NO_PAD.encode(claims.to_string());
        let mut mac = HmacSha256::new_from_slice(secret).unwrap();
        mac.update(format!("{h}.{p}").as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{h}.{p}.{sig}")
    }

    fn config_error(cfg: &Config) -> String {
        Verifier::new(cfg).unwrap_err().0
    }

    #[test]
    fn rs256_from_pem() {
        let v = verifier(&["RS256"], "rsa-public.pem", "");
        let t = signed(Algorithm::RS256, None, &claims(), "rsa-private.pem");
        let g = v.verify(&t, 1000).unwrap();
        assert!(g.allows("news") && !g.allows("other"));
        assert!(g.may_publish("news") && !g.may_publish("other"));
        assert_eq!(g.sub.as_deref(), Some("alice"));
        assert_eq!(g.exp, 2000);
        assert_eq!(v.verify(&t, 2000), Err(TokenError::Expired));
        let other = signed(Algorithm::RS256, None, &claims(), "other-rsa-private.pem");
        assert_eq!(v.verify(&other, 1000), Err(TokenError::Signature));
        // The claims changed after signing.
        let parts: Vec<&str> = t.split('.').collect();
        let wider = URL_SAFE_NO_PAD.encode(br#"{"channels":["*"],"exp":2000}"#);
        let tampered = format!("{}.{wider}.{}", parts[0], parts[2]);
        assert_eq!(v.verify(&tampered, 1000), Err(TokenError::Signature));
        // An ES256 token is refused: ES256 is not accepted.
        let es = signed(Algorithm::ES256, None, &claims(), "ec-private.pem");
        assert_eq!(v.verify(&es, 1000), Err(TokenError::Algorithm));
    }

    #[test]
    fn es256_from_pem() {
        let v = verifier(&["ES256"], "ec-public.pem", "");
        let t = signed(Algorithm::ES256, None, &claims(), "ec-private.pem");
        assert!(v.verify(&t, 1000).unwrap().allows("news"));
        assert_eq!(v.verify(&t, 2001), Err(TokenError::Expired));
        let rs = signed(Algorithm::RS256, None, &claims(), "rsa-private.pem");
        assert_eq!(v.verify(&rs, 1000), Err(TokenError::Algorithm));
        // A signature of the right length but of other bytes.
        let mut bad = t.clone().into_bytes();
        let i = bad.len() - 10;
        bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).unwrap();
        assert_eq!(v.verify(&bad, 1000), Err(TokenError::Signature));
    }

    #[test]
    fn one_pem_file_with_both_keys_and_the_committed_tokens() {
        let v = verifier(&["RS256", "ES256"], "public.pem", "");
        for (alg, key) in [
            (Algorithm::RS256, "rsa-private.pem"),
            (Algorithm::ES256, "ec-private.pem"),
        ] {
            let t = signed(alg, None, &claims(), key);
            assert!(v.verify(&t, 1000).unwrap().allows("news"), "{alg:?}");
        }
        // The tokens that the integration tests use, made by make.sh with openssl.
        for name in ["rs256.jwt", "es256.jwt"] {
            let t = String::from_utf8(read(name)).unwrap();
            let g = v.verify(t.trim(), 1000).unwrap();
            assert!(g.allows("news") && g.may_publish("news"), "{name}");
            assert_eq!(g.sub.as_deref(), Some("alice"));
        }
        let t = String::from_utf8(read("rs256-other-key.jwt")).unwrap();
        assert_eq!(v.verify(t.trim(), 1000), Err(TokenError::Signature));
    }

    #[test]
    fn jwks_keys_are_chosen_by_kid() {
        let v = verifier(&["RS256", "ES256"], "", "jwks.json");
        let rs = signed(
            Algorithm::RS256,
            Some("rsa-1"),
            &claims(),
            "rsa-private.pem",
        );
        assert!(v.verify(&rs, 1000).unwrap().allows("news"));
        let es = signed(Algorithm::ES256, Some("ec-1"), &claims(), "ec-private.pem");
        assert!(v.verify(&es, 1000).unwrap().allows("news"));
        for name in ["rs256.jwt", "es256.jwt"] {
            let t = String::from_utf8(read(name)).unwrap();
            assert!(v.verify(t.trim(), 1000).is_ok(), "{name}");
        }
        // A kid that the JWKS does not have, or none at all.
        let wrong = signed(
            Algorithm::RS256,
            Some("rsa-2"),
            &claims(),
            "rsa-private.pem",
        );
        assert_eq!(v.verify(&wrong, 1000), Err(TokenError::Key));
        let none = signed(Algorithm::RS256, None, &claims(), "rsa-private.pem");
        assert_eq!(v.verify(&none, 1000), Err(TokenError::Key));
        // The EC key's kid on an RS256 token: the alg must match the key's type.
        let crossed = signed(Algorithm::RS256, Some("ec-1"), &claims(), "rsa-private.pem");
        assert_eq!(v.verify(&crossed, 1000), Err(TokenError::Key));
        // The right kid, signed by another key.
        let other = signed(
            Algorithm::RS256,
            Some("rsa-1"),
            &claims(),
            "other-rsa-private.pem",
        );
        assert_eq!(v.verify(&other, 1000), Err(TokenError::Signature));
        // Only the algorithms of token_algorithms.
        let v = verifier(&["ES256"], "", "jwks.json");
        assert_eq!(v.verify(&rs, 1000), Err(TokenError::Algorithm));
        assert!(v.verify(&es, 1000).is_ok());
    }

    #[test]
    fn alg_none_is_refused() {
        let claims = URL_SAFE_NO_PAD.encode(br#"{"channel":"news","exp":4102444800}"#);
        let verifiers = [
            verifier(&["RS256", "ES256"], "public.pem", ""),
            verifier(&["RS256", "ES256"], "", "jwks.json"),
            verifier(&["HS256", "RS256"], "rsa-public.pem", ""),
        ];
        for alg in ["none", "None", "NONE", ""] {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","kid":"rsa-1"}}"#));
            for v in &verifiers {
                let t = format!("{header}.{claims}.");
                assert_eq!(v.verify(&t, 0), Err(TokenError::Algorithm), "{alg}");
            }
        }
        let no_alg = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT"}"#);
        assert_eq!(
            verifiers[0].verify(&format!("{no_alg}.{claims}."), 0),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn hs256_token_is_refused_when_only_rs256_is_accepted() {
        // token_secret is set, but HS256 is not in token_algorithms.
        let v = verifier(&["RS256"], "rsa-public.pem", "");
        let t = sign(
            &Claim {
                channels: &["news"],
                ..Claim::default()
            },
            2000,
            b"secret",
        );
        assert_eq!(v.verify(&t, 1000), Err(TokenError::Algorithm));
    }

    #[test]
    fn rs256_token_resigned_as_hs256_with_the_public_key_is_refused() {
        // The classic confusion: the public key (known to all) taken as an HMAC secret.
        let c = serde_json::json!({"channels": ["*"], "exp": 2000});
        for (pem, kid) in [("rsa-public.pem", None), ("public.pem", Some("rsa-1"))] {
            let mut header = serde_json::json!({"alg": "HS256", "typ": "JWT"});
            if let Some(k) = kid {
                header["kid"] = serde_json::json!(k);
            }
            let forged = hmac_signed(&header, &c, &read(pem));
            let rs_only = verifier(&["RS256", "ES256"], "public.pem", "");
            assert_eq!(
                rs_only.verify(&forged, 1000),
                Err(TokenError::Algorithm),
                "{pem}"
            );
            // With HS256 accepted too, HS256 is checked with token_secret alone.
            let both = verifier(&["HS256", "RS256"], "rsa-public.pem", "");
            assert_eq!(
                both.verify(&forged, 1000),
                Err(TokenError::Signature),
                "{pem}"
            );
            // And a real HS256 token still works there.
            let t = sign(
                &Claim {
                    channels: &["news"],
                    ..Claim::default()
                },
                2000,
                b"secret",
            );
            assert!(both.verify(&t, 1000).unwrap().allows("news"));
        }
        // The same with the JWKS: the forged token names the RSA key.
        let header = serde_json::json!({"alg": "HS256", "kid": "rsa-1"});
        let forged = hmac_signed(&header, &c, &read("jwks.json"));
        let v = verifier(&["RS256"], "", "jwks.json");
        assert_eq!(v.verify(&forged, 1000), Err(TokenError::Algorithm));
    }

    #[test]
    fn public_key_claims_keep_their_meaning() {
        let v = verifier(&["RS256"], "rsa-public.pem", "");
        let t = |c: serde_json::Value| signed(Algorithm::RS256, None, &c, "rsa-private.pem");
        let no_exp = t(serde_json::json!({"channel": "news"}));
        assert_eq!(v.verify(&no_exp, 0), Err(TokenError::Expired));
        let text_exp = t(serde_json::json!({"channel": "news", "exp": "2000"}));
        assert_eq!(v.verify(&text_exp, 0), Err(TokenError::Malformed));
        let one = v
            .verify(
                &t(serde_json::json!({"channel": "solo", "pub": ["a.*"], "exp": 9})),
                0,
            )
            .unwrap();
        assert!(one.allows("solo") && !one.allows("solo2"));
        assert!(one.may_publish("a.b") && !one.may_publish("b"));
        assert_eq!(one.sub, None);
        let long =
            t(serde_json::json!({"channel": "c", "sub": "x".repeat(MAX_SUB_LEN + 1), "exp": 9}));
        assert_eq!(v.verify(&long, 0), Err(TokenError::SubTooLong));
        let ctl = t(serde_json::json!({"channel": "c", "sub": "a\u{1f}b", "exp": 9}));
        assert_eq!(v.verify(&ctl, 0), Err(TokenError::SubTooLong));
        assert_eq!(v.verify("", 0), Err(TokenError::Missing));
        assert_eq!(v.verify("a.b.c", 0), Err(TokenError::Malformed));
        assert_eq!(
            v.verify(&"x".repeat(MAX_TOKEN_LEN + 1), 0),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn bad_key_configurations_are_refused_at_start() {
        let e = config_error(&config(&["RS256"], "missing.pem", ""));
        assert!(e.contains("token_public_key: cannot read"), "{e}");
        let e = config_error(&config(&["RS256"], "", "missing.json"));
        assert!(e.contains("token_jwks: cannot read"), "{e}");
        // Files that are not what they should be.
        let e = config_error(&config(&["RS256"], "jwks.json", ""));
        assert!(e.contains("no PEM public key"), "{e}");
        let e = config_error(&config(&["RS256"], "", "rsa-public.pem"));
        assert!(e.contains("not a JWKS"), "{e}");
        let e = config_error(&config(&["RS256"], "rsa-private.pem", ""));
        assert!(e.contains("private key"), "{e}");
        // Keys of the wrong kind for token_algorithms.
        let e = config_error(&config(&["ES256"], "rsa-public.pem", ""));
        assert!(e.contains("token_algorithms has no RS256"), "{e}");
        let e = config_error(&config(&["RS256", "ES256"], "rsa-public.pem", ""));
        assert!(e.contains("holds no EC P-256 (ES256) key"), "{e}");
        // Unknown algorithms (names are exact), both key files, no key file.
        for algs in [&["RS512"][..], &["hs256"], &["none"], &["RS256", "PS256"]] {
            let e = config_error(&config(algs, "rsa-public.pem", ""));
            assert!(e.contains("unknown algorithm"), "{algs:?}: {e}");
            assert!(
                config(algs, "rsa-public.pem", "").validate().is_err(),
                "{algs:?}"
            );
        }
        let both = config(&["RS256"], "rsa-public.pem", "jwks.json");
        assert!(config_error(&both).contains("not both"));
        assert!(both.validate().unwrap_err().0.contains("not both"));
        let neither = config(&["RS256"], "", "");
        assert!(config_error(&neither).contains("set token_public_key"));
        assert!(neither.validate().is_err());
        // HS256 needs the secret; RS256 alone does not.
        let mut c = config(&["HS256", "RS256"], "rsa-public.pem", "");
        c.token_secret.clear();
        assert!(c.validate().unwrap_err().0.contains("token_secret"));
        assert!(config_error(&c).contains("token_secret"));
        c.token_algorithms = vec!["RS256".into()];
        c.validate().unwrap();
        assert!(Verifier::new(&c).is_ok());
        c.token_algorithms.clear();
        assert!(c.validate().is_err());
        // With auth = "none" the key files are not read.
        let mut c = config(&["RS256"], "missing.pem", "");
        c.auth = AuthMode::None;
        assert!(Verifier::new(&c).is_ok());
    }

    #[test]
    fn jwks_skips_keys_it_cannot_use() {
        let dir = tempfile::tempdir().unwrap();
        let jwks: serde_json::Value = serde_json::from_slice(&read("jwks.json")).unwrap();
        let rsa = jwks["keys"][0].clone();
        let mut enc = rsa.clone();
        enc["use"] = "enc".into();
        enc["kid"] = "enc-1".into();
        let mut no_kid = rsa.clone();
        no_kid.as_object_mut().unwrap().remove("kid");
        let mut ps = rsa.clone();
        ps["alg"] = "PS256".into();
        ps["kid"] = "ps-1".into();
        let oct = serde_json::json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"});
        let set = serde_json::json!({"keys": [enc, no_kid, ps, oct, rsa]});
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, set.to_string()).unwrap();
        let mut c = config(&["RS256"], "", "");
        c.token_jwks = path.to_string_lossy().into_owned();
        let v = Verifier::new(&c).unwrap();
        assert_eq!(v.keys.len(), 1);
        assert_eq!(v.keys[0].kid.as_deref(), Some("rsa-1"));
        for kid in ["enc-1", "ps-1", "hmac"] {
            let t = signed(Algorithm::RS256, Some(kid), &claims(), "rsa-private.pem");
            assert_eq!(v.verify(&t, 1000), Err(TokenError::Key), "{kid}");
        }
        // An HS256 token naming the oct key: HS256 is not accepted.
        let t = hmac_signed(
            &serde_json::json!({"alg": "HS256", "kid": "hmac"}),
            &claims(),
            b"secret",
        );
        assert_eq!(v.verify(&t, 1000), Err(TokenError::Algorithm));
        // Nothing usable at all: refused at start.
        std::fs::write(&path, r#"{"keys": []}"#).unwrap();
        assert!(config_error(&c).contains("no signing key"));
        // The same kid twice.
        let r = jwks["keys"][0].clone();
        std::fs::write(
            &path,
            serde_json::json!({"keys": [r.clone(), r]}).to_string(),
        )
        .unwrap();
        assert!(config_error(&c).contains("two RS256 keys"));
    }
}
