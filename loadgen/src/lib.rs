//! `loadgen`: the load generator for pushedge (and, through URL templates and
//! `--format raw`, for nchan).
//!
//! # Usage
//!
//! ```text
//! loadgen hold   --url URL --conns N [--rate R] [--procs P] [--sources A-B] [--duration S]
//!                [--channels C] [--transport ws|sse|stream|poll|socketio] [--namespace NSP]
//!                [--format pushedge|raw] [--timeout S] [--max-pending K] [--json]
//! loadgen fanout --url URL --publish URL --conns N [--channels C] [--messages M] [--rate R]
//!                [--publishers K] [--pipeline D] [--max-rows N]
//!                [--size BYTES] [--connect-rate R] [--drain S] [--settle-ms MS] [...]
//! loadgen storm  --url URL --conns N --duration S [--churn R] [--rate R]
//!                [--backoff-ms MS] [--backoff-cap-ms MS] [...]
//! loadgen handshake --url URL --conns N [--duration S] [--rate R] [...]
//!
//! TLS, with any of them: a wss:// or https:// URL, or --tls; then
//!                [--cacert FILE | --insecure] [--sni NAME] [--no-resume] [--tls-version 1.2|1.3]
//! ```
//!
//! - **hold** opens `N` connections (at most `R` new ones per second, all processes
//!   together), holds them for the duration once every connection has been tried, and
//!   reports connects, failures by reason, drops by the server, the achieved connect rate
//!   and connect-latency percentiles.
//! - **fanout** holds `N` subscribers over `C` channels, waits until all are connected,
//!   then publishes `M` messages to every channel (`R` publishes per second; publish `p`
//!   is message `p / C` to channel `p % C`) through a keep-alive HTTP client, and reports
//!   publish-to-delivery latency, per-publish first/last arrival and receivers, deliveries
//!   per second, and every message lost, duplicated or out of order per subscriber.
//!   By default one connection carries one request at a time, so each publish is
//!   measured alone; `--publishers K` spreads them over K keep-alive connections and
//!   `--pipeline D` keeps up to D requests in flight on each (HTTP/1.1 pipelining), which
//!   with `--rate 0` measures the publish rate the server sustains (`publishes_per_s`).
//!   With one connection messages reach subscribers in order; with several they may be
//!   sequenced out of send order (counted as out of order, not lost).
//! - **storm** keeps `N` open while closing and reopening `--churn` per second; when the
//!   server drops connections (a restart), they reconnect with full-jitter exponential
//!   backoff, and the report says how long until all were back.
//! - **handshake** keeps `N` connections in their handshake at once for the duration:
//!   each is opened, subscribed (the 101 of the WebSocket upgrade, the 200 head of SSE,
//!   ...; with TLS, after the TLS handshake), and closed at once (a WebSocket close frame,
//!   a TLS close_notify), and the next one is opened. It reports handshakes per second
//!   (`handshake.per_s`: subscriptions established over the run) and their latency
//!   (connect start to subscribed); with TLS, how many were full and how many resumed. A
//!   failed attempt is retried after a full-jitter backoff (`--backoff-ms`).
//!
//! TLS (`wss://`, `https://`, or `--tls` under a ws:// / http:// URL) works under every
//! transport, with rustls ([`tls`]): `--cacert FILE` trusts the CA certificates of a PEM
//! file and checks the server's certificate for the server name; `--insecure` accepts any
//! certificate (the handshake signature is still checked), for benchmarks. The server
//! name (SNI, and the name checked) is the URL's host unless `--sni NAME` (an IP literal
//! is checked against the certificate's IP addresses and sends no SNI); the `Host` header
//! stays the URL's. ALPN offers `http/1.1`. Each child process keeps one session store
//! for all its connections, so reconnects (storm churn and drops, every handshake of
//! handshake mode after the first ones) resume their sessions; `--no-resume` makes every
//! handshake full. `--tls-version` offers one version only (default: 1.2 and 1.3). TLS
//! failures are counted by reason: `tls_cert_unknown_issuer`, `tls_cert_not_valid_for_name`,
//! `tls_cert_expired`, ... (the server's certificate did not verify), `tls_alert_<name>`
//! (the server sent an alert), `tls_bad_message` (not TLS), ...; a child describes each
//! reason once on stderr. The publisher (`--publish`) speaks plain HTTP.
//!
//! URLs are loopback only (`127.0.0.0/8`, `::1`, `localhost`, or a name resolving to one of
//! them), and so are `--sources`, unless `--allow-remote` says otherwise: then any host
//! (a name is resolved once, to its first IPv4 address, else its first address), and one
//! warning line on stderr, `loading a remote target: HOST; make sure you are allowed to`.
//! `{c}` in a URL is replaced
//! by the channel name (`ch0`, `ch1`, ...); a URL without it gets `channel=NAME` appended,
//! and a URL naming a channel itself (`channel=`, `cname=`, `id=`) fixes the only channel.
//! The transport comes from the URL (`ws://`, or an http path ending in `/sse`, `/stream`,
//! `/poll`; a path ending in `/socket.io/` is Socket.IO) or `--transport`. nchan: `--url 'ws://127.0.0.1:8080/sub?id={c}'`
//! (or `http://...` with `--transport sse`), `--publish 'http://127.0.0.1:8080/pub?id={c}'`,
//! `--format raw`: messages are the published bodies, loss and order are counted with the
//! `i` field of the content instead of `seq`, and only the publish reply's status matters.
//!
//! Socket.IO (`--transport socketio`, Socket.IO v4 over WebSocket, Engine.IO v4):
//! `--url 'ws://127.0.0.1:8100/socket.io/'` (`http://` works too; `EIO=4&transport=websocket`
//! is added to the query when missing, nothing else: `{c}` is still replaced, and a
//! `token=` stays). Each connection sends, once Engine.IO is open, the CONNECT of
//! `--namespace` (default `/`, the main one) with its channel as the one room of its auth:
//! `40{"channels":["ch0"]}`, `40/chat1,{"channels":["ch0"]}`; it is established when the
//! CONNECT is answered (a CONNECT_ERROR fails it: `connect_error_N`, N its `data.code`).
//! Engine.IO pings are answered. Messages are the `message` events of the namespace, the
//! content their first argument (the published text); there is no seq (with pushedge's
//! connection state recovery, the recovery offset `SEQ@...` gives it). The publish URL
//! names pushedge's channel: room `R` of `/` is channel `R` (main prefix ""), of `/chat1`
//! channel `chat1.R` (`--publish 'http://127.0.0.1:8000/pub?channel=chat1.{c}'`).
//!
//! Message content: `{"t":<unix ns at send>,"i":<message index>,"p":"xxx"}` padded to
//! `--size` bytes ([`payload`]).
//!
//! Connections are spread over `--procs` child processes (default: enough for at most
//! ~19,000 sockets each, under the 20,000 open files a process may have) and over the
//! `--sources` addresses (each socket is bound to one before it connects, with
//! `IP_BIND_ADDRESS_NO_PORT`, so each source gives the whole ephemeral port range). The
//! children are this binary re-executed as `loadgen child`; they report over a pipe as
//! JSON lines ([`wire`]), their final report being their [`counters::Counters`] (which
//! the coordinator sums), histograms as base64 HdrHistogram V2 ([`hist`]). loadgen cannot
//! raise system limits; it warns when the ephemeral port range is too small for the
//! connections per source (`sysctl -w net.ipv4.ip_local_port_range="1024 65000"`), and
//! already past half of it: `connect()` tries ports of one parity first, so beyond half
//! the range each connect scans the used half and gets slow enough (~0.4 ms here) to
//! stall the child's event loop and show as a connect-latency tail of 100-500 ms.
//!
//! With `--json`, loadgen also writes one line on stderr at every phase change, for
//! scripts that measure the server at a given point of the run (bench/):
//! `loadgen: phase NAME elapsed_s=S open=N failed=F dropped=D`, NAME being `holding`,
//! `settling`, `publishing`, `draining` or `stopping` (every connection has been tried
//! when `holding` or `settling` begins).
//!
//! Every run stops by itself (durations are capped at one hour, and so is the whole run),
//! and SIGINT / SIGTERM stop it early with the partial results reported. A progress bar is
//! drawn on stderr when it is a terminal.
//!
//! # JSON report (`--json`), schema `loadgen/1`
//!
//! One object on stdout. Times are microseconds (`*_us`) or seconds (`*_s`). A
//! latency summary (`Summary`) is `{"count","min","mean","p50","p90","p99","p999","max"}`
//! (all 0 when there are no samples). Fields are only ever added within one schema
//! version.
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `schema` | string | `"loadgen/1"` |
//! | `mode` | string | `hold`, `fanout`, `storm`, `handshake` |
//! | `url`, `publish_url` | string, string or null | as given |
//! | `transport`, `format` | string | `ws`/`sse`/`stream`/`poll`/`socketio`; `pushedge`/`raw` |
//! | `namespace` | string | Socket.IO only: the namespace (absent for the other transports) |
//! | `conns`, `channels`, `procs`, `sources` | int | the run's shape (`sources` 0: kernel's choice) |
//! | `interrupted` | bool | stopped by SIGINT/SIGTERM: the figures are partial |
//! | `capped` | bool | stopped by the one-hour hard cap |
//! | `elapsed_s` | float | whole run |
//! | `hold_s` | float | from "all connections tried" to the stop |
//! | `warnings` | array of strings | preflight and run warnings |
//! | `connect.attempts` | int | connect attempts (reconnects included) |
//! | `connect.established` | int | subscriptions established (101, 200 head, first poll answer, Socket.IO CONNECT answer) |
//! | `connect.failed` / `connect.failed_by_reason` | int / {reason: int} | failed attempts; reasons: `refused`, `timeout`, `reset`, `fd_limit`, `no_ports`, `unreachable`, `no_memory`, `closed` (EOF in the handshake), `status_NNN`, `bad_response`, `too_big`, `io_error`, `connect_error` / `connect_error_NNN` (Socket.IO CONNECT_ERROR, with its `data.code`), ... |
//! | `connect.rate_per_s` | float | first attempts established / (last such - first attempt) |
//! | `connect.phase_s` | float | that interval |
//! | `connect.latency_us` | Summary | connect start to subscription established |
//! | `drops.dropped` / `drops.by_reason` | int / {reason: int} | established connections the server ended: `eof`, `reset`, `ws_close_NNNN`, `channel_closed`, `error_NNN`, `ended`, `protocol_error`, `sio_disconnect` (Socket.IO DISCONNECT), `eio_close` (Engine.IO CLOSE), ... |
//! | `drops.open_at_end` | int | open when the run stopped |
//! | `fanout` | object or null | fanout only: |
//! | `fanout.messages`, `.size`, `.publish_rate` | int, int, float | as given |
//! | `fanout.publishes_total` | int | messages x channels |
//! | `fanout.published` / `.publish_failed` | int | 2xx replies / sent without a 2xx reply |
//! | `fanout.publish_reply_us` | Summary | request to reply |
//! | `fanout.expected` | int | deliveries due to subscribers open at the end |
//! | `fanout.delivered` | int | first copies of our messages received (all subscribers) |
//! | `fanout.deliveries_per_s` | float | delivered / (last arrival - first publish) |
//! | `fanout.latency_us` | Summary | publish send time to arrival, first copies |
//! | `fanout.lost` | int | expected and never received, on subscribers open at the end |
//! | `fanout.duplicated` | int | extra copies |
//! | `fanout.out_of_order` | int | arrivals after a later message |
//! | `fanout.unexpected` | int | arrivals of messages whose publish failed or was never sent |
//! | `fanout.seq_errors` | int | pushedge: `seq - i` changed on a connection |
//! | `fanout.gaps`, `.foreign` | int | pushedge `gap` messages; messages not ours |
//! | `fanout.lost_on_dropped` | int | missing on subscribers the server dropped |
//! | `fanout.complete_subscribers` / `.incomplete_subscribers` | int | open subscribers with all / not all messages |
//! | `fanout.publishes` | array of objects | per publish sent (the first `--max-rows`): `i`, `channel`, `status` (0: no reply), `seq` (pushedge, else null), `reply_us`, `receivers` (first copies), `missing` (open subscribers that never got it), `duplicates` (extra copies), `out_of_order` (subscribers that got it after a later message), `first_us`, `last_us` (arrival after the send time; null without receivers) |
//! | `fanout.publishes_omitted` | int | rows left out by `--max-rows` |
//! | `fanout.publishers`, `.pipeline` | int, int | publisher connections, requests in flight on each |
//! | `fanout.publish_phase_s` | float | first request to last reply |
//! | `fanout.publishes_per_s` | float | 2xx replies / `publish_phase_s` |
//! | `fanout.first_arrival_us`, `.last_arrival_us` | Summary | over the publishes with receivers: each one's first / last arrival after its send time (`last_arrival_us.p50`: the median time for a publish to reach all its subscribers) |
//! | `storm` | object or null | storm only: |
//! | `storm.churn_per_s`, `.churn_closed`, `.reconnects` | float, int, int | churn asked, closes done, re-established connections |
//! | `storm.outages` | array of objects | `start_s` (from the run start), `recovered_after_s` (null: not by the end), `peak_down` (sum of the processes' peaks) |
//! | `storm.longest_recovery_s` | float or null | longest recovered outage |
//! | `storm.unrecovered` | bool | an outage was still open at the end |
//! | `handshake` | object or null | handshake only: |
//! | `handshake.concurrency`, `.duration_s` | int, float | connections in their handshake at once; the duration asked |
//! | `handshake.completed`, `.failed` | int, int | subscriptions established (each then closed); failed attempts |
//! | `handshake.phase_s`, `.per_s` | float, float | first attempt to the stop; completed / phase_s |
//! | `handshake.latency_us` | Summary | connect start to subscribed |
//! | `tls` | object or null | TLS runs only: |
//! | `tls.server_name`, `.verify`, `.resumption`, `.versions_offered` | string, string, bool, string | the name sent and checked; `ca` or `insecure`; sessions kept and offered; `1.2+1.3`, `1.2` or `1.3` |
//! | `tls.handshakes`, `.full`, `.resumed` | int | TLS handshakes completed, of which full and resumed |
//! | `tls.by_version` | {version: int} | handshakes by the version negotiated (`1.3`, `1.2`) |
//! | `tls.full_us`, `.resumed_us` | Summary | connect start to TLS handshake complete, full and resumed ones |
//!
//! Exit status: 0 when the run completed (whatever it measured), 1 when it could not run,
//! 2 for a usage error.

pub mod account;
pub mod child;
pub mod cli;
pub mod client;
pub mod coord;
pub mod counters;
pub mod hist;
pub mod payload;
pub mod publish;
pub mod report;
pub mod sys;
pub mod tls;
pub mod url;
pub mod wire;
