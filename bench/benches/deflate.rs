//! permessage-deflate: what compressing one published message costs (once per message,
//! shared by every subscriber that negotiated the extension), and inflating one.
//!
//! - `deflate/envelope/<size>/l<level>`: the JSON envelope of a typical message (a chat
//!   line of ~100 bytes, a ~300-byte JSON object, a ~2 KB list) through
//!   [`protocol::ws::deflate::deflate`] at levels 1, 2 and 6, window 15, compressor reused
//!   (reset per message, as the engine does). The compressed sizes are printed once.
//! - `deflate/inflate/<size>`: the same, inflated with the bounded inflater.
//!
//! Run with `cargo bench -p pushedge-bench --bench deflate`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use protocol::ws::deflate::{compressor, deflate, inflate, inflater};

/// Envelopes as the engine writes them (`{"type":"data",...}`), of three sizes.
fn envelopes() -> Vec<(&'static str, Vec<u8>)> {
    let head = r#"{"type":"data","channel":"chat.lobby","seq":48213,"epoch":"k3x9ab2q","from":"ann","content":"#;
    let chat = format!(r#"{head}"see you at the standup in five"}}"#);
    let object = format!(
        r#"{head}{{"symbol":"ACME","bid":189.12,"ask":189.14,"last":189.13,"volume":1234567,"change":-0.42,"high":191.02,"low":187.55,"open":188.9,"time":"2026-01-12T14:03:22.512Z","venue":"XNAS","flags":["regular","delayed"]}}}}"#
    );
    let rows: Vec<String> = (0..24)
        .map(|i| {
            format!(
                r#"{{"id":{},"name":"player{}","score":{},"level":{},"online":{}}}"#,
                1000 + i,
                i,
                (i * 7919) % 10_000,
                i % 30,
                i % 3 == 0
            )
        })
        .collect();
    let list = format!(r#"{head}{{"leaderboard":[{}]}}}}"#, rows.join(","));
    vec![
        ("chat", chat.into_bytes()),
        ("object", object.into_bytes()),
        ("list", list.into_bytes()),
    ]
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("deflate");
    for (name, json) in envelopes() {
        for level in [1, 2, 6] {
            let mut comp = compressor(level, 15);
            let mut out = Vec::with_capacity(json.len() + 64);
            deflate(&mut comp, &json, &mut out);
            eprintln!(
                "deflate/{name}: {} bytes -> {} at level {level} ({:.0}%)",
                json.len(),
                out.len(),
                100.0 * out.len() as f64 / json.len() as f64
            );
            g.throughput(Throughput::Bytes(json.len() as u64));
            g.bench_function(format!("envelope/{name}/l{level}"), |b| {
                b.iter(|| {
                    out.clear();
                    deflate(&mut comp, black_box(&json), &mut out);
                    black_box(out.len())
                })
            });
        }
        let mut comp = compressor(1, 15);
        let mut z = Vec::new();
        deflate(&mut comp, &json, &mut z);
        let mut inf = inflater();
        let mut out = Vec::with_capacity(json.len() + 64);
        g.bench_function(format!("inflate/{name}"), |b| {
            b.iter(|| {
                out.clear();
                inflate(&mut inf, black_box(&z), 1 << 16, &mut out).unwrap();
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench
}
criterion_main!(benches);
