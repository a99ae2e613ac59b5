//! The admin port's socket: plain TCP, or TLS through rustls's buffered server
//! connection (the admin port has few connections; memory there does not matter).
//!
//! Reads and writes are non-blocking like the socket's. A write is taken by rustls and
//! written to the socket as far as it goes; what the socket did not take waits in rustls,
//! and [`AdminStream::write`] answers `WouldBlock` until [`AdminStream::flush_tls`] has
//! written it (the admin loop calls it on every event of the connection).

use mio::net::TcpStream;
use rustls::{ServerConfig, ServerConnection};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;

/// A plain or TLS admin connection.
pub struct AdminStream {
    tcp: TcpStream,
    tls: Option<Box<ServerConnection>>,
}

impl AdminStream {
    /// Plain TCP.
    pub fn plain(tcp: TcpStream) -> AdminStream {
        AdminStream { tcp, tls: None }
    }

    /// TLS with `config` (the handshake happens as the connection is read).
    pub fn tls(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<AdminStream> {
        let conn = ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(AdminStream {
            tcp,
            tls: Some(Box::new(conn)),
        })
    }

    /// True for a TLS connection.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The socket's descriptor (a hot handover passes it on).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.tcp.as_raw_fd()
    }

    /// Writes the TLS bytes rustls holds; true when none is left.
    pub fn flush_tls(&mut self) -> io::Result<bool> {
        let Some(conn) = self.tls.as_mut() else {
            return Ok(true);
        };
        while conn.wants_write() {
            match conn.write_tls(&mut self.tcp) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Shuts the socket (a TLS connection sends close_notify first, as far as the socket
    /// takes it).
    pub fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        if let Some(conn) = self.tls.as_mut() {
            conn.send_close_notify();
            let _ = self.flush_tls();
        }
        self.tcp.shutdown(how)
    }
}

impl Read for AdminStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.tls.is_none() {
            return self.tcp.read(buf);
        }
        loop {
            let conn = self.tls.as_mut().expect("a TLS stream");
            match conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            match conn.read_tls(&mut self.tcp) {
                Ok(0) => return Ok(0),
                Ok(_) => {
                    let state = conn.process_new_packets();
                    // The handshake's answers (or the alert of a failure) go out now.
                    let flushed = self.flush_tls();
                    state.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    flushed?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Write for AdminStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.tls.is_none() {
            return self.tcp.write(buf);
        }
        if !self.flush_tls()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let conn = self.tls.as_mut().expect("a TLS stream");
        if conn.is_handshaking() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = conn.writer().write(buf)?;
        let _ = self.flush_tls()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.flush_tls()? {
            true => Ok(()),
            false => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}
