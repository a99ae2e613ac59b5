//! Tokens: HS256 JWTs ([`jwt`], [`token_for`]) and the clock they use ([`unix_now`]).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A JWT with the given header and claims JSON, signed HS256 with `secret` (whatever the
/// header says, so tests can forge `alg` values).
pub fn jwt(header: &Value, claims: &Value, secret: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let p = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(format!("{h}.{p}").as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{h}.{p}.{sig}")
}

/// An HS256 token granting `channels` until `exp`.
pub fn token_for(channels: &[&str], exp: u64, secret: &[u8]) -> String {
    jwt(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"channels": channels, "exp": exp}),
        secret,
    )
}
