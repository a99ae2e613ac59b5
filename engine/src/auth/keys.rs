//! Public keys for `RS256` and `ES256` tokens, read once at start: the `PUBLIC KEY` blocks
//! of a PEM file (`token_public_key`), or the signing keys of a JWKS file (`token_jwks`),
//! each checked to be of a kind and size that can verify an accepted algorithm.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::{cfg_err, key_kind, Alg};
use crate::config::ConfigError;
use crate::limits::MIN_RSA_BITS;

/// A public key for `RS256` or `ES256` tokens.
pub(super) struct PublicKey {
    /// The JWKS `kid` (`None` for keys from a PEM file).
    pub(super) kid: Option<String>,
    /// The only algorithm this key verifies (RSA: `RS256`; P-256: `ES256`).
    pub(super) alg: Alg,
    pub(super) key: DecodingKey,
}

fn provider() -> Result<&'static CryptoProvider, ConfigError> {
    CryptoProvider::try_get_default()
        .ok_or_else(|| ConfigError("internal: no JWT crypto provider".into()))
}

/// An RSA key from its modulus and exponent, at least [`MIN_RSA_BITS`] long.
fn rsa_key(n: &[u8], e: &[u8], what: &str) -> Result<PublicKey, ConfigError> {
    let n = &n[n.iter().take_while(|&&b| b == 0).count()..];
    let bits = n
        .first()
        .map_or(0, |b| n.len() * 8 - b.leading_zeros() as usize);
    if bits < MIN_RSA_BITS {
        return cfg_err(format!(
            "{what}: RSA key of {bits} bits (at least {MIN_RSA_BITS})"
        ));
    }
    if e.iter().all(|&b| b == 0) {
        return cfg_err(format!("{what}: RSA key with a zero exponent"));
    }
    Ok(PublicKey {
        kid: None,
        alg: Alg::Rs256,
        key: DecodingKey::from_rsa_raw_components(n, e),
    })
}

/// A P-256 key (SEC1 uncompressed point inside `key`), checked on the curve.
fn ec_key(key: DecodingKey, what: &str) -> Result<PublicKey, ConfigError> {
    let point = key
        .try_get_as_bytes()
        .map_err(|e| ConfigError(format!("{what}: {e}")))?;
    if point.len() != 65 || point[0] != 4 {
        return cfg_err(format!("{what}: EC key is not on P-256 (ES256)"));
    }
    (provider()?.verifier_factory)(&Algorithm::ES256, &key)
        .map_err(|e| ConfigError(format!("{what}: not a P-256 public key: {e}")))?;
    Ok(PublicKey {
        kid: None,
        alg: Alg::Es256,
        key,
    })
}

/// The public keys of a PEM file: one or more `PUBLIC KEY` (or `RSA PUBLIC KEY`) blocks.
pub(super) fn load_pem(path: &str, accepted: &[Alg]) -> Result<Vec<PublicKey>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("token_public_key: cannot read {path}: {e}")))?;
    let mut keys = Vec::new();
    let mut rest = text.as_str();
    while let Some(begin) = rest.find("-----BEGIN ") {
        let block = &rest[begin..];
        let label_end = block[11..]
            .find("-----")
            .map(|i| i + 11)
            .ok_or_else(|| ConfigError(format!("token_public_key: {path}: bad PEM")))?;
        let label = &block[11..label_end];
        let end_marker = format!("-----END {label}-----");
        let end = block
            .find(&end_marker)
            .map(|i| i + end_marker.len())
            .ok_or_else(|| ConfigError(format!("token_public_key: {path}: no {end_marker}")))?;
        let what = format!("token_public_key: {path}: key {}", keys.len() + 1);
        if label.contains("PRIVATE") {
            return cfg_err(format!(
                "{what} is a private key: give the public key (openssl pkey -pubout)"
            ));
        }
        if label != "PUBLIC KEY" && label != "RSA PUBLIC KEY" {
            return cfg_err(format!("{what}: a {label}, not a PUBLIC KEY"));
        }
        let pem = &block.as_bytes()[..end];
        let key = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            let der = k
                .try_get_as_bytes()
                .map_err(|e| ConfigError(format!("{what}: {e}")))?;
            let (n, e) = (provider()?.key_utils.rsa_pub_components_from_public_key)(der)
                .map_err(|e| ConfigError(format!("{what}: bad RSA key: {e}")))?;
            rsa_key(&n, &e, &what)?
        } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            ec_key(k, &what)?
        } else {
            return cfg_err(format!("{what}: neither an RSA nor an EC public key"));
        };
        if !accepted.contains(&key.alg) {
            return cfg_err(format!(
                "{what}: a {} key, but token_algorithms has no {}",
                key_kind(key.alg),
                key.alg.name()
            ));
        }
        keys.push(key);
        rest = &block[end..];
    }
    if keys.is_empty() {
        return cfg_err(format!("token_public_key: {path}: no PEM public key"));
    }
    Ok(keys)
}

/// The key of a JWK already found to be RSA or EC P-256 (`what` names it in errors).
fn jwk_key(jwk: &Jwk, what: &str) -> Result<PublicKey, ConfigError> {
    match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = URL_SAFE_NO_PAD
                .decode(&p.n)
                .map_err(|e| ConfigError(format!("{what}: bad n: {e}")))?;
            let e = URL_SAFE_NO_PAD
                .decode(&p.e)
                .map_err(|e| ConfigError(format!("{what}: bad e: {e}")))?;
            rsa_key(&n, &e, what)
        }
        _ => {
            let k = DecodingKey::from_jwk(jwk)
                .map_err(|e| ConfigError(format!("{what}: bad EC key: {e}")))?;
            ec_key(k, what)
        }
    }
}

/// The signing keys of a JWKS file that can verify an accepted algorithm; other keys (for
/// encryption, other algorithms or curves, without a `kid`) are skipped with a warning.
pub(super) fn load_jwks(path: &str, accepted: &[Alg]) -> Result<Vec<PublicKey>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("token_jwks: cannot read {path}: {e}")))?;
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|e| ConfigError(format!("token_jwks: {path}: not a JWKS: {e}")))?;
    let mut keys: Vec<PublicKey> = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let kid = jwk.common.key_id.clone();
        let what = format!(
            "token_jwks: {path}: key {} (kid {})",
            i + 1,
            kid.as_deref().unwrap_or("-")
        );
        let skip = |why: &str| crate::warn!("{what} skipped: {why}");
        let Some(kid) = kid else {
            skip("no kid");
            continue;
        };
        if matches!(
            jwk.common.public_key_use,
            Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
        ) {
            skip("not a signing key (use)");
            continue;
        }
        let (alg, stated) = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => (Alg::Rs256, KeyAlgorithm::RS256),
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                (Alg::Es256, KeyAlgorithm::ES256)
            }
            _ => {
                skip("neither an RSA nor an EC P-256 key");
                continue;
            }
        };
        if jwk.common.key_algorithm.is_some_and(|a| a != stated) {
            skip("its alg is neither RS256 nor ES256");
            continue;
        }
        if !accepted.contains(&alg) {
            skip(&format!("token_algorithms has no {}", alg.name()));
            continue;
        }
        let mut key = jwk_key(jwk, &what)?;
        if keys
            .iter()
            .any(|k| k.alg == alg && k.kid.as_deref() == Some(kid.as_str()))
        {
            return cfg_err(format!("{what}: two {} keys with this kid", alg.name()));
        }
        key.kid = Some(kid);
        keys.push(key);
    }
    if keys.is_empty() {
        return cfg_err(format!(
            "token_jwks: {path}: no signing key for token_algorithms"
        ));
    }
    Ok(keys)
}
