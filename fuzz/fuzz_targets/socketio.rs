//! Engine.IO payloads and Socket.IO packets: `engineio::decode_payload`, `decode_text`,
//! `socketio::decode`, `split_event`, `split_args`, `inline_attachments`,
//! `extract_binaries`.
//!
//! Invariants: no panic; a decoded payload has 1 to `max` packets and, written again,
//! gives the body back byte for byte (base64 is canonical); a decoded packet's canonical
//! form decodes to the same packet; event data of an accepted packet splits (or holds a
//! string serde_json refuses) and joins back to data that splits the same; extracting
//! binaries and putting them inline again is a round trip.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::engineio::{
    self, decode_payload, decode_text, push_separator, write_binary_b64, write_text, EioError,
    Packet, PacketType,
};
use protocol::socketio::{
    self, decode, extract_binaries, inline_attachments, split_args, split_event, write_event_data,
    SioError, SioType, MAX_ACK_ID, MAX_ATTACHMENTS,
};

/// The packet limit the fuzzer decodes payloads with.
const MAX_PACKETS: usize = 16;

fuzz_target!(|data: &[u8]| {
    match decode_payload(data, MAX_PACKETS) {
        Ok(packets) => {
            assert!(!packets.is_empty() && packets.len() <= MAX_PACKETS);
            let mut out = Vec::new();
            for p in &packets {
                push_separator(&mut out);
                match p {
                    Packet::Text(t, s) => write_text(&mut out, *t, s.as_bytes()),
                    Packet::Binary(b) => write_binary_b64(&mut out, b),
                }
                if let Packet::Text(PacketType::Message, s) = p {
                    check_sio(s);
                }
            }
            assert_eq!(out, data);
        }
        Err(EioError::NotUtf8) => assert!(std::str::from_utf8(data).is_err()),
        Err(EioError::TooManyPackets) => {
            assert!(data.iter().filter(|&&b| b == engineio::SEPARATOR).count() >= MAX_PACKETS);
        }
        Err(EioError::Empty) => {
            assert!(
                data.is_empty()
                    || data
                        .split(|&b| b == engineio::SEPARATOR)
                        .any(<[u8]>::is_empty)
            );
        }
        Err(EioError::BadType | EioError::BadBase64) => {}
    }

    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match decode_text(s) {
        Ok((t, rest)) => {
            let mut out = Vec::new();
            write_text(&mut out, t, rest.as_bytes());
            assert_eq!(out, data);
            if t == PacketType::Message {
                check_sio(rest);
            }
        }
        Err(e) => assert!(s.is_empty() == (e == EioError::Empty)),
    }
    check_sio(s);
    check_json(s);
});

/// One Socket.IO packet text.
fn check_sio(s: &str) {
    let Ok(p) = decode(s) else {
        return;
    };
    assert!(p.nsp.starts_with('/'));
    assert!(p.id.is_none_or(|id| id <= MAX_ACK_ID));
    assert!(p.attachments <= MAX_ATTACHMENTS);
    assert!(p.kind.is_binary() || p.attachments == 0);
    if let Some(d) = p.data {
        assert!(s.ends_with(d));
    }

    let mut canonical = Vec::new();
    p.write(&mut canonical);
    assert!(
        canonical.len() <= s.len() + 2,
        "only a ',' after the namespace is added"
    );
    let canonical = String::from_utf8(canonical).expect("UTF-8 in, UTF-8 out");
    assert_eq!(decode(&canonical), Ok(p.clone()));

    let Some(data) = p.data else {
        assert!(matches!(p.kind, SioType::Connect | SioType::Disconnect));
        return;
    };
    match p.kind {
        SioType::Event | SioType::BinaryEvent => match split_event(data) {
            Ok((name, args)) => {
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                let mut joined = Vec::new();
                write_event_data(&mut joined, &name, &refs);
                let joined = String::from_utf8(joined).expect("UTF-8");
                assert_eq!(split_event(&joined), Ok((name, args.clone())));
                assert_eq!(split_args(data).map(|a| a.len()), Ok(args.len() + 1));
            }
            // A lone surrogate escape passes validation but is no Rust string.
            Err(e) => assert_eq!(e, SioError::BadJson),
        },
        SioType::Ack | SioType::BinaryAck => assert!(split_args(data).is_ok()),
        _ => {}
    }
}

/// Any text as JSON data: attachments out and back in.
fn check_json(s: &str) {
    const ATTACHMENTS: [&[u8]; 2] = [b"\x01\x02", b""];
    if let Ok(inlined) = inline_attachments(s, &ATTACHMENTS) {
        // Still JSON, and compact already.
        assert_eq!(
            inline_attachments(&inlined, &[]).as_deref(),
            Ok(inlined.as_str())
        );
    }
    let Ok((with_placeholders, atts)) = extract_binaries(s) else {
        return;
    };
    assert!(atts.len() <= MAX_ATTACHMENTS as usize);
    // Compact already: extracting again changes nothing.
    if atts.is_empty() {
        assert_eq!(
            extract_binaries(&with_placeholders),
            Ok((with_placeholders.clone(), Vec::new()))
        );
    } else {
        // Binaries were found, so every placeholder is one of ours.
        let refs: Vec<&[u8]> = atts.iter().map(Vec::as_slice).collect();
        let inlined =
            inline_attachments(&with_placeholders, &refs).expect("own placeholders inline");
        let again = extract_binaries(&inlined).expect("own binaries extract");
        assert_eq!(again, (with_placeholders.clone(), atts.clone()));
    }
    // Data that already was an event stays one.
    let mut packet = Vec::new();
    let kind = if atts.is_empty() {
        SioType::Event
    } else {
        SioType::BinaryEvent
    };
    socketio::write(
        &mut packet,
        kind,
        "/",
        None,
        atts.len() as u32,
        Some(with_placeholders.as_bytes()),
    );
    let packet = String::from_utf8(packet).expect("UTF-8");
    if s.trim_start().starts_with('[') && split_event(s).is_ok() {
        assert!(decode(&packet).is_ok());
    }
}
