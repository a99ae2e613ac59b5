//! `auth = "token"` with `RS256` / `ES256` tokens, checked with the public keys of a PEM
//! file (`token_public_key`) or a JWKS file (`token_jwks`, by `kid`). The keys and the
//! tokens are the fixtures of `tests/fixtures/jwt/` (made by `make.sh` there with openssl;
//! the tokens expire in 2100).

use pushedge_tests::*;

fn fixture(name: &str) -> String {
    workspace_dir()
        .join("tests/fixtures/jwt")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn token(name: &str) -> String {
    std::fs::read_to_string(fixture(name))
        .unwrap()
        .trim()
        .to_string()
}

fn start(key: &str, file: &str) -> Server {
    let set = format!("{key}={}", fixture(file));
    Server::start(&[
        "--set",
        "auth=token",
        "--set",
        r#"token_algorithms=["RS256","ES256"]"#,
        "--set",
        &set,
    ])
}

/// A WebSocket subscribe with `token` gets the messages of `news`.
fn assert_subscribes(s: &Server, token: &str, why: &str) {
    let mut ws = s.ws(&format!("/ws?channel=news&token={}", urlencode(token)));
    s.wait_subscribers("news", 1);
    let seq = s.publish("news", why);
    let v = ws.recv_json();
    assert_eq!(
        (v["type"].as_str(), v["seq"].as_u64(), v["content"].as_str()),
        (Some("data"), Some(seq), Some(why)),
        "{why}: {v}"
    );
    drop(ws);
    s.wait_subscribers("news", 0);
}

fn assert_refused(s: &Server, token: &str, why: &str) {
    let mut ws = s.ws(&format!("/ws?channel=news&token={}", urlencode(token)));
    assert_eq!(ws.recv_close(TIMEOUT), Some(1008), "{why}");
    let r = s.get(&format!("/poll?channel=news&token={}", urlencode(token)));
    assert_eq!(r.status, 401, "{why}: {}", r.text());
}

/// Tokens a server with RS256 and ES256 keys must refuse.
fn assert_bad_tokens_refused(s: &Server, public_pem: &str) {
    let claims = json!({"channels": ["news"], "exp": unix_now() + 600});
    assert_refused(s, &token("rs256-other-key.jwt"), "signed by another key");
    // HS256 is not in token_algorithms, and the public key is no HMAC secret.
    let forged = jwt(
        &json!({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}),
        &claims,
        &std::fs::read(fixture(public_pem)).unwrap(),
    );
    assert_refused(s, &forged, "HS256 with the public key as secret");
    let none = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(json!({"alg": "none", "kid": "rsa-1"}).to_string()),
            b64.encode(claims.to_string())
        )
    };
    assert_refused(s, &none, "alg=none");
    // A good token for another channel.
    let mut ws = s.ws(&format!(
        "/ws?channel=other&token={}",
        urlencode(&token("rs256.jwt"))
    ));
    assert_eq!(ws.recv_close(TIMEOUT), Some(1008), "channel not granted");
}

#[test]
fn rs256_and_es256_tokens_with_a_pem_file() {
    let s = start("token_public_key", "public.pem");
    assert_subscribes(&s, &token("rs256.jwt"), "RS256");
    assert_subscribes(&s, &token("es256.jwt"), "ES256");
    assert_bad_tokens_refused(&s, "rsa-public.pem");
    assert_refused(&s, "garbage", "garbage");
}

#[test]
fn rs256_and_es256_tokens_with_a_jwks_file() {
    let s = start("token_jwks", "jwks.json");
    assert_subscribes(&s, &token("rs256.jwt"), "RS256");
    assert_subscribes(&s, &token("es256.jwt"), "ES256");
    assert_bad_tokens_refused(&s, "jwks.json");
    // The RS256 token with its kid changed: no such key.
    let t = token("rs256.jwt");
    let parts: Vec<&str> = t.split('.').collect();
    let header = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(json!({"alg": "RS256", "typ": "JWT", "kid": "rsa-9"}).to_string())
    };
    assert_refused(
        &s,
        &format!("{header}.{}.{}", parts[1], parts[2]),
        "unknown kid",
    );
}

#[test]
fn unusable_key_files_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("c.sock");
    let missing = dir.path().join("missing.pem");
    let cases = [
        (
            format!("token_public_key={}", missing.display()),
            "cannot read",
        ),
        (
            format!("token_jwks={}", fixture("public.pem")),
            "not a JWKS",
        ),
        (
            format!("token_public_key={}", fixture("rsa-private.pem")),
            "private key",
        ),
        (
            format!("token_public_key={}", fixture("rsa-public.pem")),
            "no EC P-256 (ES256) key",
        ),
    ];
    for (set, needle) in &cases {
        let out = run_binary(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--control",
            control.to_str().unwrap(),
            "--set",
            "auth=token",
            "--set",
            r#"token_algorithms=["RS256","ES256"]"#,
            "--set",
            set,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{set}: {err}");
        assert!(err.contains(needle), "{set}: {err}");
    }
    let out = run_binary(&[
        "serve",
        "--set",
        "auth=token",
        "--set",
        r#"token_algorithms=["RS384"]"#,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("unknown algorithm 'RS384'"), "{err}");
}
