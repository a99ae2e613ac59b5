use super::*;
use crate::config::Config;

fn hub(workers: usize, cfg: &Config) -> (Hub, Vec<Arc<Inbox>>) {
    let inboxes: Vec<Arc<Inbox>> = (0..workers).map(|_| Arc::new(Inbox::detached())).collect();
    (Hub::memory(inboxes.clone(), cfg), inboxes)
}

fn replica(workers: usize) -> (Hub, Vec<Arc<Inbox>>) {
    let cfg = Config::default();
    let inboxes: Vec<Arc<Inbox>> = (0..workers).map(|_| Arc::new(Inbox::detached())).collect();
    let live = Arc::new(Live::new(&cfg));
    let h = Hub::new(
        inboxes.clone(),
        HubConfig::from_config(&cfg, live, true),
        None,
    );
    (h, inboxes)
}

fn drain(inbox: &Inbox) -> Vec<u64> {
    let mut seqs = Vec::new();
    while let Some(cmd) = inbox.pop() {
        if let Cmd::Deliver(m) = cmd {
            seqs.push(m.seq);
        }
    }
    seqs
}

fn kinds(inbox: &Inbox) -> Vec<(MsgKind, u64)> {
    let mut out = Vec::new();
    while let Some(cmd) = inbox.pop() {
        if let Cmd::Deliver(m) = cmd {
            out.push((m.kind, m.seq));
        }
    }
    out
}

fn keyed(key: &str) -> PubMeta<'_> {
    PubMeta {
        key: Some(key),
        ..PubMeta::default()
    }
}

fn publish(h: &Hub, name: &str, content: &str) -> u64 {
    h.publish(name, content, &PubMeta::default()).unwrap().seq
}

fn sub(h: &Hub, worker: usize, name: &str, since: Since) -> (Subscribed, Vec<u64>) {
    let mut replay = Vec::new();
    let s = h
        .subscribe(worker, name, since, Authority::Hub, false, &mut replay)
        .unwrap();
    (s, replay.iter().map(|m| m.seq).collect())
}

fn at(n: u64) -> Since {
    Since::Seq(n, Epoch::NONE)
}

#[test]
fn sequences_and_delivers_to_workers_with_subscribers() {
    let (h, inboxes) = hub(2, &Config::default());
    let (s, replay) = sub(&h, 1, "news", Since::Now);
    assert_eq!(s.seq, 0);
    assert!(replay.is_empty());
    assert!(s.epoch.is_none(), "an empty stream shows no epoch");
    assert_eq!(publish(&h, "news", "a"), 1);
    assert_eq!(publish(&h, "news", "b"), 2);
    assert_eq!(drain(&inboxes[0]), Vec::<u64>::new());
    assert_eq!(drain(&inboxes[1]), vec![1, 2]);
    h.unsubscribe(1, s.key);
    publish(&h, "news", "c");
    assert!(drain(&inboxes[1]).is_empty());
    let info = h.info("news").unwrap();
    assert_eq!((info.seq, info.subscribers, info.buffered), (3, 0, 3));
    assert!(info.epoch.is_some(), "the first message starts a stream");
}

#[test]
fn replay_and_gap() {
    let cfg = Config {
        history_size: 3,
        ..Default::default()
    };
    let (h, _) = hub(1, &cfg);
    for i in 0..5 {
        publish(&h, "c", &format!("m{i}"));
    }
    // History holds 3, 4, 5.
    let (s, replay) = sub(&h, 0, "c", at(4));
    assert_eq!((s.gap, s.reset), (None, false));
    assert_eq!(replay, vec![4, 5]);
    let (s, replay) = sub(&h, 0, "c", at(1));
    assert_eq!(s.gap, Some((1, 2)));
    assert_eq!(replay.len(), 3);
    let (s, replay) = sub(&h, 0, "c", at(6));
    assert_eq!((s.gap, s.reset, replay.len()), (None, false, 0));
    let (s, _) = sub(&h, 0, "c", at(0));
    assert_eq!(s.gap, Some((1, 2)));
    h.clear("c").unwrap();
    let (s, replay) = sub(&h, 0, "c", at(5));
    assert_eq!((s.gap, replay.len()), (Some((5, 5)), 0));
}

#[test]
fn a_position_of_another_stream_or_beyond_the_end_resets() {
    let (h, _) = hub(1, &Config::default());
    for i in 1..=3 {
        publish(&h, "c", &format!("m{i}"));
    }
    let epoch = h.info("c").unwrap().epoch;
    // Beyond the end (a plain seq from an older stream): reset, the stream from 1.
    let (s, replay) = sub(&h, 0, "c", at(9));
    assert!(s.reset);
    assert_eq!((s.epoch, s.seq, s.gap), (epoch, 3, None));
    assert_eq!(replay, vec![1, 2, 3]);
    // Another epoch: reset even inside the seq range.
    let other = Epoch::parse("zzzz").unwrap();
    let (s, replay) = sub(&h, 0, "c", Since::Seq(2, other));
    assert!(s.reset);
    assert_eq!(replay, vec![1, 2, 3]);
    // The right epoch: a normal replay.
    let (s, replay) = sub(&h, 0, "c", Since::Seq(2, epoch));
    assert!(!s.reset);
    assert_eq!(replay, vec![2, 3]);
    // Right after the end: nothing to replay, no reset.
    let (s, replay) = sub(&h, 0, "c", Since::Seq(4, epoch));
    assert!(!s.reset && replay.is_empty());
}

#[test]
fn a_closed_channel_starts_a_new_stream() {
    let (h, inboxes) = hub(1, &Config::default());
    sub(&h, 0, "x", Since::Now);
    publish(&h, "x", "1");
    let old = h.info("x").unwrap().epoch;
    h.close_channel("x").unwrap();
    assert_eq!(
        kinds(&inboxes[0]),
        vec![(MsgKind::Data, 1), (MsgKind::Close, 1)]
    );
    assert!(h.info("x").is_none());
    assert_eq!(h.close_channel("x"), Err(HubError::NoChannel));
    assert_eq!(publish(&h, "x", "again"), 1, "a new stream starts at 1");
    let info = h.info("x").unwrap();
    assert_ne!(info.epoch, old, "with a new epoch");
    // A cursor of the old stream is told.
    let (s2, replay) = sub(&h, 0, "x", Since::Seq(2, old));
    assert!(s2.reset);
    assert_eq!(replay, vec![1]);
}

#[test]
fn poll_registers_only_when_nothing_to_replay() {
    let (h, _) = hub(1, &Config::default());
    publish(&h, "p", "x");
    let mut replay = Vec::new();
    let s = h
        .subscribe(0, "p", at(1), Authority::Hub, true, &mut replay)
        .unwrap();
    assert!(!s.registered);
    assert_eq!(h.info("p").unwrap().subscribers, 0);
    let s = h
        .subscribe(0, "p", at(2), Authority::Hub, true, &mut Vec::new())
        .unwrap();
    assert!(s.registered);
    assert_eq!(h.info("p").unwrap().subscribers, 1);
    // A far-future seq is answered (a reset), not held.
    let s = h
        .subscribe(0, "p", at(50), Authority::Hub, true, &mut Vec::new())
        .unwrap();
    assert!(s.reset && !s.registered);
}

#[test]
fn limits() {
    let cfg = Config {
        max_channels: 2,
        max_message_bytes: 200,
        ..Default::default()
    };
    let (h, _) = hub(1, &cfg);
    publish(&h, "a", "x");
    publish(&h, "b", "x");
    assert_eq!(
        h.publish("c", "x", &PubMeta::default()),
        Err(HubError::ChannelLimit)
    );
    assert_eq!(
        h.publish("a", &"x".repeat(201), &PubMeta::default()),
        Err(HubError::TooBig)
    );
    assert_eq!(HubError::ChannelLimit.status(), 503);
    assert_eq!(HubError::Unknown("x".into()).status(), 504);
}

#[test]
fn idempotency_keys_answer_the_first_publish() {
    let (h, inboxes) = hub(1, &Config::default());
    sub(&h, 0, "k", Since::Now);
    let a = h.publish("k", "once", &keyed("req-1")).unwrap();
    let b = h.publish("k", "once", &keyed("req-1")).unwrap();
    assert!(!a.duplicate && b.duplicate);
    assert_eq!((a.seq, a.epoch), (b.seq, b.epoch));
    let c = h.publish("k", "other", &keyed("req-2")).unwrap();
    assert_eq!(c.seq, 2);
    assert_eq!(drain(&inboxes[0]), vec![1, 2], "delivered once each");
    // Keys are per channel.
    assert!(!h.publish("k2", "x", &keyed("req-1")).unwrap().duplicate);
}

#[test]
fn idempotency_table_is_bounded() {
    let cfg = Config {
        idempotency_max_keys: 2,
        ..Default::default()
    };
    let (h, _) = hub(1, &cfg);
    for k in ["a", "b", "c"] {
        h.publish("k", "x", &keyed(k)).unwrap();
    }
    assert_eq!(h.idem_evicted.load(Ordering::Relaxed), 1);
    assert!(
        !h.publish("k", "x", &keyed("a")).unwrap().duplicate,
        "the oldest key was forgotten"
    );
    assert!(h.publish("k", "x", &keyed("c")).unwrap().duplicate);
}

#[test]
fn draining_refuses_publishes_behind_the_drain_command() {
    let (h, inboxes) = hub(1, &Config::default());
    sub(&h, 0, "d", Since::Now);
    publish(&h, "d", "before");
    assert!(h.begin_drain());
    assert!(!h.begin_drain(), "once");
    assert_eq!(
        h.publish("d", "after", &PubMeta::default()),
        Err(HubError::Draining)
    );
    let mut order = Vec::new();
    while let Some(cmd) = inboxes[0].pop() {
        order.push(match cmd {
            Cmd::Deliver(m) => format!("deliver {}", m.seq),
            Cmd::Drain => "drain".into(),
            _ => "other".into(),
        });
    }
    assert_eq!(order, vec!["deliver 1", "drain"]);
}

#[test]
fn sweep_reclaims_idle_empty_channels() {
    let cfg = Config {
        channel_ttl_secs: 1.0,
        ..Default::default()
    };
    let (h, _) = hub(1, &cfg);
    publish(&h, "idle", "x");
    let (s, _) = sub(&h, 0, "busy", Since::Now);
    let later = Instant::now() + Duration::from_secs(2);
    assert_eq!(h.sweep(later), 1);
    assert!(h.info("idle").is_none());
    assert!(h.info("busy").is_some());
    h.unsubscribe(0, s.key);
    assert_eq!(
        h.channel_count(),
        0,
        "an empty channel is freed by its last unsubscribe"
    );
    assert_eq!(h.sweep(Instant::now() + Duration::from_secs(3)), 0);
}

#[test]
fn totals_follow_every_change() {
    let cfg = Config {
        history_size: 2,
        ..Default::default()
    };
    let (h, _) = hub(2, &cfg);
    let (a, _) = sub(&h, 0, "a", Since::Now);
    sub(&h, 1, "b", Since::Now);
    for _ in 0..3 {
        publish(&h, "a", "x");
    }
    publish(&h, "b", "y");
    let t = h.totals();
    assert_eq!((t.channels, t.subscriptions, t.buffered), (2, 2, 3));
    h.broadcast("z").unwrap();
    assert_eq!(h.totals().buffered, 4);
    h.clear("a").unwrap();
    assert_eq!(h.totals().buffered, 2);
    h.unsubscribe(0, a.key);
    h.close_channel("b").unwrap();
    let t = h.totals();
    assert_eq!((t.channels, t.subscriptions, t.buffered), (1, 0, 0));
}

#[test]
fn remote_messages_are_recorded_once_and_delivered() {
    let (h, inboxes) = replica(1);
    let e = Epoch::parse("e1").unwrap();
    let mut r = Vec::new();
    let s = h
        .subscribe(0, "c", Since::Now, Authority::Replica, false, &mut r)
        .unwrap();
    assert!(s.epoch.is_none(), "a replica learns epochs from Redis");
    h.deliver_remote("c", e, 5, "", "five");
    h.deliver_remote("c", e, 5, "", "five again");
    h.deliver_remote("c", e, 4, "", "late");
    h.deliver_remote("c", e, 6, "", "six");
    assert_eq!(drain(&inboxes[0]), vec![5, 6]);
    assert_eq!(h.local_stream("c"), Some((e, 6)));
    // The local history holds one run (5 and 6): an older position needs Redis.
    let mut replay = Vec::new();
    let s = h
        .subscribe(
            0,
            "c",
            Since::Seq(1, e),
            Authority::Replica,
            false,
            &mut replay,
        )
        .unwrap();
    assert!(s.remote && replay.is_empty());
    let s = h
        .subscribe(
            0,
            "c",
            Since::Seq(5, e),
            Authority::Replica,
            false,
            &mut replay,
        )
        .unwrap();
    assert!(!s.remote);
    assert_eq!(replay.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![5, 6]);
    // Ahead of the local copy, or another epoch, or a stale feed: Redis decides.
    for (since, authority) in [
        (Since::Seq(8, e), Authority::Replica),
        (
            Since::Seq(6, Epoch::parse("x").unwrap()),
            Authority::Replica,
        ),
        (Since::Seq(6, e), Authority::Stale),
    ] {
        let s = h
            .subscribe(0, "c", since, authority, false, &mut Vec::new())
            .unwrap();
        assert!(s.remote, "{since:?} {authority:?}");
    }
    // A copy that knows the stream but has applied nothing of it cannot answer.
    h.note_taken("fresh", e, 4);
    let s = h
        .subscribe(
            0,
            "fresh",
            Since::Seq(1, e),
            Authority::Replica,
            false,
            &mut Vec::new(),
        )
        .unwrap();
    assert!(s.remote);
    // Remote messages for unknown channels create them.
    h.deliver_remote("other", e, 3, "", "x");
    assert_eq!(h.local_stream("other"), Some((e, 3)));
}

#[test]
fn a_new_epoch_from_the_feed_resets_subscribers() {
    let (h, inboxes) = replica(1);
    let e1 = Epoch::parse("e1").unwrap();
    let e2 = Epoch::parse("e2").unwrap();
    let mut r = Vec::new();
    h.subscribe(0, "c", Since::Now, Authority::Replica, false, &mut r)
        .unwrap();
    h.deliver_remote("c", e1, 1, "", "a");
    h.deliver_remote("c", e1, 2, "", "b");
    drain(&inboxes[0]);
    h.deliver_remote("c", e2, 1, "", "new");
    assert_eq!(
        kinds(&inboxes[0]),
        vec![(MsgKind::Reset, 0), (MsgKind::Data, 1)]
    );
    assert_eq!(h.local_stream("c"), Some((e2, 1)));
    assert_eq!(h.info("c").unwrap().buffered, 1);
}

#[test]
fn a_hole_in_the_feed_is_told_with_a_gap() {
    let (h, inboxes) = replica(1);
    let e = Epoch::parse("e1").unwrap();
    let mut r = Vec::new();
    h.subscribe(0, "c", Since::Now, Authority::Replica, false, &mut r)
        .unwrap();
    h.deliver_remote("c", e, 1, "", "a");
    h.deliver_remote("c", e, 2, "", "b");
    drain(&inboxes[0]);
    // 3 and 4 never reached this node (nor Redis's history): a gap, then 5.
    h.deliver_remote("c", e, 5, "", "e");
    let Some(Cmd::Deliver(m)) = inboxes[0].pop() else {
        panic!("a gap delivery")
    };
    assert_eq!((m.kind, m.from, m.seq), (MsgKind::Gap, 3, 4));
    assert_eq!(kinds(&inboxes[0]), vec![(MsgKind::Data, 5)]);
    assert_eq!(h.local_stream("c"), Some((e, 5)));
    assert_eq!(
        h.info("c").unwrap().buffered,
        1,
        "the history starts again at 5"
    );
}

#[test]
fn a_gap_reaches_subscribers_and_moves_the_seq() {
    let (h, inboxes) = replica(1);
    let e = Epoch::parse("e1").unwrap();
    let mut r = Vec::new();
    h.subscribe(0, "c", Since::Now, Authority::Replica, false, &mut r)
        .unwrap();
    h.deliver_remote("c", e, 1, "", "a");
    drain(&inboxes[0]);
    h.deliver_gap("c", e, 2, 7);
    let Some(Cmd::Deliver(m)) = inboxes[0].pop() else {
        panic!("a gap delivery")
    };
    assert_eq!((m.kind, m.from, m.seq), (MsgKind::Gap, 2, 7));
    assert_eq!(
        &m.json()[..],
        br#"{"type":"gap","channel":"c","from":2,"to":7}"#
    );
    assert_eq!(h.local_stream("c"), Some((e, 7)));
    assert_eq!(h.totals().buffered, 0);
    h.deliver_gap("c", e, 2, 5);
    assert!(inboxes[0].pop().is_none(), "an older gap is ignored");
}

#[test]
fn taken_seqs_raise_the_floor_until_the_feed_brings_them() {
    let (h, _) = replica(1);
    let e = Epoch::parse("e1").unwrap();
    h.deliver_remote("c", e, 1, "", "a");
    h.note_taken("c", e, 3);
    assert_eq!(h.local_stream("c"), Some((e, 3)));
    assert_eq!(h.unapplied(), 1);
    h.deliver_remote("c", e, 2, "", "b");
    h.deliver_remote("c", e, 3, "", "c");
    assert_eq!(h.unapplied(), 0);
    assert_eq!(h.info("c").unwrap().seq, 3);
}

#[test]
fn catch_up_after_a_remote_read() {
    let (h, _) = replica(1);
    let e = Epoch::parse("e1").unwrap();
    for s in 1..=4 {
        h.deliver_remote("c", e, s, "", "x");
    }
    let key = h
        .subscribe(
            0,
            "c",
            Since::Now,
            Authority::Replica,
            false,
            &mut Vec::new(),
        )
        .unwrap()
        .key;
    let mut out = Vec::new();
    assert_eq!(h.replay_after(key, e, 2, &mut out), CatchUp::Done(4));
    assert_eq!(out.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![3, 4]);
    assert_eq!(h.replay_after(key, e, 4, &mut Vec::new()), CatchUp::Done(4));
    let other = Epoch::parse("e2").unwrap();
    assert_eq!(
        h.replay_after(key, other, 0, &mut Vec::new()),
        CatchUp::OtherEpoch(e, 4)
    );
    assert_eq!(
        h.replay_after(key + 1, e, 0, &mut Vec::new()),
        CatchUp::Gone
    );
}

#[test]
fn a_reused_slot_has_a_new_key() {
    let (h, _) = hub(1, &Config::default());
    let (a, _) = sub(&h, 0, "a", Since::Now);
    // The last unsubscribe frees the empty channel's slot.
    h.unsubscribe(0, a.key);
    assert!(h.info("a").is_none());
    let (b, _) = sub(&h, 0, "b", Since::Now);
    assert_ne!(a.key, b.key);
    // A stale unsubscribe for the old key does not touch the new channel.
    h.unsubscribe(0, a.key);
    assert_eq!(h.info("b").unwrap().subscribers, 1);
}

#[test]
fn a_replica_snapshot_starts_each_stream_at_its_slowest_subscriber() {
    let (h, _inboxes) = replica(1);
    let e = Epoch::new();
    sub(&h, 0, "c", Since::Now);
    for seq in 1..=5 {
        h.deliver_remote("c", e, seq, "", &format!("m{seq}"));
    }
    h.deliver_remote("d", e, 1, "", "d1");
    let l = h.replica_snapshot([("c", 5), ("c", 3), ("d", 9)]);
    let c = l.channels.iter().find(|c| c.name == "c").unwrap();
    assert_eq!((c.epoch, c.seq), (e, 3));
    assert_eq!(c.history.iter().map(|m| m.0).collect::<Vec<_>>(), [1, 2, 3]);
    let d = l.channels.iter().find(|c| c.name == "d").unwrap();
    assert_eq!(d.seq, 1, "a cursor ahead of the hub does not raise it");
    assert!(l.idem.is_empty());

    // The successor's replica hub is restored frozen, and its feed is held until thawed.
    let (n, inboxes) = replica(1);
    n.restore(l);
    assert!(n.check_frozen().is_err());
    let held = std::sync::atomic::AtomicBool::new(true);
    std::thread::scope(|s| {
        s.spawn(|| n.while_thawed(|| assert!(!held.load(Ordering::SeqCst))));
        std::thread::sleep(Duration::from_millis(20));
        held.store(false, Ordering::SeqCst);
        n.set_frozen(false);
    });
    sub(&n, 0, "c", Since::Now);
    n.deliver_remote("c", e, 4, "", "m4");
    assert_eq!(drain(&inboxes[0]), [4], "filled in from the lowered seq");
}

#[test]
fn a_freeze_waits_for_the_client_publishes_under_way() {
    let (h, _inboxes) = replica(1);
    h.client_publish_begins().unwrap();
    let answered = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            answered.store(true, Ordering::SeqCst);
            h.redis_answered();
        });
        h.set_frozen(true);
        assert!(answered.load(Ordering::SeqCst), "the freeze waited");
    });
    assert!(h.client_publish_begins().is_err(), "refused while frozen");
    h.set_frozen(false);
    assert!(h.client_publish_begins().is_ok());
}
