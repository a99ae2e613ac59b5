//! Property tests of the Engine.IO and Socket.IO codecs: what is written decodes back to
//! what went in, binary attachments survive the trip inline and back, and no input makes
//! a decoder panic.
//!
//! Raise the case count for a deeper run with
//! `PROPTEST_CASES=10000 cargo test -p pushedge-protocol --test socketio_props`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use proptest::prelude::*;
use serde_json::{json, Value};

use protocol::engineio::{
    self, decode_payload, decode_text, push_separator, write_binary_b64, write_text, EioError,
    Packet, PacketType,
};
use protocol::socketio::{
    self, decode, extract_binaries, inline_attachments, split_args, split_event, write_event_data,
    SioPacket, SioType, MAX_ACK_ID, MAX_ATTACHMENTS,
};

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 256;

fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

const EIO_TYPES: [PacketType; 7] = [
    PacketType::Open,
    PacketType::Close,
    PacketType::Ping,
    PacketType::Pong,
    PacketType::Message,
    PacketType::Upgrade,
    PacketType::Noop,
];

const SIO_TYPES: [SioType; 7] = [
    SioType::Connect,
    SioType::Disconnect,
    SioType::Event,
    SioType::Ack,
    SioType::ConnectError,
    SioType::BinaryEvent,
    SioType::BinaryAck,
];

// ---------------------------------------------------------------------------------------
// JSON values
// ---------------------------------------------------------------------------------------

/// Any number JSON can hold (floats read back exactly: serde_json's `float_roundtrip`).
fn json_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i32>().prop_map(|n| json!(f64::from(n) / 8.0)),
        (prop::num::f64::POSITIVE
            | prop::num::f64::NEGATIVE
            | prop::num::f64::NORMAL
            | prop::num::f64::SUBNORMAL
            | prop::num::f64::ZERO)
            .prop_map(|f| json!(f)),
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        json_number(),
        any::<String>().prop_map(Value::String),
    ]
}

/// Keys that never collide with `_placeholder`, `num` or `$binary`.
fn json_key() -> impl Strategy<Value = String> {
    "[a-m]{0,4}"
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(json_key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(json_key(), json_value(), 0..5)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// JSON text of `v`, compact or with whitespace.
fn json_text(v: &Value, pretty: bool) -> String {
    if pretty {
        serde_json::to_string_pretty(v).expect("a Value serializes")
    } else {
        v.to_string()
    }
}

/// Data of the right shape for `kind`.
fn data_for(kind: SioType) -> BoxedStrategy<Option<Value>> {
    let args = prop::collection::vec(json_value(), 0..4);
    match kind {
        SioType::Connect => prop::option::of(json_object()).boxed(),
        SioType::Disconnect => Just(None).boxed(),
        SioType::Event | SioType::BinaryEvent => (any::<String>(), args)
            .prop_map(|(name, mut args)| {
                args.insert(0, Value::String(name));
                Some(Value::Array(args))
            })
            .boxed(),
        SioType::Ack | SioType::BinaryAck => args.prop_map(|a| Some(Value::Array(a))).boxed(),
        SioType::ConnectError => prop_oneof![
            json_object(),
            "[ -~]{0,20}".prop_map(|m| json!({ "message": m })),
            any::<String>().prop_map(Value::String),
        ]
        .prop_map(Some)
        .boxed(),
    }
}

/// Namespaces: the main one, or `/` and anything but `,` and control characters.
fn namespace() -> impl Strategy<Value = String> {
    prop_oneof![Just("/".to_string()), "/[a-zA-Z0-9_/ .?=&ü€-]{0,24}",]
}

#[derive(Debug, Clone)]
struct OwnedPacket {
    kind: SioType,
    nsp: String,
    id: Option<u64>,
    attachments: u32,
    data: Option<String>,
}

fn sio_packet() -> impl Strategy<Value = OwnedPacket> {
    (0..SIO_TYPES.len())
        .prop_flat_map(|k| {
            let kind = SIO_TYPES[k];
            let attachments = if kind.is_binary() {
                (0..=MAX_ATTACHMENTS).boxed()
            } else {
                Just(0).boxed()
            };
            (
                Just(kind),
                namespace(),
                prop::option::of(prop_oneof![0..1000u64, 0..=MAX_ACK_ID]),
                attachments,
                data_for(kind),
                any::<bool>(),
            )
        })
        .prop_map(|(kind, nsp, id, attachments, data, pretty)| OwnedPacket {
            kind,
            nsp,
            id,
            attachments,
            data: data.map(|v| json_text(&v, pretty)),
        })
}

// ---------------------------------------------------------------------------------------
// Attachments
// ---------------------------------------------------------------------------------------

/// A JSON tree some of whose leaves are binary attachments.
#[derive(Debug, Clone)]
enum Tree {
    Leaf(Value),
    Binary(Vec<u8>),
    Array(Vec<Tree>),
    Object(BTreeMap<String, Tree>),
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = prop_oneof![
        3 => json_leaf().prop_map(Tree::Leaf),
        1 => prop::collection::vec(any::<u8>(), 0..12).prop_map(Tree::Binary),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Tree::Array),
            prop::collection::btree_map(json_key(), inner, 0..6).prop_map(Tree::Object),
        ]
    })
}

/// The tree twice, with placeholders and with inline `$binary` objects, and the
/// attachments in document order. Keys are unique and inserted in sorted order, so the
/// order of a `Value`'s members is the same with and without serde_json's
/// `preserve_order`.
fn tree_forms(t: &Tree, atts: &mut Vec<Vec<u8>>) -> (Value, Value) {
    match t {
        Tree::Leaf(v) => (v.clone(), v.clone()),
        Tree::Binary(bytes) => {
            let num = atts.len();
            atts.push(bytes.clone());
            (
                json!({ "_placeholder": true, "num": num }),
                json!({ "$binary": STANDARD.encode(bytes) }),
            )
        }
        Tree::Array(items) => {
            let (a, b): (Vec<_>, Vec<_>) = items.iter().map(|i| tree_forms(i, atts)).unzip();
            (Value::Array(a), Value::Array(b))
        }
        Tree::Object(members) => {
            let mut a = serde_json::Map::new();
            let mut b = serde_json::Map::new();
            for (k, v) in members {
                let (x, y) = tree_forms(v, atts);
                a.insert(k.clone(), x);
                b.insert(k.clone(), y);
            }
            (Value::Object(a), Value::Object(b))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Engine.IO payloads
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum OwnedEio {
    Text(PacketType, String),
    Binary(Vec<u8>),
}

fn eio_packet() -> impl Strategy<Value = OwnedEio> {
    prop_oneof![
        3 => (0..EIO_TYPES.len(), any::<String>()).prop_map(|(t, s)| {
            OwnedEio::Text(EIO_TYPES[t], s.replace(char::from(engineio::SEPARATOR), ""))
        }),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(OwnedEio::Binary),
    ]
}

/// Strings made mostly of the characters that matter to the decoders.
fn protocol_ish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            8 => prop::sample::select(vec![
                "0", "1", "2", "3", "4", "5", "6", "7", "9", "-", "/", ",", "[", "]", "{", "}",
                "\"", ":", " ", "\\", "a", "b", "e", ".", "\u{1e}", "=", "+", "ü", "\"_placeholder\"",
                "true", "null", "\"num\"", "\"$binary\"", "\"AQ==\"",
            ])
            .prop_map(str::to_string),
            1 => any::<char>().prop_map(String::from),
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn sio_write_then_decode_gives_the_packet(p in sio_packet()) {
        let mut out = Vec::new();
        socketio::write(&mut out, p.kind, &p.nsp, p.id, p.attachments, p.data.as_deref().map(str::as_bytes));
        let text = std::str::from_utf8(&out).expect("UTF-8 in, UTF-8 out");
        let got = decode(text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        prop_assert_eq!(&got, &SioPacket {
            kind: p.kind,
            nsp: &p.nsp,
            id: p.id,
            attachments: p.attachments,
            data: p.data.as_deref(),
        });
        // Writing the decoded packet gives the same text.
        let mut again = Vec::new();
        got.write(&mut again);
        prop_assert_eq!(again, out);
    }

    #[test]
    fn sio_event_data_splits_back(name in any::<String>(), args in prop::collection::vec(json_value(), 0..5)) {
        let texts: Vec<String> = args.iter().map(Value::to_string).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mut out = Vec::new();
        write_event_data(&mut out, &name, &refs);
        let data = std::str::from_utf8(&out).expect("UTF-8");
        prop_assert_eq!(split_event(data), Ok((name.clone(), texts.clone())));
        let all: Vec<Value> = serde_json::from_str(data).expect("valid JSON");
        prop_assert_eq!(&all[0], &Value::String(name));
        prop_assert_eq!(&all[1..], &args[..]);
        // The same data as ACK arguments: the name is the first of them.
        let split = split_args(data).expect("an array");
        prop_assert_eq!(split.len(), texts.len() + 1);
        prop_assert_eq!(&split[1..], &texts[..]);
        // And inside a packet.
        let mut packet = Vec::new();
        socketio::write(&mut packet, SioType::Event, "/", Some(1), 0, Some(&out));
        let p = decode(std::str::from_utf8(&packet).expect("UTF-8")).expect("an event");
        prop_assert_eq!(p.data, Some(data));
    }

    #[test]
    fn attachments_inline_and_back(t in tree(), pretty in any::<bool>()) {
        let mut atts = Vec::new();
        let (with_placeholders, with_binaries) = tree_forms(&t, &mut atts);
        prop_assume!(atts.len() <= MAX_ATTACHMENTS as usize);
        let refs: Vec<&[u8]> = atts.iter().map(Vec::as_slice).collect();
        let placeholders = with_placeholders.to_string();
        let binaries = with_binaries.to_string();

        let inlined = inline_attachments(&json_text(&with_placeholders, pretty), &refs);
        prop_assert_eq!(inlined.as_deref(), Ok(binaries.as_str()));
        let (back, got) = extract_binaries(&json_text(&with_binaries, pretty))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, &placeholders);
        prop_assert_eq!(&got, &atts);
        // The composition, both ways round.
        let (back, got) = extract_binaries(&inline_attachments(&placeholders, &refs).expect("inlines"))
            .expect("extracts");
        prop_assert_eq!((back.as_str(), &got), (placeholders.as_str(), &atts));
        let refs2: Vec<&[u8]> = got.iter().map(Vec::as_slice).collect();
        prop_assert_eq!(inline_attachments(&back, &refs2), Ok(binaries));
    }

    #[test]
    fn json_without_attachments_is_compacted(v in json_value(), pretty in any::<bool>()) {
        let compact = v.to_string();
        prop_assert_eq!(extract_binaries(&json_text(&v, pretty)), Ok((compact.clone(), Vec::new())));
        prop_assert_eq!(inline_attachments(&json_text(&v, pretty), &[]), Ok(compact));
    }

    #[test]
    fn eio_payload_round_trip(packets in prop::collection::vec(eio_packet(), 1..16)) {
        let mut body = Vec::new();
        for p in &packets {
            push_separator(&mut body);
            match p {
                OwnedEio::Text(t, s) => write_text(&mut body, *t, s.as_bytes()),
                OwnedEio::Binary(b) => write_binary_b64(&mut body, b),
            }
        }
        let want: Vec<Packet<'_>> = packets
            .iter()
            .map(|p| match p {
                OwnedEio::Text(t, s) => Packet::Text(*t, s),
                OwnedEio::Binary(b) => Packet::Binary(Cow::Borrowed(b)),
            })
            .collect();
        prop_assert_eq!(decode_payload(&body, packets.len()), Ok(want));
        prop_assert_eq!(decode_payload(&body, packets.len() - 1), Err(EioError::TooManyPackets));
    }

    #[test]
    fn eio_text_round_trip(t in 0..EIO_TYPES.len(), s in any::<String>()) {
        let mut out = Vec::new();
        write_text(&mut out, EIO_TYPES[t], s.as_bytes());
        let text = std::str::from_utf8(&out).expect("UTF-8");
        prop_assert_eq!(decode_text(text), Ok((EIO_TYPES[t], s.as_str())));
    }

    #[test]
    fn decoders_never_panic_on_strings(s in prop_oneof![any::<String>(), protocol_ish()]) {
        let _ = decode_text(&s);
        let _ = split_event(&s);
        let _ = split_args(&s);
        let _ = inline_attachments(&s, &[b"\x01", b""]);
        if let Ok((out, atts)) = extract_binaries(&s) {
            prop_assert!(serde_json::from_str::<Value>(&out).is_ok());
            prop_assert!(atts.len() <= MAX_ATTACHMENTS as usize);
        }
        if let Ok(p) = decode(&s) {
            // The canonical form decodes to the same packet.
            let mut out = Vec::new();
            p.write(&mut out);
            let again = String::from_utf8(out).expect("UTF-8");
            prop_assert_eq!(decode(&again), Ok(p));
        }
    }

    #[test]
    fn payload_decoder_never_panics(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            protocol_ish().prop_map(String::into_bytes),
        ],
        max in 0usize..8,
    ) {
        match decode_payload(&body, max) {
            Ok(packets) => {
                prop_assert!(!packets.is_empty() && packets.len() <= max);
                // Written again, the packets give the body back (base64 is canonical).
                let mut out = Vec::new();
                for p in &packets {
                    push_separator(&mut out);
                    match p {
                        Packet::Text(t, s) => write_text(&mut out, *t, s.as_bytes()),
                        Packet::Binary(b) => write_binary_b64(&mut out, b),
                    }
                }
                prop_assert_eq!(out, body);
            }
            Err(EioError::NotUtf8) => prop_assert!(std::str::from_utf8(&body).is_err()),
            Err(EioError::TooManyPackets) => {
                prop_assert!(body.iter().filter(|&&b| b == engineio::SEPARATOR).count() >= max);
            }
            Err(_) => {}
        }
    }
}
