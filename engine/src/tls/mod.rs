//! TLS on the edge: `wss://` and `https://` on any subscriber listener and on the admin
//! port, with rustls.
//!
//! - **Handshake**: rustls's unbuffered server connection (the caller owns the buffers,
//!   so nothing is kept between reads but a partial record), TLS 1.2 and 1.3, ALPN
//!   `http/1.1`, several certificates chosen by SNI ([`Certs`]), session tickets from one
//!   ticketer for the whole process (a reconnect storm resumes instead of doing full
//!   handshakes; tickets stay valid across a certificate reload), no early data.
//! - **After the handshake** the rustls connection is turned into its keys
//!   ([`record::Keys`], ~100 B instead of ~3.2 KB) and [`layer::Tls`] encrypts and
//!   decrypts records itself: an idle TLS subscriber then costs little more than a plain
//!   one.
//! - **Where it sits**: [`layer::Tls`] wraps the worker's backend and is itself a
//!   [`crate::reactor::Backend`]; the worker and the transports never see ciphertext.
//!   Connections of a listener without `tls` pass straight through.
//! - **Reload** (`pushedge ctl tls reload`, SIGHUP): every [`Context`] reads its files
//!   again; new connections get the new certificates, open ones keep their session. A
//!   file that does not load leaves the old certificates in place, and the reload answers
//!   the error.
//! - **The admin port** ([`stream`]): the buffered rustls connection over a non-blocking
//!   socket (admin connections are few, memory there does not matter).
//!
//! A stalled or garbage handshake is cut like any connection that sends no request: the
//! handshake timeout closes it (garbage is refused at once, with an alert).

pub mod layer;
pub mod record;
pub mod stream;

use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::TlsFiles;
use crate::limits::{TLS12_SESSION_CACHE, TLS13_TICKETS};

/// The crypto provider (ring: small, quick to build, AES-NI and ChaCha20).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One process-wide ticketer: resumption works on every listener and across reloads.
pub fn ticketer() -> Result<Arc<dyn ProducesTickets>, String> {
    rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS ticketer: {e}"))
}

/// The certificates of a listener: the first is the default; the others are chosen when
/// the name the client asks for (SNI) is one of theirs.
#[derive(Debug)]
pub struct Certs {
    keys: Vec<Arc<CertifiedKey>>,
}

impl Certs {
    /// The first certificate valid for `name`, else the first one.
    fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        if let (Some(name), true) = (name, self.keys.len() > 1) {
            if let Ok(server) = ServerName::try_from(name) {
                for k in &self.keys {
                    let Ok(der) = k.end_entity_cert() else {
                        continue;
                    };
                    let valid = webpki::EndEntityCert::try_from(der)
                        .is_ok_and(|c| c.verify_is_valid_for_subject_name(&server).is_ok());
                    if valid {
                        return k.clone();
                    }
                }
            }
        }
        self.keys[0].clone()
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// Reads a PEM certificate chain and its private key.
fn load_pair(cert: &str, key: &str, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{cert}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{cert}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("{cert}: no certificate in the file"));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{key}: {e}"))?;
    CertifiedKey::from_der(chain, der, provider).map_err(|e| format!("{cert} with {key}: {e}"))
}

/// Builds the server configuration of a listener from its files.
pub fn server_config(
    files: &TlsFiles,
    ticketer: &Arc<dyn ProducesTickets>,
) -> Result<ServerConfig, String> {
    let provider = provider();
    let mut keys = vec![Arc::new(load_pair(&files.cert, &files.key, &provider)?)];
    for more in &files.sni {
        keys.push(Arc::new(load_pair(&more.cert, &more.key, &provider)?));
    }
    let mut c = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Certs { keys }));
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c.ticketer = ticketer.clone();
    c.send_tls13_tickets = TLS13_TICKETS;
    c.session_storage = ServerSessionMemoryCache::new(TLS12_SESSION_CACHE);
    c.enable_secret_extraction = true;
    c.max_early_data_size = 0;
    Ok(c)
}

/// A listener's TLS: its files and the configuration made from them, replaced whole by a
/// reload.
pub struct Context {
    /// Where it is used (`listener 127.0.0.1:8443`, `admin`), for messages.
    pub name: String,
    files: TlsFiles,
    ticketer: Arc<dyn ProducesTickets>,
    current: RwLock<Arc<ServerConfig>>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("name", &self.name)
            .field("cert", &self.files.cert)
            .finish()
    }
}

impl Context {
    /// Loads the files (an error names the file).
    pub fn new(
        name: String,
        files: TlsFiles,
        ticketer: Arc<dyn ProducesTickets>,
    ) -> Result<Context, String> {
        let config = server_config(&files, &ticketer).map_err(|e| format!("{name}: {e}"))?;
        Ok(Context {
            name,
            files,
            ticketer,
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// The configuration new connections get.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the files again; on an error the old configuration stays.
    pub fn reload(&self) -> Result<(), String> {
        let config = server_config(&self.files, &self.ticketer)
            .map_err(|e| format!("{}: {e}", self.name))?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        Ok(())
    }
}

/// Reloads every context; the errors, one line each (the others are reloaded anyway).
pub fn reload_all(contexts: &[Arc<Context>]) -> Result<usize, String> {
    let errors: Vec<String> = contexts.iter().filter_map(|c| c.reload().err()).collect();
    if errors.is_empty() {
        Ok(contexts.len())
    } else {
        Err(errors.join("; "))
    }
}
