//! pushedge: a push edge server.
//!
//! It holds long-lived subscriber connections (WebSocket, Server-Sent Events, long-poll,
//! NDJSON and iframe streaming) and pushes every message published to a channel to all of
//! its subscribers, with per-channel sequence numbers and history so that a client that
//! reconnects resumes where it left off. See README.md for the contract and DESIGN notes
//! in each module:
//!
//! - [`server`]: startup, shared state, signals and shutdown.
//! - [`worker`]: one thread per core with its own reactor, listener, slab and timer wheel.
//! - [`conn`]: the per-connection record and state machine.
//! - [`hub`]: channels, epochs, sequence numbers, history rings, per-worker subscriber
//!   counts; [`msg`]: one message and its wire forms; [`epoch`]: stream epochs.
//! - [`store`]: the optional disk history store; [`cluster`]: sharing channels through
//!   Redis.
//! - [`timer`]: the hashed timing wheel.
//! - [`admin`], [`control`]: the admin HTTP API and the control socket.
//! - [`config`]: configuration with documented defaults; [`auth`]: subscriber tokens.

pub mod log;

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod control;
pub mod epoch;
pub mod handover;
pub mod hub;
pub mod inbox;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod msg;
pub mod peer;
pub mod presence;
pub mod reactor;
pub mod server;
pub mod shared;
pub mod store;
pub mod timer;
pub mod tls;
pub mod transport;
pub mod views;
pub mod worker;
