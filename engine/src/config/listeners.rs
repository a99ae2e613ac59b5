//! What the configuration means for the ports: the subscriber listeners, the admin
//! port's TLS, and the number of workers.

use super::{Config, ListenerConfig, ListenerProtocol, TlsFiles};

impl Config {
    /// The subscriber listeners: the `[[listener]]` entries, or one on `listen`.
    pub fn listeners(&self) -> Vec<ListenerConfig> {
        if self.listener.is_empty() {
            let tls = (!self.tls_cert.is_empty()).then(|| TlsFiles {
                cert: self.tls_cert.clone(),
                key: self.tls_key.clone(),
                sni: Vec::new(),
            });
            vec![ListenerConfig {
                addr: self.listen.clone(),
                protocol: ListenerProtocol::Http,
                tls,
            }]
        } else {
            self.listener.clone()
        }
    }

    /// The admin port's TLS, if it has one.
    pub fn admin_tls(&self) -> Option<TlsFiles> {
        (!self.admin_tls_cert.is_empty()).then(|| TlsFiles {
            cert: self.admin_tls_cert.clone(),
            key: self.admin_tls_key.clone(),
            sni: Vec::new(),
        })
    }

    /// Number of workers to start.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}
