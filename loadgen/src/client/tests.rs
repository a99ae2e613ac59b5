//! The transports fed by hand-made server bytes, in pieces of every size.

use std::borrow::Cow;

use protocol::http;
use protocol::ws::{
    accept_key, encode_close, encode_frame, CloseCode, Decoder, DecoderConfig, Event as WsEvent,
    OpCode, Role,
};

use super::*;

const REQ: Request<'static> = Request {
    host: "127.0.0.1:8100",
    target: "/x?channel=a",
    connect: "",
};

/// Feeds `input` in pieces of `step` bytes; collects events as strings.
fn feed_all(
    c: &mut Client,
    input: &[u8],
    step: usize,
    out: &mut Vec<u8>,
) -> (Vec<String>, Result<(), Failure>) {
    feed_req(c, REQ, input, step, out)
}

fn data_json(seq: u64, content: &str) -> String {
    serde_json::json!({"type":"data","channel":"a","seq":seq,"content":content}).to_string()
}

#[test]
fn websocket_handshake_frames_ping_and_close() {
    for step in [1, 3, 7, 1000] {
        let mut out = Vec::new();
        let mut c = Client::start(Transport::Ws, Format::Pushedge, REQ, [9; 16], &mut out);
        let req = String::from_utf8(out.clone()).unwrap();
        assert!(req.starts_with("GET /x?channel=a HTTP/1.1\r\n"), "{req}");
        let key_line = req
            .lines()
            .find(|l| l.starts_with("Sec-WebSocket-Key: "))
            .unwrap();
        let key = key_line.trim_start_matches("Sec-WebSocket-Key: ");
        let mut input = Vec::new();
        protocol::ws::handshake::write_accept_response(&mut input, &accept_key(key.as_bytes()));
        encode_frame(
            &mut input,
            true,
            OpCode::Text,
            data_json(1, "{\"t\":5,\"i\":0}").as_bytes(),
        );
        encode_frame(&mut input, true, OpCode::Ping, b"hb");
        encode_frame(&mut input, true, OpCode::Text, data_json(2, "b").as_bytes());
        encode_frame(&mut input, true, OpCode::Text, b"{\"type\":\"noop\"}");
        encode_frame(&mut input, true, OpCode::Text, b"not json");
        out.clear();
        let (events, r) = feed_all(&mut c, &input, step, &mut out);
        assert_eq!(r, Ok(()));
        assert!(c.is_established());
        assert_eq!(
            events,
            vec!["up", "Some(1):{\"t\":5,\"i\":0}", "Some(2):b", "foreign"],
            "step {step}"
        );
        // The pong is masked and carries the ping's payload.
        let mut d = Decoder::new();
        let cfg = DecoderConfig {
            role: Role::Server,
            max_message: 1024,
            skip_oversized: false,
        };
        let r = d.decode(&mut out, &cfg).unwrap();
        assert_eq!(r.event, Some(WsEvent::Pong(Cow::Borrowed(&b"hb"[..]))));

        let mut close = Vec::new();
        encode_close(&mut close, CloseCode::GOING_AWAY, "bye", None);
        out.clear();
        let (_, r) = feed_all(&mut c, &close, step, &mut out);
        assert_eq!(r, Err(Failure::WsClose(1001)));
        assert_eq!(Failure::WsClose(1001).reason(), "ws_close_1001");
        assert!(!out.is_empty(), "close is echoed");
    }
}

#[test]
fn websocket_rejections() {
    let mut out = Vec::new();
    let mut c = Client::start(Transport::Ws, Format::Pushedge, REQ, [1; 16], &mut out);
    let (_, r) = feed_all(
        &mut c,
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
        5,
        &mut out,
    );
    assert_eq!(r, Err(Failure::Status(503)));
    assert_eq!(Failure::Status(503).reason(), "status_503");

    let mut c = Client::start(Transport::Ws, Format::Pushedge, REQ, [1; 16], &mut out);
    let (_, r) = feed_all(
        &mut c,
        b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n",
        100,
        &mut out,
    );
    assert!(matches!(r, Err(Failure::BadResponse(_))));

    let mut c = Client::start(Transport::Ws, Format::Pushedge, REQ, [1; 16], &mut out);
    let (_, r) = feed_all(&mut c, &[b'x'; MAX_HEAD_BYTES + 2], 4096, &mut out);
    assert!(r.is_err());
}

#[test]
fn sse_events_plain_and_chunked() {
    let mut body = String::from("retry: 2000\n\n: ping\n\n");
    body += &format!("id: a:1\ndata: {}\n\n", data_json(1, "x"));
    body += &format!("id: a:2\r\ndata: {}\r\n\r\n", data_json(2, "line1\nline2"));
    body += ": ping\n\n";
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n";
    for step in [1, 2, 5, 64, 4096] {
        let mut out = Vec::new();
        let mut c = Client::start(Transport::Sse, Format::Pushedge, REQ, [0; 16], &mut out);
        let req = String::from_utf8(out.clone()).unwrap();
        assert!(req.contains("\r\nAccept: text/event-stream\r\n"), "{req}");
        let input = format!("{head}{body}");
        let (events, r) = feed_all(&mut c, input.as_bytes(), step, &mut out);
        assert_eq!(r, Ok(()));
        assert_eq!(events, vec!["up", "Some(1):x", "Some(2):line1\nline2"]);
    }
    // nchan-style: chunked, raw bodies, a multi-line data event.
    let mut chunked = Vec::new();
    for piece in [
        ": hi\n\n",
        "id: 1:0\ndata: {\"t\":1,",
        "\"i\":0}\n\ndata: a\ndata: b\n\n",
    ] {
        http::write_chunk(&mut chunked, piece.as_bytes());
    }
    let mut input =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
            .to_vec();
    input.extend_from_slice(&chunked);
    for step in [1, 3, 1000] {
        let mut out = Vec::new();
        let mut c = Client::start(Transport::Sse, Format::Raw, REQ, [0; 16], &mut out);
        let (events, r) = feed_all(&mut c, &input, step, &mut out);
        assert_eq!(r, Ok(()));
        assert_eq!(events, vec!["up", "None:{\"t\":1,\"i\":0}", "None:a\nb"]);
        let (_, r) = feed_all(&mut c, http::LAST_CHUNK, step, &mut out);
        assert_eq!(r, Err(Failure::Ended));
    }
}

#[test]
fn sse_refused() {
    let mut out = Vec::new();
    let mut c = Client::start(Transport::Sse, Format::Pushedge, REQ, [0; 16], &mut out);
    let (events, r) = feed_all(
        &mut c,
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\nno",
        7,
        &mut out,
    );
    assert!(events.is_empty());
    assert_eq!(r, Err(Failure::Status(400)));
}

#[test]
fn stream_lines_and_channel_close() {
    let mut body = Vec::new();
    http::write_chunk(&mut body, format!("{}\n", data_json(7, "p")).as_bytes());
    http::write_chunk(
        &mut body,
        b"{\"type\":\"noop\"}\n{\"type\":\"gap\",\"channel\":\"a\",\"from\":1,\"to\":3}\n",
    );
    http::write_chunk(&mut body, b"{\"type\":\"close\",\"channel\":\"a\"}\n");
    let mut input = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    input.extend_from_slice(&body);
    for step in [1, 9, 1000] {
        let mut out = Vec::new();
        let mut c = Client::start(Transport::Stream, Format::Pushedge, REQ, [0; 16], &mut out);
        let (events, r) = feed_all(&mut c, &input, step, &mut out);
        assert_eq!(events, vec!["up", "Some(7):p", "gap 1-3"]);
        assert_eq!(r, Err(Failure::ChannelClosed));
    }
}

#[test]
fn long_poll_cycle() {
    fn answer(items: &str) -> Vec<u8> {
        let mut v = Vec::new();
        http::write_response(
            &mut v,
            200,
            &[("Content-Type", "application/json")],
            items.as_bytes(),
            true,
        );
        v
    }
    for step in [1, 4, 4096] {
        let mut out = Vec::new();
        let mut c = Client::start(Transport::Poll, Format::Pushedge, REQ, [0; 16], &mut out);
        assert!(String::from_utf8_lossy(&out).starts_with("GET /x?channel=a HTTP/1.1\r\n"));
        out.clear();
        let (events, r) = feed_all(
            &mut c,
            &answer("[{\"type\":\"next_seq\",\"channel\":\"a\",\"seq\":5}]"),
            step,
            &mut out,
        );
        assert_eq!(r, Ok(()));
        assert_eq!(events, vec!["up"]);
        assert!(c.is_established());
        assert!(String::from_utf8_lossy(&out).starts_with("GET /x?channel=a&seq=5 HTTP/1.1\r\n"));
        out.clear();
        let two = format!("[{},{}]", data_json(5, "a"), data_json(6, "b"));
        let mut input = answer(&two);
        input.extend_from_slice(&answer("[{\"type\":\"noop\"}]"));
        let (events, r) = feed_all(&mut c, &input, step, &mut out);
        assert_eq!(r, Ok(()));
        assert_eq!(events, vec!["Some(5):a", "Some(6):b"]);
        let reqs = String::from_utf8_lossy(&out).to_string();
        assert_eq!(
            reqs.matches("GET /x?channel=a&seq=7 HTTP/1.1\r\n").count(),
            2,
            "{reqs}"
        );
    }
}

#[test]
fn long_poll_connection_close_ends() {
    let mut out = Vec::new();
    let mut c = Client::start(Transport::Poll, Format::Pushedge, REQ, [0; 16], &mut out);
    let mut v = Vec::new();
    http::write_response(
        &mut v,
        200,
        &[],
        b"[{\"type\":\"next_seq\",\"seq\":1}]",
        false,
    );
    let (events, r) = feed_all(&mut c, &v, 1000, &mut out);
    assert_eq!(events, vec!["up"]);
    assert_eq!(r, Err(Failure::Ended));
}

/// A Socket.IO client past its 101, with the request it sent checked; `input` starts
/// with the 101 answer.
fn socketio_client(
    connect: &'static str,
    out: &mut Vec<u8>,
) -> (Client, Request<'static>, Vec<u8>) {
    let req = Request {
        host: "127.0.0.1:8100",
        target: "/socket.io/?EIO=4&transport=websocket",
        connect,
    };
    let c = Client::start(Transport::Socketio, Format::Pushedge, req, [3; 16], out);
    let head = String::from_utf8(out.clone()).unwrap();
    assert!(
        head.starts_with("GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nUpgrade: websocket\r\n"), "{head}");
    let key = head
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .unwrap();
    let mut input = Vec::new();
    protocol::ws::handshake::write_accept_response(&mut input, &accept_key(key.as_bytes()));
    out.clear();
    (c, req, input)
}

/// Feeds `input` in pieces of `step` bytes with `req`; collects events as strings.
fn feed_req(
    c: &mut Client,
    req: Request<'_>,
    input: &[u8],
    step: usize,
    out: &mut Vec<u8>,
) -> (Vec<String>, Result<(), Failure>) {
    let mut events = Vec::new();
    for piece in input.chunks(step.max(1)) {
        let mut piece = piece.to_vec();
        let r = c.feed(&mut piece, req, out, &mut |e| {
            events.push(match e {
                Event::Established => "up".to_string(),
                Event::Data { seq, content } => {
                    format!("{seq:?}:{}", String::from_utf8_lossy(content))
                }
                Event::Gap { from, to } => format!("gap {from}-{to}"),
                Event::Foreign => "foreign".to_string(),
            })
        });
        if r.is_err() {
            return (events, r);
        }
    }
    (events, Ok(()))
}

/// The client's frames in `out`: (opcode, unmasked payload as text).
fn client_frames(out: &mut [u8]) -> Vec<String> {
    let cfg = DecoderConfig {
        role: Role::Server,
        max_message: 1 << 20,
        skip_oversized: false,
    };
    let mut d = Decoder::new();
    let mut pos = 0;
    let mut frames = Vec::new();
    while pos < out.len() {
        let r = d.decode(&mut out[pos..], &cfg).unwrap();
        pos += r.consumed;
        match r.event {
            Some(WsEvent::Message { data, .. }) => {
                frames.push(String::from_utf8(data.into_owned()).unwrap())
            }
            Some(WsEvent::Close(_)) => frames.push("<close>".into()),
            Some(e) => frames.push(format!("{e:?}")),
            None => {}
        }
    }
    frames
}

#[test]
fn socketio_handshake_connect_ping_and_events() {
    let sio_text =
        |input: &mut Vec<u8>, s: &str| encode_frame(input, true, OpCode::Text, s.as_bytes());
    for step in [1, 2, 5, 13, 4096] {
        let mut out = Vec::new();
        let (mut c, req, mut input) = socketio_client(r#"40{"channels":["bench"]}"#, &mut out);
        sio_text(
            &mut input,
            r#"0{"sid":"abc","upgrades":[],"pingInterval":2000,"pingTimeout":1000,"maxPayload":1000000}"#,
        );
        let (events, r) = feed_req(&mut c, req, &input, step, &mut out);
        assert_eq!(r, Ok(()));
        assert!(events.is_empty(), "{events:?}");
        assert!(!c.is_established(), "not before the CONNECT answer");
        assert_eq!(client_frames(&mut out), vec![r#"40{"channels":["bench"]}"#]);
        out.clear();

        let mut input = Vec::new();
        sio_text(&mut input, r#"40{"sid":"s1"}"#);
        sio_text(&mut input, "2");
        sio_text(&mut input, r#"42["message","{\"t\":5,\"i\":0}"]"#);
        sio_text(&mut input, r#"42["message","b","9@ep/bench"]"#);
        // Another namespace's event, another event, a binary event and its attachment.
        sio_text(&mut input, r#"42/other,["message","x"]"#);
        sio_text(&mut input, r#"42["news","x"]"#);
        sio_text(
            &mut input,
            r#"451-["message",{"_placeholder":true,"num":0}]"#,
        );
        encode_frame(&mut input, true, OpCode::Binary, b"\x01\x02");
        // An event asking for an ack, WebSocket ping, Engine.IO noop, pushedge's gap.
        sio_text(&mut input, r#"4217["message","c"]"#);
        encode_frame(&mut input, true, OpCode::Ping, b"hb");
        sio_text(&mut input, "6");
        sio_text(&mut input, r#"42["gap",{"room":"bench","from":3,"to":4}]"#);
        sio_text(&mut input, "2");
        let (events, r) = feed_req(&mut c, req, &input, step, &mut out);
        assert_eq!(r, Ok(()));
        assert!(c.is_established());
        assert_eq!(
            events,
            vec![
                "up",
                "None:{\"t\":5,\"i\":0}",
                "Some(9):b",
                "foreign",
                "foreign",
                "foreign",
                "None:c",
                "gap 3-4"
            ],
            "step {step}"
        );
        assert_eq!(
            client_frames(&mut out),
            vec!["3", "4317[]", "Pong([104, 98])", "3"]
        );
        out.clear();

        // Engine.IO CLOSE ends it.
        let mut input = Vec::new();
        sio_text(&mut input, "1");
        let (_, r) = feed_req(&mut c, req, &input, step, &mut out);
        assert_eq!(r, Err(Failure::EioClose));
        assert_eq!(Failure::EioClose.reason(), "eio_close");
    }
}

#[test]
fn socketio_namespaces_errors_and_closes() {
    let sio_text =
        |input: &mut Vec<u8>, s: &str| encode_frame(input, true, OpCode::Text, s.as_bytes());
    let open = r#"0{"sid":"abc","pingInterval":25000,"pingTimeout":20000}"#;
    // A namespace: packets carry it; the main namespace's are not ours.
    let mut out = Vec::new();
    let (mut c, req, mut input) = socketio_client(r#"40/chat1,{"channels":["lobby"]}"#, &mut out);
    sio_text(&mut input, open);
    sio_text(&mut input, r#"40{"sid":"main"}"#);
    sio_text(&mut input, r#"42["message","main"]"#);
    sio_text(&mut input, r#"40/chat1,{"sid":"s2"}"#);
    sio_text(&mut input, r#"42/chat1,["message","hé \"q\""]"#);
    sio_text(&mut input, r#"42/chat1,5["message","d"]"#);
    let (events, r) = feed_req(&mut c, req, &input, 3, &mut out);
    assert_eq!(r, Ok(()));
    assert_eq!(events, vec!["foreign", "up", "None:hé \"q\"", "None:d"]);
    assert_eq!(
        client_frames(&mut out),
        vec![r#"40/chat1,{"channels":["lobby"]}"#, "43/chat1,5[]"]
    );
    let mut input = Vec::new();
    sio_text(&mut input, "41/chat1,");
    let (_, r) = feed_req(&mut c, req, &input, 1, &mut out);
    assert_eq!(r, Err(Failure::SioDisconnect));
    assert_eq!(Failure::SioDisconnect.reason(), "sio_disconnect");

    // CONNECT_ERROR fails the attempt, with the code when there is one.
    for (err, reason) in [
        (
            r#"44{"message":"forbidden","data":{"code":403}}"#,
            "connect_error_403",
        ),
        (r#"44{"message":"Invalid namespace"}"#, "connect_error"),
    ] {
        let mut out = Vec::new();
        let (mut c, req, mut input) = socketio_client(r#"40{"channels":["x"]}"#, &mut out);
        sio_text(&mut input, open);
        sio_text(&mut input, err);
        let (events, r) = feed_req(&mut c, req, &input, 7, &mut out);
        assert!(events.is_empty());
        assert_eq!(r.map_err(|f| f.reason()), Err(reason.to_string()));
        assert!(!c.is_established());
    }

    // pushedge's close event, a WebSocket close, and garbage.
    let mut out = Vec::new();
    let (mut c, req, mut input) = socketio_client(r#"40{"channels":["x"]}"#, &mut out);
    sio_text(&mut input, open);
    sio_text(&mut input, r#"40{"sid":"s"}"#);
    sio_text(&mut input, r#"42["close",{"room":"x"}]"#);
    let (events, r) = feed_req(&mut c, req, &input, 1000, &mut out);
    assert_eq!(events, vec!["up"]);
    assert_eq!(r, Err(Failure::ChannelClosed));

    let mut out = Vec::new();
    let (mut c, req, mut input) = socketio_client(r#"40{"channels":["x"]}"#, &mut out);
    sio_text(&mut input, open);
    encode_close(&mut input, CloseCode::GOING_AWAY, "bye", None);
    let (_, r) = feed_req(&mut c, req, &input, 1000, &mut out);
    assert_eq!(r, Err(Failure::WsClose(1001)));
    assert_eq!(client_frames(&mut out).last().unwrap(), "<close>");

    for bad in ["", "9", "0notjson", "4x"] {
        let mut out = Vec::new();
        let (mut c, req, mut input) = socketio_client(r#"40{"channels":["x"]}"#, &mut out);
        sio_text(&mut input, bad);
        let (_, r) = feed_req(&mut c, req, &input, 1000, &mut out);
        assert!(matches!(r, Err(Failure::BadResponse(_))), "{bad:?}: {r:?}");
    }
}
