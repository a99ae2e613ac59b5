//! TLS under every transport (`wss://`, `https://`, or `--tls`): rustls 0.23 on the ring
//! provider, the buffered [`rustls::ClientConnection`] (client memory matters little
//! here; CPU does).
//!
//! - [`TlsSpec`] is what the coordinator checked and hands each child: the server name
//!   (SNI and the name the certificate is checked against), the CA certificates (PEM text,
//!   read once by the coordinator) or none (`--insecure`), whether to resume sessions, and
//!   the protocol versions offered.
//! - Each child builds one [`rustls::ClientConfig`] ([`client_config`]) shared by all its
//!   connections, with one [`TicketStore`]: every reconnect (storm, handshake mode) offers
//!   a session the child kept, so TLS 1.3 tickets and TLS 1.2 sessions are resumed.
//!   rustls's own `ClientSessionMemoryCache` keeps 8 TLS 1.3 tickets per server, and a
//!   ticket is used once: with more than 8 handshakes in flight most would be full. The
//!   store here keeps up to [`MAX_TLS13_TICKETS`] per server, oldest dropped first.
//! - `--insecure` skips the certificate chain and name checks only: the handshake
//!   signature is still verified with the provider's algorithms, so a benchmark's client
//!   does the same cryptography as a verifying one, except the chain walk.
//! - [`TlsConn`] wraps one connection: plaintext in and out, TLS records to and from the
//!   socket, and the handshake's outcome (full or resumed, version).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionStore, Resumption, Tls12ClientSessionValue};
use rustls::client::{Tls13ClientSessionValue, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, NamedGroup, SignatureScheme};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

/// Most TLS 1.3 tickets a child keeps per server name (a ticket is used once; a server
/// sends one or more after every handshake).
pub const MAX_TLS13_TICKETS: usize = 20_000;
/// Most server names a child's store remembers (a run has one).
pub const MAX_STORE_SERVERS: usize = 16;
/// Most plaintext and TLS bytes rustls buffers for one connection's output.
pub const TLS_BUFFER_LIMIT: usize = 64 * 1024;
/// The ALPN protocol offered.
pub const ALPN: &[u8] = b"http/1.1";
/// Largest CA file accepted.
pub const MAX_CA_BYTES: u64 = 4 << 20;

/// Which protocol versions are offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Versions {
    /// TLS 1.2 and 1.3 (the server picks, 1.3 when it can).
    #[default]
    Any,
    /// TLS 1.2 only.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

impl Versions {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Versions::Any => "1.2+1.3",
            Versions::Tls12 => "1.2",
            Versions::Tls13 => "1.3",
        }
    }
}

/// The TLS side of a run, as the coordinator checked it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsSpec {
    /// SNI, and the name the certificate must be valid for: `--sni`, else the URL's host
    /// (an IP literal is checked against the certificate's IP addresses and sends no SNI).
    pub server_name: String,
    /// The CA certificates, PEM (`--cacert`); `None`: `--insecure`.
    pub ca_pem: Option<String>,
    /// Keep sessions and resume them (default); `--no-resume`: every handshake is full.
    pub resume: bool,
    /// Versions offered.
    pub versions: Versions,
}

/// A name rustls accepts as a server name.
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_string())
        .map_err(|_| format!("{name:?} is not a valid TLS server name"))
}

/// The certificates of a PEM text; an error when it holds none or a malformed one.
pub fn parse_ca(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE in it".into());
    }
    Ok(certs)
}

/// Reads and checks a CA file (`--cacert`); returns its text.
pub fn read_ca_file(path: &str) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("--cacert {path}: {e}"))?;
    if meta.len() > MAX_CA_BYTES {
        return Err(format!("--cacert {path}: larger than {MAX_CA_BYTES} bytes"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("--cacert {path}: {e}"))?;
    let certs = parse_ca(&text).map_err(|e| format!("--cacert {path}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("--cacert {path}: no usable CA certificate"));
    }
    Ok(text)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client configuration of a child: every connection shares it, and its session
/// store.
pub fn client_config(spec: &TlsSpec) -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let versions: &[&'static rustls::SupportedProtocolVersion] = match spec.versions {
        Versions::Any => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Versions::Tls12 => &[&rustls::version::TLS12],
        Versions::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS configuration: {e}"))?;
    let mut config = match &spec.ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(parse_ca(pem)?);
            let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("TLS verifier: {e}"))?;
            builder.with_webpki_verifier(verifier).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoChainCheck {
                algs: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.resumption = if spec.resume {
        Resumption::store(Arc::new(TicketStore::default()))
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(config))
}

/// `--insecure`: any certificate chain, for any name; the handshake signature is still
/// checked (the key in the certificate signed this handshake).
#[derive(Debug)]
struct NoChainCheck {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoChainCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[derive(Debug, Default)]
struct ServerSessions {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    /// Oldest first.
    tls13: VecDeque<Tls13ClientSessionValue>,
}

/// The session store of a child process (see the module documentation): per server name,
/// the key-exchange group it chose, one TLS 1.2 session, and up to [`MAX_TLS13_TICKETS`]
/// TLS 1.3 tickets, each handed out once, newest first.
#[derive(Debug, Default)]
pub struct TicketStore {
    servers: Mutex<HashMap<ServerName<'static>, ServerSessions>>,
}

impl TicketStore {
    fn with<R>(&self, name: &ServerName<'_>, f: impl FnOnce(&mut ServerSessions) -> R) -> R {
        let key = name.to_owned();
        let mut map = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(&key) && map.len() >= MAX_STORE_SERVERS {
            map.clear();
        }
        f(map.entry(key).or_default())
    }
}

impl ClientSessionStore for TicketStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.with(&server_name, |s| s.kx_hint = Some(group));
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.with(server_name, |s| s.kx_hint)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.with(&server_name, |s| s.tls12 = Some(value));
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.with(server_name, |s| s.tls12.clone())
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.with(server_name, |s| s.tls12 = None);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.with(&server_name, |s| {
            if s.tls13.len() >= MAX_TLS13_TICKETS {
                s.tls13.pop_front();
            }
            s.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.with(server_name, |s| s.tls13.pop_back())
    }
}

/// The report key for a TLS error: `tls_alert_<description>` (the server refused),
/// `tls_cert_<problem>` (the server's certificate did not verify), else `tls_<kind>`.
pub fn failure_reason(e: &rustls::Error) -> String {
    use rustls::{CertificateError, Error};
    let snake = |s: String| {
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if ch.is_ascii_uppercase() {
                if i > 0 {
                    out.push('_');
                }
                out.push(ch.to_ascii_lowercase());
            } else if ch.is_ascii_alphanumeric() {
                out.push(ch);
            } else {
                break;
            }
        }
        out
    };
    match e {
        Error::AlertReceived(a) => format!("tls_alert_{}", snake(format!("{a:?}"))),
        Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "tls_cert_unknown_issuer".into(),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "tls_cert_not_valid_for_name".into()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "tls_cert_expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "tls_cert_not_valid_yet".into()
            }
            CertificateError::BadSignature => "tls_cert_bad_signature".into(),
            other => {
                let name = snake(format!("{other:?}"));
                format!("tls_cert_{}", name.trim_end_matches("_context"))
            }
        },
        Error::NoApplicationProtocol => "tls_no_alpn".into(),
        Error::PeerIncompatible(_) => "tls_incompatible".into(),
        Error::PeerMisbehaved(_) => "tls_peer_misbehaved".into(),
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => "tls_bad_message".into(),
        Error::DecryptError => "tls_decrypt_error".into(),
        other => format!("tls_{}", snake(format!("{other:?}"))),
    }
}

/// How a handshake went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    /// The session was resumed (a ticket or a TLS 1.2 session accepted).
    pub resumed: bool,
    /// `"1.3"` or `"1.2"`.
    pub version: &'static str,
}

/// What reading the socket gave.
#[derive(Debug)]
pub enum Input {
    /// Some TLS bytes were read (this many) and processed.
    Read(usize),
    /// Nothing to read now.
    WouldBlock,
    /// The server closed the connection (EOF, or a close_notify).
    Closed,
}

/// One TLS connection (boxed inside the connection of a child).
pub struct TlsConn {
    conn: ClientConnection,
    /// The handshake's outcome, once it completed.
    done: Option<Handshake>,
    /// A close_notify was read.
    closed: bool,
}

impl TlsConn {
    /// A connection to `name`; its ClientHello is queued for [`TlsConn::write_to`].
    pub fn new(config: &Arc<ClientConfig>, name: ServerName<'static>) -> Result<Self, String> {
        let mut conn =
            ClientConnection::new(config.clone(), name).map_err(|e| failure_reason(&e))?;
        conn.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        Ok(TlsConn {
            conn,
            done: None,
            closed: false,
        })
    }

    /// Moves plaintext from `out` into rustls (as much as its buffer takes; the rest stays
    /// in `out`) and writes TLS records to `sock` until done or `WouldBlock`.
    pub fn write_to(&mut self, out: &mut Vec<u8>, sock: &mut impl Write) -> io::Result<()> {
        loop {
            if !out.is_empty() {
                let n = self.conn.writer().write(out)?;
                out.drain(..n);
            }
            let mut wrote = false;
            while self.conn.wants_write() {
                match self.conn.write_tls(sock) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(_) => wrote = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if out.is_empty() || !wrote {
                return Ok(());
            }
        }
    }

    /// Reads TLS records from `sock` (one read) and processes them. A TLS error is
    /// returned as its report key ([`failure_reason`]); the alert rustls queued goes out
    /// with the next [`TlsConn::write_to`].
    pub fn read_from(&mut self, sock: &mut impl Read) -> Result<Input, TlsFailure> {
        if self.closed {
            return Ok(Input::Closed);
        }
        let n = match self.conn.read_tls(sock) {
            Ok(0) => return Ok(Input::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Input::WouldBlock),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Input::Read(0)),
            Err(e) => return Err(TlsFailure::Io(e)),
        };
        match self.conn.process_new_packets() {
            Ok(state) => {
                if state.peer_has_closed() {
                    self.closed = state.plaintext_bytes_to_read() == 0;
                }
            }
            Err(e) => return Err(TlsFailure::Tls(failure_reason(&e), e.to_string())),
        }
        Ok(Input::Read(n))
    }

    /// Plaintext received, into `buf`: `Ok(0)` when there is none now.
    pub fn read_plain(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.conn.reader().read(buf) {
            Ok(0) => {
                self.closed = true;
                Ok(0)
            }
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// A close_notify was received (and all plaintext before it read).
    pub fn peer_closed(&self) -> bool {
        self.closed
    }

    /// The handshake's outcome the first time it is seen complete, then `None`.
    pub fn just_completed(&mut self) -> Option<Handshake> {
        if self.done.is_some() || self.conn.is_handshaking() {
            return None;
        }
        let h = Handshake {
            resumed: self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            version: match self.conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
                Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
                _ => "other",
            },
        };
        self.done = Some(h);
        Some(h)
    }

    /// Queues a close_notify (sent by the next [`TlsConn::write_to`]).
    pub fn close(&mut self) {
        self.conn.send_close_notify();
    }
}

/// Why reading a TLS connection failed.
#[derive(Debug)]
pub enum TlsFailure {
    /// The socket failed.
    Io(io::Error),
    /// TLS failed: the report key, and rustls's description of the error.
    Tls(String, String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        assert!(matches!(
            server_name("localhost"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("::1"), Ok(ServerName::IpAddress(_))));
        assert!(server_name("bad name").is_err());
        assert!(server_name("").is_err());
    }

    #[test]
    fn ca_text_must_hold_certificates() {
        assert!(parse_ca("").is_err());
        assert!(
            parse_ca("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err()
        );
        assert!(parse_ca("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_err());
        assert!(read_ca_file("/nonexistent/ca.pem").is_err());
    }

    #[test]
    fn configs_build_for_every_version_and_mode() {
        for versions in [Versions::Any, Versions::Tls12, Versions::Tls13] {
            for resume in [true, false] {
                let spec = TlsSpec {
                    server_name: "localhost".into(),
                    ca_pem: None,
                    resume,
                    versions,
                };
                let c = client_config(&spec).unwrap();
                assert_eq!(c.alpn_protocols, vec![b"http/1.1".to_vec()]);
                let conn = TlsConn::new(&c, server_name("localhost").unwrap()).unwrap();
                assert!(conn.conn.wants_write(), "a ClientHello is queued");
            }
        }
    }

    #[test]
    fn failure_reasons() {
        use rustls::{AlertDescription, CertificateError, Error};
        assert_eq!(
            failure_reason(&Error::AlertReceived(AlertDescription::BadCertificate)),
            "tls_alert_bad_certificate"
        );
        assert_eq!(
            failure_reason(&Error::AlertReceived(AlertDescription::HandshakeFailure)),
            "tls_alert_handshake_failure"
        );
        assert_eq!(
            failure_reason(&Error::InvalidCertificate(CertificateError::UnknownIssuer)),
            "tls_cert_unknown_issuer"
        );
        assert_eq!(
            failure_reason(&Error::InvalidCertificate(
                CertificateError::NotValidForName
            )),
            "tls_cert_not_valid_for_name"
        );
        assert_eq!(failure_reason(&Error::DecryptError), "tls_decrypt_error");
        assert_eq!(failure_reason(&Error::NoApplicationProtocol), "tls_no_alpn");
    }
}
