//! Integration test harness: the real `pushedge` binary on ephemeral loopback ports, real
//! sockets, no mocks.
//!
//! [`Server::start`] spawns the binary with `--listen 127.0.0.1:0 --admin 127.0.0.1:0
//! --control <tempdir>/pushedge.sock --workers 2` plus the test's own arguments, reads
//! stderr up to the `ready:` line (which carries the real ports), and keeps draining
//! stderr into a buffer the test can inspect ([`Server::log`]). Dropping the [`Server`]
//! kills the process.
//!
//! Environment:
//! - `PUSHEDGE_BIN`: the binary to test (default `<workspace>/target/debug/pushedge`,
//!   built with `cargo build -p pushedge` once per test run when missing or older than
//!   the engine and protocol sources).
//! - `PUSHEDGE_BACKEND`: when set, every server gets `--backend <value>`, so the whole
//!   suite can run against another reactor.
//! - `REDIS_SERVER`: the `redis-server` of the cluster tests (default: the one on `PATH`;
//!   `make deps-test` installs it).
//!
//! Running: `cargo test -p pushedge-tests` (about 26 s on 2 cores, 10 s of it the cluster
//! tests; more test threads, `-- --test-threads 16`, bring it down a lot since most tests
//! wait on short timers). `cluster::` selects the cluster tests alone.
//! Tests marked `#[ignore = "BUG: ..."]` show known server bugs: `-- --ignored` runs them.
//! The tests live in `tests/integration/`, one module per area, all in one test binary so
//! that they run in parallel.
//!
//! Clients, all on std sockets and all bounded by timeouts so that no test can hang:
//! [`Conn`] (raw HTTP: requests, heads, `Content-Length`/chunked/unframed bodies),
//! [`SseStream`], [`NdjsonStream`], [`IframeStream`], [`Ws`] (tungstenite, for well-behaved
//! WebSocket clients), [`RawWs`] (hand-made frames, for protocol errors and peers that never
//! answer), [`Ctl`] (the control socket), the admin API on [`Server`], and [`wait_until`].
//!
//! Clusters ([`redis`]): [`Redis`] (a real `redis-server` per test: stop, restart with its
//! data, wipe), [`Gate`] (a TCP relay that cuts one node off from Redis), [`node`] /
//! [`node_on`] (a pushedge node on a Redis, optionally sharing another node's subscriber
//! port), and [`Server::kill9`].

use std::time::Duration;

pub use serde_json::json;

mod ctl;
mod epochs;
mod http;
mod misc;
mod publish;
mod server;
mod streams;
mod tokens;
mod wait;
mod ws;

pub mod crowd;
pub mod redis;
pub mod tls;

pub use crowd::{Crowd, Member};
pub use ctl::{Ctl, Successor};
pub use epochs::{is_epoch, no_epoch, no_epochs_in_cursor};
pub use http::{Conn, Head, ReadError, Response};
pub use misc::{rss_kib, seqs, urlencode};
pub use publish::{publish_pipelined, PubAnswer};
pub use redis::{node, node_on, Gate, Redis, Resp, CLUSTER_UP_TIMEOUT};
pub use server::{binary, metric_value, run_binary, run_binary_with_nofile, workspace_dir, Server};
pub use streams::{IframeStream, NdjsonStream, SseBlock, SseEvent, SseStream};
pub use tokens::{jwt, token_for, unix_now};
pub use wait::{wait_for, wait_until};
pub use ws::{encode_frame, op, Frame, RawWs, Ws, WsEvent};

pub(crate) use server::lock;

/// How long the server may take to print its `ready` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Default wait for something that should happen (a message, a reply, a close).
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// How long to watch for something that should *not* happen.
pub const QUIET: Duration = Duration::from_millis(300);
