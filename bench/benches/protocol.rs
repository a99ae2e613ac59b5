//! Benchmarks of the protocol codecs.
//!
//! - `http`: a browser's WebSocket upgrade head through `parse_request`, against httparse
//!   alone on the same bytes with the same 32-entry header array (the difference is the
//!   cost of our limits and method mapping), and `check_request` on the parsed head.
//! - `ws`: decoding a masked 64-byte text frame; unmasking 4 KiB word-wise and byte-wise.
//! - `wire`: one data message, from `Message` to the bytes of each wire form.
//!
//! Run with `make bench`; the whole run takes about a minute.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use protocol::http::{parse_request, Limits, Parsed, DEFAULT_MAX_HEADERS, EMPTY_HEADER};
use protocol::message::{
    write_iframe_chunk, write_json, write_jsonp, write_ndjson_chunk, write_sse_event,
    write_ws_frame, JsonStyle, Message,
};
use protocol::ws::handshake::check_request;
use protocol::ws::mask::{apply_mask, apply_mask_bytewise};
use protocol::ws::{encode_masked_frame, Decoder, DecoderConfig, Event, OpCode, Role};
use pushedge_bench::UPGRADE;

fn http(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("http");
    g.throughput(Throughput::Bytes(UPGRADE.len() as u64));
    g.bench_function("httparse_only", |b| {
        b.iter(|| {
            let mut headers = [httparse::EMPTY_HEADER; DEFAULT_MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            let status = req.parse(black_box(UPGRADE));
            black_box((status.is_ok(), req.method, req.path, req.headers.len()));
        })
    });
    g.bench_function("parse_request", |b| {
        b.iter(|| {
            let mut headers = [EMPTY_HEADER; DEFAULT_MAX_HEADERS];
            let r = parse_request(black_box(UPGRADE), &mut headers, &limits);
            match r {
                Ok(Parsed::Complete(req)) => {
                    black_box((req.method, req.target, req.headers.len()));
                }
                other => panic!("the upgrade head must parse: {other:?}"),
            }
        })
    });
    let mut headers = [EMPTY_HEADER; DEFAULT_MAX_HEADERS];
    let req = match parse_request(UPGRADE, &mut headers, &limits) {
        Ok(Parsed::Complete(req)) => req,
        other => panic!("the upgrade head must parse: {other:?}"),
    };
    assert!(check_request(&req).is_ok());
    g.bench_function("check_request", |b| {
        b.iter(|| black_box(check_request(black_box(&req))))
    });
    g.finish();
}

fn ws(c: &mut Criterion) {
    let mut g = c.benchmark_group("ws");

    let payload: Vec<u8> =
        b"{\"type\":\"data\",\"channel\":\"news\",\"seq\":12,\"content\":\"hi\"}  "
            .iter()
            .copied()
            .cycle()
            .take(64)
            .collect();
    let mut frame = Vec::new();
    encode_masked_frame(
        &mut frame,
        true,
        OpCode::Text,
        &payload,
        [0x37, 0xfa, 0x21, 0x3d],
    );
    let cfg = DecoderConfig {
        role: Role::Server,
        max_message: 1 << 20,
        skip_oversized: false,
    };
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("decode_masked_text_64", |b| {
        let mut d = Decoder::new();
        b.iter_batched_ref(
            || frame.clone(),
            |buf| {
                let r = d.decode(buf, &cfg).expect("a valid frame");
                match r.event {
                    Some(Event::Message { data, .. }) => data.len() + r.consumed,
                    other => panic!("one message expected, got {other:?}"),
                }
            },
            BatchSize::SmallInput,
        )
    });

    let mut buf: Vec<u8> = (0..4096u32).map(|i| (i * 31) as u8).collect();
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("apply_mask_4k", |b| {
        b.iter(|| apply_mask(black_box(&mut buf), black_box(mask), 0))
    });
    g.bench_function("apply_mask_bytewise_4k", |b| {
        b.iter(|| apply_mask_bytewise(black_box(&mut buf), black_box(mask), 0))
    });
    g.finish();
}

fn wire(c: &mut Criterion) {
    let msg = Message::Data {
        channel: "news",
        seq: 1_234_567,
        epoch: "k3x9ab2q",
        from: "",
        event: "",
        content: "{\"user\":\"ann\",\"text\":\"Grüße — see <b>this</b> & that\",\"ts\":1718000000}",
        json: false,
    };
    let mut g = c.benchmark_group("wire");
    let mut out = Vec::with_capacity(1024);
    let mut json = Vec::with_capacity(512);

    g.bench_function("json_plain", |b| {
        b.iter(|| {
            out.clear();
            write_json(&mut out, black_box(&msg), JsonStyle::Plain);
            black_box(out.len())
        })
    });
    g.bench_function("json_script", |b| {
        b.iter(|| {
            out.clear();
            write_json(&mut out, black_box(&msg), JsonStyle::Script);
            black_box(out.len())
        })
    });
    g.bench_function("ws_frame", |b| {
        b.iter(|| {
            out.clear();
            json.clear();
            write_json(&mut json, black_box(&msg), JsonStyle::Plain);
            write_ws_frame(&mut out, &json);
            black_box(out.len())
        })
    });
    g.bench_function("sse_event", |b| {
        b.iter(|| {
            out.clear();
            json.clear();
            write_json(&mut json, black_box(&msg), JsonStyle::Plain);
            write_sse_event(&mut out, Some("news:1234567"), &json);
            black_box(out.len())
        })
    });
    g.bench_function("ndjson_chunk", |b| {
        b.iter(|| {
            out.clear();
            json.clear();
            write_json(&mut json, black_box(&msg), JsonStyle::Plain);
            write_ndjson_chunk(&mut out, &json);
            black_box(out.len())
        })
    });
    g.bench_function("iframe_chunk", |b| {
        b.iter(|| {
            out.clear();
            json.clear();
            write_json(&mut json, black_box(&msg), JsonStyle::Script);
            write_iframe_chunk(&mut out, "onMessage", &json);
            black_box(out.len())
        })
    });
    g.bench_function("jsonp", |b| {
        b.iter(|| {
            out.clear();
            write_jsonp(
                &mut out,
                "jQuery1234_5678",
                std::slice::from_ref(black_box(&msg)),
            );
            black_box(out.len())
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = http, ws, wire
}
criterion_main!(benches);
