//! What the tests against the real pushedge share: the server (started on ephemeral
//! loopback ports, killed on drop) and the loadgen binary (run with a deadline).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running `pushedge serve`, killed on drop.
pub struct Server {
    child: Child,
    pub sub: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pushedge_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PUSHEDGE_BIN") {
        return PathBuf::from(p);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("loadgen lives inside the workspace")
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let bin = target.join("debug").join("pushedge");
    if !bin.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "pushedge"])
            .current_dir(&workspace)
            .status()
            .expect("cannot run cargo build -p pushedge");
        assert!(status.success(), "cargo build -p pushedge failed");
    }
    bin
}

/// The value of `key=` in the ready line.
fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        .to_string()
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// A server with `--set` values.
    pub fn start_with(sets: &[&str]) -> Server {
        let dir = std::env::temp_dir().join(format!(
            "loadgen-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new(pushedge_binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .arg("--control")
            .arg(dir.join("pushedge.sock"))
            .args(["--workers", "2"])
            .args(sets.iter().flat_map(|s| ["--set", s]))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start pushedge");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stderr).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if line.contains("ready: pushedge") {
                    let _ = tx.send(line);
                    break;
                }
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("pushedge did not print its ready line");
            }
        };
        Server {
            child,
            sub: field(&line, "subscriber=").parse().unwrap(),
            admin: field(&line, "admin=").parse().unwrap(),
            dir,
        }
    }
}

/// Runs the loadgen binary with `args`; returns (exit code, stdout, stderr). Killed after
/// 60 s.
pub fn loadgen(args: &[String]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start loadgen");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("loadgen {args:?} did not finish in time");
        }
        thread::sleep(Duration::from_millis(20));
    };
    (
        status.code().unwrap_or(-1),
        out_t.join().unwrap(),
        err_t.join().unwrap(),
    )
}

pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

pub fn json_run(list: Vec<String>) -> Value {
    let (code, out, err) = loadgen(&list);
    assert_eq!(code, 0, "loadgen {list:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON ({e}): {out}\n{err}"))
}

/// A test CA and a server certificate it signed (rcgen, ECDSA P-256), as PEM files in a
/// directory removed on drop; and a second CA that signed nothing of the server's.
pub struct Certs {
    pub dir: PathBuf,
    /// The CA that signed the server certificate.
    pub ca: PathBuf,
    /// The server certificate then the CA (the chain).
    pub cert: PathBuf,
    /// The server's private key (PKCS#8).
    pub key: PathBuf,
    /// A CA that did not sign it.
    pub other_ca: PathBuf,
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

impl Certs {
    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn new() -> Certs {
        let dir = std::env::temp_dir().join(format!(
            "loadgen-certs-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let issuer = ca("loadgen test CA");
        let other = ca("another CA");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let certs = Certs {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            other_ca: dir.join("other-ca.pem"),
            dir,
        };
        std::fs::write(&certs.ca, issuer.pem()).unwrap();
        std::fs::write(&certs.cert, cert.pem() + &issuer.pem()).unwrap();
        std::fs::write(&certs.key, key.serialize_pem()).unwrap();
        std::fs::write(&certs.other_ca, other.pem()).unwrap();
        certs
    }

    /// The `--set` values of a TLS subscriber listener with this certificate.
    pub fn sets(&self) -> Vec<String> {
        vec![
            format!("tls_cert={}", self.cert.display()),
            format!("tls_key={}", self.key.display()),
        ]
    }
}
