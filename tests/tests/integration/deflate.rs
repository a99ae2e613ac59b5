//! permessage-deflate (RFC 7692) on `/ws` and `/echo`: a real client that negotiates it
//! (python `websockets`, which offers it by default) sending compressed operations and
//! receiving compressed published messages intact, `server_max_window_bits` honoured,
//! the frames on the wire (RSV1 on messages of at least 128 bytes, not on smaller ones),
//! a decompression bomb (1009), and the protocol errors: RSV1 without the extension,
//! compressed control frames, RSV1 on a continuation (1002), corrupt data and invalid
//! UTF-8 after inflating (1007), and `ws_deflate = false`.
//!
//! Needs python3 with `websockets` (`make deps-socketio` installs it).

use std::process::Command;

use pushedge_tests::*;

/// What python `websockets` and browsers send.
const OFFER: &str = "permessage-deflate; client_max_window_bits";
/// What the server answers to it.
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
/// RSV1, as [`RawWs::send_frame`] and [`Frame::rsv`] count the RSV bits (0..=7).
const RSV1: u8 = 4;

/// A frame to send: FIN, RSV bits, opcode, payload.
type RawFrame = (bool, u8, u8, Vec<u8>);

/// Runs a python script with arguments; its stdout (panics when it fails).
fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 (with the websockets package: make deps-socketio)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A raw WebSocket connection that offered `offer` (none: no extension header); with the
/// 101's `Sec-WebSocket-Extensions`, if any.
fn raw_offering(
    addr: std::net::SocketAddr,
    target: &str,
    offer: Option<&str>,
) -> (RawWs, Option<String>) {
    let mut conn = Conn::connect(addr);
    let mut req = RawWs::handshake_request(target, "13");
    if let Some(o) = offer {
        req.truncate(req.len() - 2);
        req.push_str(&format!("Sec-WebSocket-Extensions: {o}\r\n\r\n"));
    }
    conn.send(req.as_bytes()).unwrap();
    let head = conn.read_head(TIMEOUT).expect("the handshake's answer");
    assert_eq!(head.status, 101, "{head:?}");
    let ext = head.header("sec-websocket-extensions").map(String::from);
    (RawWs { conn }, ext)
}

/// `data` as a stored (uncompressed) deflate block: a valid permessage-deflate payload
/// (the shape of RFC 7692 section 7.2.3.3).
fn stored(data: &[u8]) -> Vec<u8> {
    let len = u16::try_from(data.len()).unwrap();
    let mut out = vec![0x00];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// `n` bytes of `a`, raw-deflated at level 9 (tail stripped): about 1,000 to 1.
fn bomb(n: usize) -> Vec<u8> {
    let script = "import sys, zlib\n\
        c = zlib.compressobj(9, zlib.DEFLATED, -15)\n\
        z = c.compress(b'a' * int(sys.argv[1])) + c.flush(zlib.Z_SYNC_FLUSH)\n\
        assert z.endswith(b'\\x00\\x00\\xff\\xff')\n\
        sys.stdout.write(z[:-4].hex())\n";
    let hex = python(script, &[&n.to_string()]);
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// A client with python `websockets`: compressed ops (sub, pub) and compressed published
/// messages, small and large, through a server that negotiated the extension.
const CLIENT: &str = r#"
import json, sys, urllib.request
from websockets.sync.client import connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

addr, admin, bits = sys.argv[1], sys.argv[2], int(sys.argv[3])
ext = [ClientPerMessageDeflateFactory(client_max_window_bits=True,
       server_max_window_bits=bits if bits < 15 else None)]
# Far back-references: a 3,000-byte block of words, repeated (a client that asked for a
# small window fails to inflate if the server compressed with a bigger one).
words = " ".join("w%d" % ((i * 7919) % 10007) for i in range(500))[:3000]
big = (words * 14)[:40000]
with connect("ws://%s/ws?channel=chat.a" % addr, extensions=ext, max_size=1 << 20,
             open_timeout=5) as ws:
    print(json.dumps({"ext": ws.response.headers.get("Sec-WebSocket-Extensions")}))
    ws.send(json.dumps({"op": "sub", "channel": "chat.b", "id": 1}))
    ok = json.loads(ws.recv(timeout=5))
    assert ok["type"] == "ok" and ok["id"] == 1, ok
    ws.send(json.dumps({"op": "pub", "channel": "chat.b", "content": big[:5000], "id": 2}))
    got = {}
    while len(got) < 2:
        m = json.loads(ws.recv(timeout=5))
        got[m["type"]] = m
    assert got["ok"]["id"] == 2, got
    assert got["data"]["channel"] == "chat.b" and got["data"]["content"] == big[:5000]
    for content in ["hi", big]:
        req = urllib.request.Request("http://%s/pub?channel=chat.a" % admin,
                                     data=content.encode(), method="POST")
        urllib.request.urlopen(req, timeout=5).read()
        m = json.loads(ws.recv(timeout=5))
        assert m["type"] == "data" and m["channel"] == "chat.a", m
        assert m["content"] == content, (len(m["content"]), len(content))
    print(json.dumps({"received": True}))
"#;

#[test]
fn a_python_websockets_client_negotiates_and_messages_arrive_intact() {
    let s = Server::start(&["--set", r#"client_publish=["chat.*"]"#]);
    // A second subscriber on chat.a, raw, to see the frames on the wire.
    let (mut raw, ext) = raw_offering(s.addr, "/ws?channel=chat.a", Some(OFFER));
    assert_eq!(ext.as_deref(), Some(ANSWER));
    for bits in [15, 10] {
        let out = python(
            CLIENT,
            &[
                &s.addr.to_string(),
                &s.admin_addr.to_string(),
                &bits.to_string(),
            ],
        );
        let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        let want = if bits == 15 {
            ANSWER.to_string()
        } else {
            format!("{ANSWER}; server_max_window_bits={bits}")
        };
        assert_eq!(first["ext"], want.as_str(), "{out}");
        assert!(out.contains(r#"{"received": true}"#), "{out}");
        // The raw subscriber got "hi" plain and the 40 KB message compressed.
        let small = raw.read_frame(TIMEOUT).unwrap();
        assert_eq!((small.rsv, small.opcode), (0, op::TEXT), "{small:?}");
        let v: serde_json::Value = serde_json::from_slice(&small.payload).unwrap();
        assert_eq!(v["content"], "hi");
        let large = raw.read_frame(TIMEOUT).unwrap();
        assert_eq!((large.rsv, large.opcode, large.fin), (RSV1, op::TEXT, true));
        assert!(
            large.payload.len() < 20_000,
            "40 KB compressed to {} bytes",
            large.payload.len()
        );
    }
}

#[test]
fn the_echo_endpoint_compresses_both_ways() {
    let s = Server::start(&["--set", "ws_echo=true"]);
    let script = r#"
import sys
from websockets.sync.client import connect
with connect("ws://%s/echo" % sys.argv[1], max_size=1 << 20, open_timeout=5) as ws:
    assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
    for m in ["x", "é" * 20000, bytes(range(256)) * 100, "", b""]:
        ws.send(m)
        got = ws.recv(timeout=5)
        assert got == m, (type(got), len(got), len(m))
print("echoed")
"#;
    assert!(python(script, &[&s.addr.to_string()]).contains("echoed"));
}

#[test]
fn a_decompression_bomb_is_closed_with_1009() {
    let s = Server::start(&["--set", "ws_echo=true"]);
    let z = bomb(10_000_000);
    assert!(
        z.len() < 64 * 1024,
        "the frame itself is within max_message_bytes"
    );
    for target in ["/ws?channel=a", "/echo"] {
        let (mut ws, ext) = raw_offering(s.addr, target, Some(OFFER));
        assert_eq!(ext.as_deref(), Some(ANSWER));
        ws.send_frame(true, RSV1, op::TEXT, true, &z);
        assert_eq!(
            ws.recv_close(TIMEOUT),
            Some((1009, "message too big".into())),
            "{target}"
        );
    }
    // Just under the limit (64 KiB of text, inflated) goes through.
    let (mut ws, _) = raw_offering(s.addr, "/echo", Some(OFFER));
    ws.send_frame(true, RSV1, op::TEXT, true, &bomb(65_536));
    let f = ws.read_frame(TIMEOUT).unwrap();
    assert_eq!((f.rsv, f.opcode), (RSV1, op::TEXT), "echoed, compressed");
}

#[test]
fn compressed_client_frames_are_checked() {
    let s = Server::start(&[]);
    let ping_op = br#"{"op":"ping","id":7}"#;
    // A compressed op (a stored block), whole and in two frames (RSV1 on the first only).
    let (mut ws, _) = raw_offering(s.addr, "/ws?channel=a", Some(OFFER));
    ws.send_frame(true, RSV1, op::TEXT, true, &stored(ping_op));
    assert_eq!(ws.recv_json(TIMEOUT)["type"], "pong");
    let z = stored(ping_op);
    ws.send_frame(false, RSV1, op::TEXT, true, &z[..4]);
    ws.send_frame(true, 0, op::CONT, true, &z[4..]);
    assert_eq!(ws.recv_json(TIMEOUT)["id"], 7);
    // An uncompressed op on the same connection (RSV1 clear is allowed per message).
    ws.send_text(r#"{"op":"ping","id":8}"#);
    assert_eq!(ws.recv_json(TIMEOUT)["id"], 8);

    let cases: [(&str, Vec<RawFrame>, u16); 5] = [
        (
            "compressed ping",
            vec![(true, RSV1, op::PING, stored(b"x"))],
            1002,
        ),
        (
            "compressed close",
            vec![(true, RSV1, op::CLOSE, vec![0x03, 0xe8])],
            1002,
        ),
        (
            "RSV1 on a continuation",
            vec![
                (false, 0, op::TEXT, b"{\"op\":".to_vec()),
                (true, RSV1, op::CONT, b"\"ping\"}".to_vec()),
            ],
            1002,
        ),
        (
            "corrupt deflate data",
            vec![(true, RSV1, op::TEXT, vec![0xff; 20])],
            1007,
        ),
        (
            "invalid UTF-8 once inflated",
            vec![(true, RSV1, op::TEXT, stored(b"ok \xff"))],
            1007,
        ),
    ];
    for (what, frames, code) in cases {
        let (mut ws, _) = raw_offering(s.addr, "/ws?channel=a", Some(OFFER));
        for (fin, rsv, opcode, payload) in &frames {
            ws.send_frame(*fin, *rsv, *opcode, true, payload);
        }
        let closed = ws.recv_close(TIMEOUT).map(|c| c.0);
        assert_eq!(closed, Some(code), "{what}");
    }
    // RSV2 and RSV3 stay errors with the extension on.
    for rsv in [1, 2] {
        let (mut ws, _) = raw_offering(s.addr, "/ws?channel=a", Some(OFFER));
        ws.send_frame(true, rsv, op::TEXT, true, b"{}");
        assert_eq!(ws.recv_close(TIMEOUT).map(|c| c.0), Some(1002));
    }
}

#[test]
fn without_negotiation_rsv1_is_a_protocol_error() {
    let on = Server::start(&[]);
    let off = Server::start(&["--set", "ws_deflate=false"]);
    // No offer, or an offer the server cannot honour (an 8-bit window), or the extension
    // turned off: no extension answered, and RSV1 is 1002.
    for (s, offer) in [
        (&on, None),
        (&on, Some("permessage-deflate; server_max_window_bits=8")),
        (
            &on,
            Some("permessage-deflate; server_no_context_takeover=1"),
        ),
        (&off, Some(OFFER)),
    ] {
        let (mut ws, ext) = raw_offering(s.addr, "/ws?channel=a", offer);
        assert_eq!(ext, None, "{offer:?}");
        ws.send_frame(true, RSV1, op::TEXT, true, &stored(br#"{"op":"ping"}"#));
        assert_eq!(
            ws.recv_close(TIMEOUT),
            Some((1002, "reserved bits set without an extension".into())),
            "{offer:?}"
        );
    }
    // A published message goes out plain to a connection without the extension.
    let (mut ws, _) = raw_offering(off.addr, "/ws?channel=news", Some(OFFER));
    off.wait_subscribers("news", 1);
    off.publish("news", &"long enough to be compressed ".repeat(20));
    let f = ws.read_frame(TIMEOUT).unwrap();
    assert_eq!((f.rsv, f.opcode), (0, op::TEXT));
    // The first acceptable offer wins.
    let (_ws, ext) = raw_offering(
        on.addr,
        "/ws?channel=a",
        Some("permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=12"),
    );
    assert_eq!(
        ext.as_deref(),
        Some(format!("{ANSWER}; server_max_window_bits=12").as_str())
    );
}
