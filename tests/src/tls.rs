//! TLS for the tests: a test certificate authority made by the harness ([`Pki`]), with
//! leaf certificates for any names (valid, or expired), written as PEM files for the
//! server and for third-party clients (curl, python, Chromium); and a rustls client
//! ([`TlsClient`]) whose streams carry the raw HTTP and WebSocket clients.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::TIMEOUT;

/// A test CA and the files made with it, in a temporary directory.
pub struct Pki {
    dir: tempfile::TempDir,
    ca: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
}

/// A leaf certificate's files.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The chain (leaf, then the CA), PEM.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
    /// The leaf, DER.
    pub der: Vec<u8>,
}

impl Pki {
    /// A new CA (its certificate is `ca.pem` in [`Pki::dir`]).
    pub fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("pushedge-pki")
            .tempdir()
            .expect("temp dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "pushedge test CA");
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).expect("write ca.pem");
        Pki {
            ca_der: cert.der().clone(),
            ca: Issuer::new(params, key),
            dir,
        }
    }

    /// The directory of the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate's PEM file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A leaf for `names` (DNS names or IP addresses) signed by the CA, written as
    /// `<stem>.pem` / `<stem>.key`; `expired`: its validity ended in 2021.
    pub fn leaf(&self, stem: &str, names: &[&str], expired: bool) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or(stem));
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("leaf certificate");
        let leaf = Leaf {
            cert: self.dir.path().join(format!("{stem}.pem")),
            key: self.dir.path().join(format!("{stem}.key")),
            der: cert.der().to_vec(),
        };
        let chain = format!("{}{}", cert.pem(), pem_of(&self.ca_der));
        std::fs::write(&leaf.cert, chain).expect("write leaf");
        std::fs::write(&leaf.key, key.serialize_pem()).expect("write key");
        leaf
    }

    /// A client that trusts the CA (TLS 1.2 and 1.3, ALPN http/1.1, a session cache).
    pub fn client(&self) -> TlsClient {
        TlsClient::new(&self.ca_der, None)
    }

    /// A client limited to one protocol version (`&rustls::version::TLS12`, ...).
    pub fn client_version(&self, v: &'static rustls::SupportedProtocolVersion) -> TlsClient {
        TlsClient::new(&self.ca_der, Some(v))
    }

    /// A client offering only the cipher suites whose name contains `suite` (`CHACHA20`,
    /// `AES_256`), with protocol version `v`.
    pub fn client_suite(
        &self,
        v: &'static rustls::SupportedProtocolVersion,
        suite: &str,
    ) -> TlsClient {
        let mut c = TlsClient::new(&self.ca_der, Some(v));
        let mut provider = rustls::crypto::ring::default_provider();
        provider
            .cipher_suites
            .retain(|s| format!("{:?}", s.suite()).contains(suite));
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("CA into the roots");
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[v])
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        c.config = Arc::new(config);
        c
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The server arguments for TLS on the default listener with `leaf`.
pub fn tls_args(leaf: &Leaf) -> Vec<String> {
    vec![
        "--set".into(),
        format!("tls_cert={}", leaf.cert.display()),
        "--set".into(),
        format!("tls_key={}", leaf.key.display()),
    ]
}

/// A TLS stream over a blocking socket with the harness timeouts.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A rustls client configuration (its session cache makes the next connection resume).
#[derive(Clone)]
pub struct TlsClient {
    /// The configuration.
    pub config: Arc<ClientConfig>,
}

impl TlsClient {
    fn new(
        ca: &CertificateDer<'_>,
        version: Option<&'static rustls::SupportedProtocolVersion>,
    ) -> TlsClient {
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .expect("CA into the roots");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = match version {
            Some(v) => vec![v],
            None => vec![&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsClient {
            config: Arc::new(config),
        }
    }

    /// Connects to `addr` asking for `name`, and completes the handshake.
    pub fn connect(&self, addr: SocketAddr, name: &str) -> Result<TlsStream, std::io::Error> {
        let sock = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(TIMEOUT))?;
        sock.set_write_timeout(Some(TIMEOUT))?;
        let server = ServerName::try_from(name.to_string()).map_err(std::io::Error::other)?;
        let conn =
            ClientConnection::new(self.config.clone(), server).map_err(std::io::Error::other)?;
        let mut s = StreamOwned::new(conn, sock);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        // TLS 1.3 tickets come right after the handshake.
        Ok(s)
    }

    /// One HTTP/1.1 request (`Connection: close`); the whole answer as text.
    pub fn request(
        &self,
        addr: SocketAddr,
        name: &str,
        head: &str,
    ) -> Result<String, std::io::Error> {
        let mut s = self.connect(addr, name)?;
        s.write_all(head.as_bytes())?;
        s.flush()?;
        let mut out = Vec::new();
        match s.read_to_end(&mut out) {
            Ok(_) => {}
            // A peer that closes without close_notify still gave its answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
            Err(e) => return Err(e),
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// A WebSocket over TLS (tungstenite on the rustls stream).
pub fn wss(
    client: &TlsClient,
    addr: SocketAddr,
    name: &str,
    target: &str,
) -> tungstenite::WebSocket<TlsStream> {
    let s = client.connect(addr, name).expect("TLS connect");
    let url = format!("wss://{name}:{}{target}", addr.port());
    let (ws, resp) = tungstenite::client(url.as_str(), s).expect("WebSocket over TLS");
    assert_eq!(resp.status(), 101);
    ws
}
