// Connection state recovery (socketio_recovery_secs > 0): socket.io-client's automatic
// reconnect after the transport is cut (socket.io.engine.close()) comes back with the same
// socket id, socket.recovered === true, and exactly what it missed: every event carries
// the offset "SEQ@EPOCH/CHANNEL" as its last argument, and the received sequence is 1..N,
// nothing missed, nothing twice. With recovery off, events carry no offset and a
// reconnect is a new socket.

import test from "node:test";
import assert from "node:assert/strict";
import {
  useHarness,
  T,
  SETTLE,
  startServer,
  client,
  record,
  connected,
  publish,
  metrics,
  metricValue,
  once,
  sleep,
  show,
  request,
} from "./harness.mjs";

useHarness();

/** Reconnect after exactly 1 s (no jitter): the window in which the test publishes. */
const RECONNECT = { reconnection: true, reconnectionDelay: 1000, reconnectionDelayMax: 1000, randomizationFactor: 0 };

for (const transport of ["websocket", "polling"]) {
  test(`recovery (${transport}): same id, recovered, exactly 1..N after the transport was cut`, T, async () => {
    const srv = await startServer({ set: { socketio_recovery_secs: 120 } });
    const s = client(srv.url, { transports: [transport], ...RECONNECT });
    const rec = record(s, { stripOffset: true });
    await connected(s);
    assert.equal(s.recovered, false, "a first connect is not a recovery");
    assert.equal(typeof s._pid, "string", "the CONNECT answer carries a pid");
    const id = s.id;
    const sent = [];
    const pub = async (n) => {
      const a = await publish(srv, "all", { n });
      sent.push({ n, seq: a.seq, epoch: a.epoch });
    };

    for (let n = 1; n <= 5; n++) await pub(n);
    await rec.wait(5);

    const disconnected = once(s, "disconnect", 5_000, "disconnect after engine.close()");
    let reconnectedAt = null;
    s.on("connect", () => (reconnectedAt = Date.now()));
    s.io.engine.close();
    await disconnected;
    assert.equal(s.connected, false);
    for (let n = 6; n <= 15; n++) await pub(n);
    assert.equal(reconnectedAt, null, "the ten publishes were made while the socket was down");

    await connected(s, 8_000, "automatic reconnect");
    assert.equal(s.recovered, true, "socket.recovered");
    assert.equal(s.id, id, "same socket id");
    for (let n = 16; n <= 20; n++) await pub(n);

    await rec.wait(20, { ms: 8_000 });
    await sleep(SETTLE);
    assert.deepEqual(
      rec.list.map((e) => [e.event, ...e.args]),
      sent.map(({ n }) => ["message", { n }]),
      `received ${show(rec.list)}`,
    );
    assert.deepEqual(
      rec.list.map((e) => e.offset),
      sent.map(({ seq, epoch }) => `${seq}@${epoch}/all`),
      "each event's last argument is its offset SEQ@EPOCH/CHANNEL",
    );
    assert.deepEqual(sent.map((x) => x.seq), Array.from({ length: 20 }, (_, i) => i + 1));
    const m = await metrics(srv);
    assert.equal(metricValue(m, "pushedge_socketio_recovered_total"), 1, "one recovery counted");
  });
}

test("recovery replays every room the socket was in (all and lobby), each in order", T, async () => {
  const srv = await startServer({ set: { socketio_recovery_secs: 120 } });
  const s = client(srv.url + "/chat1", { transports: ["websocket"], auth: { channels: ["lobby"] }, ...RECONNECT });
  const rec = record(s, { stripOffset: true });
  await connected(s);
  const id = s.id;
  const sent = { "chat1.all": [], "chat1.lobby": [] };
  const pub = async (channel, n) => {
    const a = await publish(srv, channel, { n, channel });
    sent[channel].push(`${a.seq}@${a.epoch}/${channel}`);
  };
  await pub("chat1.all", 1);
  await pub("chat1.lobby", 1);
  await pub("chat1.all", 2);
  await rec.wait(3);

  const disconnected = once(s, "disconnect", 5_000, "disconnect");
  s.io.engine.close();
  await disconnected;
  for (let n = 2; n <= 6; n++) await pub("chat1.lobby", n);
  for (let n = 3; n <= 6; n++) await pub("chat1.all", n);
  await connected(s, 8_000, "automatic reconnect");
  assert.equal(s.recovered, true);
  assert.equal(s.id, id);
  await pub("chat1.lobby", 7);
  await pub("chat1.all", 7);

  await rec.wait(14, { ms: 8_000 });
  await sleep(SETTLE);
  const byChannel = { "chat1.all": [], "chat1.lobby": [] };
  for (const e of rec.list) {
    assert.equal(e.event, "message", show(e));
    assert.equal(typeof e.offset, "string", `offset of ${show(e)}`);
    const channel = e.offset.slice(e.offset.indexOf("/") + 1);
    assert.ok(channel in byChannel, show(e));
    assert.equal(e.args.length, 1, show(e));
    assert.equal(e.args[0].channel, channel, show(e));
    byChannel[channel].push(e.offset);
  }
  assert.deepEqual(byChannel, sent, show(rec.list));
  // Per channel, the payloads count 1..7.
  for (const channel of Object.keys(sent)) {
    assert.deepEqual(
      rec.list.filter((e) => e.args[0].channel === channel).map((e) => e.args[0].n),
      [1, 2, 3, 4, 5, 6, 7],
      channel,
    );
  }
});

test("recovery from an offset of a stream that ended: a reset event with the new epoch, then the new stream", T, async () => {
  const srv = await startServer({ set: { socketio_recovery_secs: 120 } });
  const s = client(srv.url, { transports: ["websocket"], ...RECONNECT });
  const rec = record(s, { stripOffset: true });
  await connected(s);
  const id = s.id;
  const old = [];
  for (let n = 1; n <= 3; n++) old.push(await publish(srv, "all", { n }));
  await rec.wait(3);
  const disconnected = once(s, "disconnect", 5_000, "disconnect");
  s.io.engine.close();
  await disconnected;
  // While the socket is away its room's stream ends (a close) and a new one starts.
  const r = await request({ host: srv.adminHost, port: srv.adminPort, method: "POST", path: "/close?channel=all" });
  assert.equal(r.status, 200, r.text);
  const fresh = [];
  for (let n = 1; n <= 2; n++) fresh.push(await publish(srv, "all", { n: 100 + n }));
  assert.deepEqual(fresh.map((a) => a.seq), [1, 2], "the new stream starts at 1");
  assert.notEqual(fresh[0].epoch, old[0].epoch, "a new epoch");
  await connected(s, 8_000, "automatic reconnect");
  assert.equal(s.recovered, true, "socket.recovered");
  assert.equal(s.id, id, "same socket id");
  await rec.wait(6, { ms: 8_000 });
  await sleep(SETTLE);
  const after = rec.list.slice(3);
  assert.equal(after.length, 3, show(after));
  assert.equal(after[0].event, "reset", `told at once that the stream started again: ${show(after)}`);
  assert.deepEqual(after[0].args[0], { type: "reset", channel: "all", epoch: fresh[0].epoch, seq: 2 }, show(after[0]));
  assert.deepEqual(
    after.slice(1).map((e) => [e.event, e.args[0], e.offset]),
    fresh.map((a, i) => ["message", { n: 101 + i }, `${a.seq}@${a.epoch}/all`]),
    show(after),
  );
});

test("recovery off (default): no offset argument, a reconnect is a new socket", T, async () => {
  const srv = await startServer();
  const s = client(srv.url, { transports: ["websocket"], ...RECONNECT });
  const rec = record(s);
  await connected(s);
  const id = s.id;
  await publish(srv, "all", "one");
  await rec.wait(1);
  assert.deepEqual(rec.events(), [["message", "one"]], "no extra offset argument");
  const disconnected = once(s, "disconnect", 5_000, "disconnect");
  s.io.engine.close();
  await disconnected;
  await publish(srv, "all", "missed");
  await connected(s, 8_000, "automatic reconnect");
  // socket.io-client sets recovered to `pid && ...`: undefined when the CONNECT answer has no pid.
  assert.ok(!s.recovered, `recovered = ${s.recovered}`);
  assert.equal(s._pid, undefined, "no pid in the CONNECT answer with recovery off");
  assert.notEqual(s.id, id, "a new socket id");
  await publish(srv, "all", "three");
  await rec.wait(2);
  await sleep(SETTLE);
  assert.deepEqual(rec.events(), [["message", "one"], ["message", "three"]], show(rec.events()));
});
