//! The helper thread: Redis round trips on behalf of the workers, so that no reactor
//! thread ever waits for Redis.
//!
//! A worker hands over a [`Job`] (a WebSocket client's publish, or the read of a
//! subscription's position) and goes on; the answer comes back through the worker's
//! inbox as [`Cmd::PubDone`] or [`Cmd::Remote`]. Jobs are taken in batches and sent as one
//! pipeline (one round trip for all), in queue order, so one connection's publishes stay
//! in order.
//!
//! While the feed is down a publish is refused at once (503: this node could not deliver
//! it), and a read waits, retried every [`HELPER_RETRY_PAUSE`], until Redis is back or its
//! deadline (`cluster.history_wait_secs`) passes; then the subscriber gets an error.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Instant;

use super::{CallError, Cluster, Link};
use crate::epoch::Epoch;
use crate::hub::{Hub, HubError};
use crate::inbox::{Cmd, Inbox, PubDone, RemoteReply};
use crate::limits::{HELPER_BATCH, HELPER_RETRY_PAUSE};
use crate::reactor::Token;

/// Where an answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    /// The worker.
    pub worker: usize,
    /// The connection's token.
    pub token: Token,
}

/// Work for the helper.
#[derive(Debug)]
pub enum Job {
    /// A WebSocket client's publish (submitted with [`Cluster::submit_publish`]: the hub
    /// counts it until it is answered).
    Publish {
        /// Who asked.
        to: ReplyTo,
        /// The channel.
        channel: Arc<str>,
        /// The publishing client's `sub` (empty without one).
        sender: Box<str>,
        /// The content.
        content: Box<str>,
    },
    /// A presence event for the other nodes: the feed line (`P ...`), published as it
    /// is. Best effort: dropped while Redis is down (the listings are right again with
    /// the next report).
    Presence {
        /// The line.
        line: String,
    },
    /// A subscription's position (`since = Some`), or a channel's state (`None`, for a
    /// long-poll's `next_seq`); submitted with [`Cluster::submit_read`] (the hub counts
    /// it until it is answered).
    Read {
        /// Who asked.
        to: ReplyTo,
        /// The worker's request id.
        req: u64,
        /// The channel.
        channel: Arc<str>,
        /// The position: seq and the client's epoch.
        since: Option<(u64, Epoch)>,
        /// When to give up waiting for Redis.
        deadline: Instant,
    },
}

impl Job {
    fn is_publish(&self) -> bool {
        matches!(self, Job::Publish { .. })
    }
}

fn push(inboxes: &[Arc<Inbox>], to: ReplyTo, cmd: Cmd) {
    if let Some(inbox) = inboxes.get(to.worker) {
        inbox.push(cmd);
    }
}

/// Answers a job without Redis (refused, or given up).
pub fn answer_failed(inboxes: &[Arc<Inbox>], job: Job, e: &HubError) {
    match job {
        Job::Publish { to, channel, .. } => push(
            inboxes,
            to,
            Cmd::PubDone(PubDone {
                token: to.token,
                channel,
                result: Err((e.status(), e.reason())),
            }),
        ),
        Job::Read { to, req, .. } => push(
            inboxes,
            to,
            Cmd::Remote(RemoteReply {
                token: to.token,
                req,
                result: Err(e.reason()),
            }),
        ),
        Job::Presence { .. } => {}
    }
}

/// The helper's loop; returns when every sender is gone.
pub fn run(cluster: &Cluster, hub: &Hub, inboxes: &[Arc<Inbox>], rx: Receiver<Job>) {
    let mut link = Link::default();
    let mut waiting: Vec<Job> = Vec::new();
    loop {
        let first = if waiting.is_empty() {
            match rx.recv() {
                Ok(j) => Some(j),
                Err(_) => return,
            }
        } else {
            match rx.recv_timeout(HELPER_RETRY_PAUSE) {
                Ok(j) => Some(j),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        };
        let mut batch: Vec<Job> = std::mem::take(&mut waiting);
        batch.extend(first);
        while batch.len() < HELPER_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let up = cluster.up.load(Ordering::Acquire);
        let now = Instant::now();
        let mut send = Vec::with_capacity(batch.len());
        for job in batch {
            match (&job, up) {
                (_, true) => send.push(job),
                (Job::Publish { .. }, false) => {
                    let e = cluster.refuse().expect("the feed is down");
                    answer_failed(inboxes, job, &e);
                    hub.redis_answered();
                }
                (Job::Presence { .. }, false) => {}
                (Job::Read { deadline, .. }, false) => {
                    if now >= *deadline {
                        let e = HubError::Unavailable("redis is unreachable".into());
                        answer_failed(inboxes, job, &e);
                        hub.redis_answered();
                    } else {
                        waiting.push(job);
                    }
                }
            }
        }
        if send.is_empty() {
            continue;
        }
        let requests: Vec<Vec<u8>> = send
            .iter()
            .map(|j| match j {
                Job::Publish {
                    channel,
                    sender,
                    content,
                    ..
                } => cluster.publish_request(hub, channel, sender, content, None),
                Job::Read { channel, since, .. } => cluster.read_request(channel, *since),
                Job::Presence { line } => cluster.feed_publish(line),
            })
            .collect();
        let results = link.call_many(&cluster.target(), &requests);
        for (job, r) in send.into_iter().zip(results) {
            answer(cluster, hub, inboxes, job, r, &mut waiting);
        }
        if !waiting.is_empty() && waiting.iter().all(|j| !j.is_publish()) {
            // Redis did not answer the reads: wait a little before trying again.
            std::thread::sleep(HELPER_RETRY_PAUSE);
        }
    }
}

fn answer(
    cluster: &Cluster,
    hub: &Hub,
    inboxes: &[Arc<Inbox>],
    job: Job,
    r: Result<redis::Value, CallError>,
    waiting: &mut Vec<Job>,
) {
    match job {
        Job::Presence { .. } => {}
        Job::Publish { to, channel, .. } => {
            let result = cluster
                .publish_outcome(hub, &channel, r)
                .map(|a| (a.seq, a.epoch, a.duplicate))
                .map_err(|e| (e.status(), e.reason()));
            push(
                inboxes,
                to,
                Cmd::PubDone(PubDone {
                    token: to.token,
                    channel,
                    result,
                }),
            );
            hub.redis_answered();
        }
        Job::Read {
            to,
            req,
            channel,
            since,
            deadline,
        } => {
            let result = match r {
                Ok(v) => Cluster::read_outcome(v, since.map(|s| s.0)),
                Err(CallError::NotSent(_) | CallError::Unknown(_)) if Instant::now() < deadline => {
                    // A read is safe to repeat: try again until the deadline.
                    waiting.push(Job::Read {
                        to,
                        req,
                        channel,
                        since,
                        deadline,
                    });
                    return;
                }
                Err(e) => {
                    cluster.errors.fetch_add(1, Ordering::Relaxed);
                    Err(format!("cannot read the stream from redis: {}", e.reason()))
                }
            };
            push(
                inboxes,
                to,
                Cmd::Remote(RemoteReply {
                    token: to.token,
                    req,
                    result,
                }),
            );
            hub.redis_answered();
        }
    }
}
