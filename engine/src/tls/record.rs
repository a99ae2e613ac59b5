//! The TLS record layer of an established connection: what the server does with the
//! keys once rustls has finished the handshake (as kTLS would, in this process).
//!
//! Why not keep the rustls connection: its record layer holds an expanded encrypter and
//! decrypter (560 B each with ring, whatever the suite) and the key schedule kept for key
//! updates, about 3.2 KB per idle connection, measured; these keys are 100 B, and the
//! cipher's expanded key is made again for each use (tens of nanoseconds with AES-NI,
//! beside the microseconds of the send it comes with). The cryptography is ring's AEAD;
//! this module only frames records (RFC 8446 section 5, RFC 5246 section 6.2 with the
//! nonces of RFC 5288 and RFC 7905).
//!
//! What it does not do: key updates (a TLS 1.3 `KeyUpdate` from the client closes the
//! connection; browsers and common TLS stacks do not send one), and it stops a direction
//! at the cipher's confidentiality limit (the connection closes and the client
//! reconnects, resuming its session).

use std::fmt;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::{ConnectionTrafficSecrets, ProtocolVersion};

/// The largest plaintext of one record (RFC 8446 section 5.1).
pub const MAX_PLAINTEXT: usize = 16_384;
/// Record header length.
pub const HEADER: usize = 5;
/// AEAD tag length (every suite here).
const TAG: usize = 16;
/// TLS 1.2 AES-GCM's explicit nonce, sent with each record.
const EXPLICIT: usize = 8;
/// The largest record payload accepted (RFC 8446 5.2: 2^14 + 256; TLS 1.2 allows 2048
/// of expansion, far more than its AEAD suites add).
const MAX_PAYLOAD: usize = MAX_PLAINTEXT + 256;

/// Record content types.
pub mod content {
    /// change_cipher_spec
    pub const CCS: u8 = 20;
    /// alert
    pub const ALERT: u8 = 21;
    /// handshake
    pub const HANDSHAKE: u8 = 22;
    /// application_data
    pub const DATA: u8 = 23;
}

/// Why a record was refused: the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// Bad framing, a failed authentication tag, or a record type not allowed here.
    Bad(&'static str),
    /// The confidentiality limit of the cipher was reached.
    Exhausted,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Bad(why) => write!(f, "TLS record refused: {why}"),
            RecordError::Exhausted => write!(f, "TLS record limit of the cipher reached"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Alg {
    fn ring(self) -> &'static aead::Algorithm {
        match self {
            Alg::Aes128Gcm => &aead::AES_128_GCM,
            Alg::Aes256Gcm => &aead::AES_256_GCM,
            Alg::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    fn key_len(self) -> usize {
        match self {
            Alg::Aes128Gcm => 16,
            Alg::Aes256Gcm | Alg::Chacha20Poly1305 => 32,
        }
    }
}

/// One direction's key, IV and sequence number.
struct Dir {
    key: [u8; 32],
    iv: [u8; 12],
    seq: u64,
}

impl Dir {
    fn new(alg: Alg, seq: u64, secrets: &ConnectionTrafficSecrets) -> Result<Dir, RecordError> {
        let (key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv }
            | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
            | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
            _ => return Err(RecordError::Bad("unsupported cipher")),
        };
        let (key, iv) = (key.as_ref(), iv.as_ref());
        if key.len() != alg.key_len() || iv.len() != 12 {
            return Err(RecordError::Bad("unexpected key length"));
        }
        let mut d = Dir {
            key: [0; 32],
            iv: [0; 12],
            seq,
        };
        d.key[..key.len()].copy_from_slice(key);
        d.iv.copy_from_slice(iv);
        Ok(d)
    }

    fn key(&self, alg: Alg) -> LessSafeKey {
        let unbound = UnboundKey::new(alg.ring(), &self.key[..alg.key_len()])
            .expect("key length checked when the keys were taken");
        LessSafeKey::new(unbound)
    }

    /// The IV with the sequence number XORed into its last eight bytes.
    fn nonce(&self) -> [u8; 12] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }
}

/// What one received record held.
#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    /// Application data: the plaintext is at `start..end` of the buffer given.
    Data { start: usize, end: usize },
    /// The peer's close_notify.
    CloseNotify,
}

/// The keys of an established connection, both directions.
pub struct Keys {
    tls13: bool,
    alg: Alg,
    /// Records allowed per direction (the cipher's confidentiality limit).
    limit: u64,
    tx: Dir,
    rx: Dir,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the keys themselves.
        f.debug_struct("Keys")
            .field("tls13", &self.tls13)
            .field("alg", &self.alg)
            .field("tx_seq", &self.tx.seq)
            .field("rx_seq", &self.rx.seq)
            .finish()
    }
}

impl Keys {
    /// The keys rustls extracted at the end of a handshake.
    pub fn new(
        version: ProtocolVersion,
        limit: u64,
        secrets: rustls::ExtractedSecrets,
    ) -> Result<Keys, RecordError> {
        let tls13 = match version {
            ProtocolVersion::TLSv1_3 => true,
            ProtocolVersion::TLSv1_2 => false,
            _ => return Err(RecordError::Bad("unsupported protocol version")),
        };
        let alg = match &secrets.tx.1 {
            ConnectionTrafficSecrets::Aes128Gcm { .. } => Alg::Aes128Gcm,
            ConnectionTrafficSecrets::Aes256Gcm { .. } => Alg::Aes256Gcm,
            ConnectionTrafficSecrets::Chacha20Poly1305 { .. } => Alg::Chacha20Poly1305,
            _ => return Err(RecordError::Bad("unsupported cipher")),
        };
        Ok(Keys {
            tls13,
            alg,
            limit,
            tx: Dir::new(alg, secrets.tx.0, &secrets.tx.1)?,
            rx: Dir::new(alg, secrets.rx.0, &secrets.rx.1)?,
        })
    }

    /// The keys and sequence numbers as bytes, for a hot handover to the next process
    /// (over a socket pair between two processes of this server, never anywhere else);
    /// [`Keys::import`] reads them back.
    pub fn export(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + 8 + 2 * 52);
        out.push(u8::from(self.tls13));
        out.push(match self.alg {
            Alg::Aes128Gcm => 1,
            Alg::Aes256Gcm => 2,
            Alg::Chacha20Poly1305 => 3,
        });
        out.extend_from_slice(&self.limit.to_le_bytes());
        for d in [&self.tx, &self.rx] {
            out.extend_from_slice(&d.key);
            out.extend_from_slice(&d.iv);
            out.extend_from_slice(&d.seq.to_le_bytes());
        }
        out
    }

    /// Keys from [`Keys::export`]; `None` for bytes it did not write.
    pub fn import(b: &[u8]) -> Option<Keys> {
        if b.len() != 2 + 8 + 2 * 52 {
            return None;
        }
        let alg = match b[1] {
            1 => Alg::Aes128Gcm,
            2 => Alg::Aes256Gcm,
            3 => Alg::Chacha20Poly1305,
            _ => return None,
        };
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let dir = |at: usize| Dir {
            key: b[at..at + 32].try_into().expect("32 bytes"),
            iv: b[at + 32..at + 44].try_into().expect("12 bytes"),
            seq: u64_at(at + 44),
        };
        Some(Keys {
            tls13: b[0] != 0,
            alg,
            limit: u64_at(2),
            tx: dir(10),
            rx: dir(62),
        })
    }

    /// TLS 1.2 AES-GCM sends an explicit nonce with each record.
    fn explicit(&self) -> usize {
        if !self.tls13 && self.alg != Alg::Chacha20Poly1305 {
            EXPLICIT
        } else {
            0
        }
    }

    /// Bytes a record of `n` plaintext bytes takes on the wire.
    pub fn overhead(&self) -> usize {
        HEADER + self.explicit() + usize::from(self.tls13) + TAG
    }

    /// Encrypts `parts` (of any total length: records of at most [`MAX_PLAINTEXT`]) as
    /// records of `ctype`, appended to `out`.
    pub fn seal<P: AsRef<[u8]>>(
        &mut self,
        ctype: u8,
        parts: &[P],
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        let total: usize = parts.iter().map(|p| p.as_ref().len()).sum();
        let records = total.div_ceil(MAX_PLAINTEXT).max(1);
        out.reserve(total + records * self.overhead());
        let key = self.tx.key(self.alg);
        let mut part = 0;
        let mut off = 0;
        let mut left = total;
        loop {
            let n = left.min(MAX_PLAINTEXT);
            left -= n;
            if self.tx.seq >= self.limit {
                return Err(RecordError::Exhausted);
            }
            let start = out.len();
            let wire_type = if self.tls13 { content::DATA } else { ctype };
            out.extend_from_slice(&[wire_type, 3, 3, 0, 0]);
            let nonce = self.tx.nonce();
            let explicit = self.explicit();
            if explicit > 0 {
                out.extend_from_slice(&nonce[4..]);
            }
            let body = out.len();
            // The plaintext of this record, gathered from the parts.
            let mut need = n;
            while need > 0 {
                let p = parts[part].as_ref();
                let take = (p.len() - off).min(need);
                out.extend_from_slice(&p[off..off + take]);
                off += take;
                need -= take;
                if off == p.len() {
                    part += 1;
                    off = 0;
                }
            }
            if self.tls13 {
                out.push(ctype);
            }
            let payload = out.len() - body + explicit + TAG;
            out[start + 3..start + 5].copy_from_slice(&(payload as u16).to_be_bytes());
            let aad = if self.tls13 {
                let mut h = [0u8; 13];
                h[..5].copy_from_slice(&out[start..start + 5]);
                (h, 5)
            } else {
                (self.aad12(self.tx.seq, ctype, n), 13)
            };
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&aad.0[..aad.1]),
                    &mut out[body..],
                )
                .map_err(|_| RecordError::Bad("encryption failed"))?;
            out.extend_from_slice(tag.as_ref());
            self.tx.seq += 1;
            if left == 0 {
                return Ok(());
            }
        }
    }

    /// TLS 1.2's additional data: seq, type, version, plaintext length.
    fn aad12(&self, seq: u64, ctype: u8, len: usize) -> [u8; 13] {
        let mut a = [0u8; 13];
        a[..8].copy_from_slice(&seq.to_be_bytes());
        a[8] = ctype;
        a[9] = 3;
        a[10] = 3;
        a[11..].copy_from_slice(&(len as u16).to_be_bytes());
        a
    }

    /// The length of the first record in `buf` when it is all there.
    pub fn complete(buf: &[u8]) -> Result<Option<usize>, RecordError> {
        if buf.len() < HEADER {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
        if len > MAX_PAYLOAD {
            return Err(RecordError::Bad("record too long"));
        }
        Ok((buf.len() >= HEADER + len).then_some(HEADER + len))
    }

    /// Decrypts, in place, the first record of `buf`, which [`Keys::complete`] said is
    /// `len` bytes long.
    pub fn open(&mut self, buf: &mut [u8], len: usize) -> Result<Record, RecordError> {
        if self.rx.seq >= self.limit {
            return Err(RecordError::Exhausted);
        }
        let wire_type = buf[0];
        if buf[1] != 3 {
            return Err(RecordError::Bad("bad record version"));
        }
        let explicit = self.explicit();
        if len < HEADER + explicit + TAG {
            return Err(RecordError::Bad("record too short"));
        }
        let mut nonce = self.rx.nonce();
        if explicit > 0 {
            nonce[4..].copy_from_slice(&buf[HEADER..HEADER + EXPLICIT]);
        }
        let body = HEADER + explicit;
        let aad = if self.tls13 {
            if wire_type != content::DATA {
                return Err(RecordError::Bad(
                    "unexpected record type after the handshake",
                ));
            }
            let mut h = [0u8; 13];
            h[..5].copy_from_slice(&buf[..5]);
            (h, 5)
        } else {
            (self.aad12(self.rx.seq, wire_type, len - body - TAG), 13)
        };
        let key = self.rx.key(self.alg);
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad.0[..aad.1]),
                &mut buf[body..len],
            )
            .map_err(|_| RecordError::Bad("bad record authentication tag"))?;
        self.rx.seq += 1;
        let mut end = plain.len();
        let ctype = if self.tls13 {
            // The inner type is the last non-zero byte (padding follows it).
            while end > 0 && plain[end - 1] == 0 {
                end -= 1;
            }
            if end == 0 {
                return Err(RecordError::Bad("record without a content type"));
            }
            end -= 1;
            plain[end]
        } else {
            wire_type
        };
        let (start, end) = (body, body + end);
        match ctype {
            content::DATA => Ok(Record::Data { start, end }),
            content::ALERT if end - start == 2 && buf[start + 1] == 0 => Ok(Record::CloseNotify),
            content::ALERT => Err(RecordError::Bad("alert from the peer")),
            content::HANDSHAKE => Err(RecordError::Bad(
                "post-handshake message (key update or renegotiation) not supported",
            )),
            content::CCS => Err(RecordError::Bad("change_cipher_spec after the handshake")),
            _ => Err(RecordError::Bad("unknown record type")),
        }
    }

    /// A close_notify alert, appended to `out`.
    pub fn close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        self.seal(content::ALERT, &[&[1, 0]], out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::server::UnbufferedServerConnection;
    use rustls::unbuffered::ConnectionState;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};
    use std::io::{Read, Write};
    use std::sync::Arc;

    /// A rustls client and our server side after an in-memory handshake: the client, and
    /// the server's keys.
    fn pair(
        version: &'static rustls::SupportedProtocolVersion,
        suite: &str,
    ) -> (ClientConnection, Keys) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = CertificateDer::from(ck.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let mut provider = rustls::crypto::ring::default_provider();
        provider
            .cipher_suites
            .retain(|s| format!("{:?}", s.suite()).contains(suite));
        let provider = Arc::new(provider);
        let mut sc = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        sc.enable_secret_extraction = true;
        sc.send_tls13_tickets = 0;
        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap();
        let cc = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut client =
            ClientConnection::new(Arc::new(cc), ServerName::try_from("localhost").unwrap())
                .unwrap();
        let mut server = UnbufferedServerConnection::new(Arc::new(sc)).unwrap();
        let mut incoming = Vec::new();
        let mut out = vec![0u8; 32 * 1024];
        for _ in 0..8 {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            incoming.extend_from_slice(&wire);
            let mut reply = Vec::new();
            let mut done = false;
            loop {
                let st = server.process_tls_records(&mut incoming);
                let discard = st.discard;
                let stop = match st.state.unwrap() {
                    ConnectionState::EncodeTlsData(mut e) => {
                        let n = e.encode(&mut out).unwrap();
                        reply.extend_from_slice(&out[..n]);
                        false
                    }
                    ConnectionState::TransmitTlsData(t) => {
                        t.done();
                        false
                    }
                    ConnectionState::BlockedHandshake => true,
                    ConnectionState::WriteTraffic(_) => {
                        done = true;
                        true
                    }
                    other => panic!("{other:?}"),
                };
                incoming.drain(..discard);
                if stop {
                    break;
                }
            }
            let mut r = &reply[..];
            while !r.is_empty() {
                client.read_tls(&mut r).unwrap();
            }
            client.process_new_packets().unwrap();
            if done && !client.is_handshaking() {
                let v = server.protocol_version().unwrap();
                let (secrets, _) = server.dangerous_into_kernel_connection().unwrap();
                return (client, Keys::new(v, 1 << 20, secrets).unwrap());
            }
        }
        panic!("no handshake");
    }

    fn client_reads(client: &mut ClientConnection, wire: &[u8]) -> Vec<u8> {
        let mut r = wire;
        while !r.is_empty() {
            client.read_tls(&mut r).unwrap();
            client.process_new_packets().unwrap();
        }
        let mut got = Vec::new();
        let _ = client.reader().read_to_end(&mut got);
        got
    }

    const SUITES: [(&str, &str); 6] = [
        ("1.3", "AES_128_GCM"),
        ("1.3", "AES_256_GCM"),
        ("1.3", "CHACHA20"),
        ("1.2", "AES_128_GCM"),
        ("1.2", "AES_256_GCM"),
        ("1.2", "CHACHA20"),
    ];

    fn each_pair(mut f: impl FnMut(&str, ClientConnection, Keys)) {
        for (v, suite) in SUITES {
            let version = if v == "1.3" {
                &rustls::version::TLS13
            } else {
                &rustls::version::TLS12
            };
            let (c, k) = pair(version, suite);
            f(&format!("TLS {v} {suite}"), c, k);
        }
    }

    #[test]
    fn records_go_both_ways_with_every_suite_across_record_boundaries() {
        each_pair(|name, mut client, mut keys| {
            // Server to client: several parts, more than one record's worth.
            let big = vec![7u8; MAX_PLAINTEXT * 2 + 100];
            let mut wire = Vec::new();
            keys.seal(content::DATA, &[&b"head "[..], &big, b" tail"], &mut wire)
                .unwrap();
            let got = client_reads(&mut client, &wire);
            assert_eq!(got.len(), 5 + big.len() + 5, "{name}");
            assert!(
                got.starts_with(b"head ") && got.ends_with(b" tail"),
                "{name}"
            );
            // Client to server, three writes; records found one by one in the stream.
            for msg in [&b"one"[..], b"two", &[9u8; 40_000]] {
                client.writer().write_all(msg).unwrap();
            }
            let mut stream = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut stream).unwrap();
            }
            let mut plain = Vec::new();
            let mut pos = 0;
            while let Some(len) = Keys::complete(&stream[pos..]).unwrap() {
                match keys.open(&mut stream[pos..pos + len], len).unwrap() {
                    Record::Data { start, end } => {
                        plain.extend_from_slice(&stream[pos + start..pos + end])
                    }
                    Record::CloseNotify => panic!("{name}: no close yet"),
                }
                pos += len;
            }
            assert_eq!(pos, stream.len(), "{name}: every record complete");
            assert_eq!(plain.len(), 6 + 40_000, "{name}");
            // close_notify both ways.
            client.send_close_notify();
            let mut c = Vec::new();
            client.write_tls(&mut c).unwrap();
            let len = Keys::complete(&c).unwrap().unwrap();
            assert_eq!(keys.open(&mut c, len), Ok(Record::CloseNotify), "{name}");
            let mut bye = Vec::new();
            keys.close_notify(&mut bye).unwrap();
            let mut r = &bye[..];
            client.read_tls(&mut r).unwrap();
            let state = client.process_new_packets().unwrap();
            assert!(state.peer_has_closed(), "{name}");
        });
    }

    #[test]
    fn a_tampered_or_replayed_record_is_refused() {
        each_pair(|name, mut client, mut keys| {
            client.writer().write_all(b"hello").unwrap();
            client.writer().write_all(b"again").unwrap();
            let mut stream = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut stream).unwrap();
            }
            let first = Keys::complete(&stream).unwrap().unwrap();
            let mut replay = stream[..first].to_vec();
            let mut tampered = stream[first..].to_vec();
            assert!(matches!(
                keys.open(&mut stream[..first], first),
                Ok(Record::Data { .. })
            ));
            // The same record again: its sequence number is past.
            let n = replay.len();
            assert!(keys.open(&mut replay, n).is_err(), "{name}: a replay");
            let last = tampered.len() - 1;
            tampered[last] ^= 1;
            let n = tampered.len();
            assert_eq!(
                keys.open(&mut tampered, n),
                Err(RecordError::Bad("bad record authentication tag")),
                "{name}"
            );
        });
    }

    #[test]
    fn framing_limits_and_the_confidentiality_limit_hold() {
        assert_eq!(Keys::complete(&[23, 3, 3]), Ok(None));
        assert_eq!(Keys::complete(&[23, 3, 3, 0, 5, 1, 2]), Ok(None));
        assert_eq!(Keys::complete(&[23, 3, 3, 0, 2, 1, 2]), Ok(Some(7)));
        assert!(
            Keys::complete(&[23, 3, 3, 0xff, 0xff]).is_err(),
            "longer than 2^14 + 256"
        );
        let (_, mut keys) = pair(&rustls::version::TLS13, "AES_128_GCM");
        keys.limit = keys.tx.seq + 1;
        let mut out = Vec::new();
        keys.seal(content::DATA, &[b"ok"], &mut out).unwrap();
        assert_eq!(
            keys.seal(content::DATA, &[b"no"], &mut out),
            Err(RecordError::Exhausted)
        );
    }
}
