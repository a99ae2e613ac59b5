//! The overhead of `protocol::http::parse_request` over httparse alone, measured by
//! interleaving the two (so load on a shared machine hits both alike) and keeping the best
//! round of each. Criterion's separate runs are too noisy on a busy box for a few-percent
//! difference.
//!
//! `cargo run --release -p pushedge-bench --example parse_overhead`

use std::hint::black_box;
use std::time::Instant;

use protocol::http::{parse_request, Limits, Parsed, DEFAULT_MAX_HEADERS, EMPTY_HEADER};
use pushedge_bench::UPGRADE;

const ITERS: u32 = 20_000;
const ROUNDS: u32 = 300;

#[inline(never)]
fn httparse_only() {
    let mut headers = [httparse::EMPTY_HEADER; DEFAULT_MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = req.parse(black_box(UPGRADE));
    black_box((status.is_ok(), req.method, req.path, req.headers.len()));
}

#[inline(never)]
fn ours(limits: &Limits) {
    let mut headers = [EMPTY_HEADER; DEFAULT_MAX_HEADERS];
    match parse_request(black_box(UPGRADE), &mut headers, limits) {
        Ok(Parsed::Complete(req)) => {
            black_box((req.method, req.target, req.headers.len()));
        }
        other => panic!("the upgrade head must parse: {other:?}"),
    }
}

fn main() {
    let limits = Limits::default();
    let mut best = [f64::MAX; 2];
    for round in 0..ROUNDS {
        // Alternate which goes first.
        for which in [round % 2, 1 - round % 2] {
            let start = Instant::now();
            for _ in 0..ITERS {
                if which == 0 {
                    httparse_only();
                } else {
                    ours(&limits);
                }
            }
            let ns = start.elapsed().as_nanos() as f64 / f64::from(ITERS);
            let slot = &mut best[which as usize];
            *slot = slot.min(ns);
        }
    }
    println!(
        "httparse alone {:.1} ns, parse_request {:.1} ns: overhead {:+.1}%",
        best[0],
        best[1],
        (best[1] / best[0] - 1.0) * 100.0
    );
}
