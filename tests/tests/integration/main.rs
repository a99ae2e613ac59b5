//! Integration tests against the real `pushedge` binary: each test starts its own server
//! on ephemeral loopback ports (see the harness in `tests/src/lib.rs`), so they all run in
//! parallel in this one test binary.

mod abuse;
mod admin;
mod auth;
mod bad_input;
mod cli;
mod cluster;
mod control;
mod deflate;
mod epochs;
mod faults;
mod handover;
mod handover_cluster;
mod http11;
mod jwt;
mod liveness;
mod logs;
mod ops;
mod presence;
mod resume;
mod tls;
mod transports;
mod ws_ops;
