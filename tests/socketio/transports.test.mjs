// socket.io-client 4.x on node against pushedge's Socket.IO endpoint, one transport at a
// time and through the polling -> websocket upgrade: admin publishes arrive as events
// (default event "message", `event=` names it, a JSON body arrives parsed, a text body as
// the string), each exactly once and in publish order.

import test from "node:test";
import assert from "node:assert/strict";
import { NodeXHR, NodeWebSocket } from "engine.io-client";
import {
  useHarness,
  T,
  SETTLE,
  startServer,
  client,
  record,
  connected,
  transportIs,
  emitAck,
  publish,
  sleep,
  once,
  show,
} from "./harness.mjs";

useHarness();

const NEWS = { a: 1, b: [true, null, "x"], c: "é ✓ \"quoted\"\nline", d: { e: -2.5 } };

for (const transport of ["polling", "websocket"]) {
  test(`${transport} only: admin publishes arrive as events (message, event=news with JSON)`, T, async () => {
    const srv = await startServer();
    const s = client(srv.url, { transports: [transport] });
    const rec = record(s);
    await connected(s);
    assert.equal(s.io.engine.transport.name, transport);
    assert.equal(typeof s.id, "string");
    assert.ok(s.id.length > 0);

    const p1 = await publish(srv, "all", "hello");
    const p2 = await publish(srv, "all", NEWS, { event: "news" });
    const p3 = await publish(srv, "all", '{"not":"parsed"}', { json: false });
    const p4 = await publish(srv, "all", [1, "two", { three: 3 }], { event: "list" });
    assert.deepEqual([p1.seq, p2.seq, p3.seq, p4.seq], [1, 2, 3, 4]);
    await rec.wait(4);
    await sleep(SETTLE);
    assert.deepEqual(
      rec.events(),
      [
        ["message", "hello"],
        ["news", NEWS],
        ["message", '{"not":"parsed"}'],
        ["list", [1, "two", { three: 3 }]],
      ],
      show(rec.events()),
    );
    assert.deepEqual(rec.list.map((e) => e.transport), [transport, transport, transport, transport]);
    assert.equal(s.io.engine.transport.name, transport, "no upgrade with a single transport");
    assert.equal(s.connected, true);
  });
}

/**
 * The websocket transport of engine.io-client for node, opening 1 s late: the upgrade
 * probe starts only after the first publishes were delivered over polling.
 */
class SlowWebSocket extends NodeWebSocket {
  doOpen() {
    setTimeout(() => {
      if (this.readyState === "opening") super.doOpen();
    }, 1000);
  }
}

test("polling upgraded to websocket: publishes before, during and after the upgrade arrive once, in order", T, async (t) => {
  const srv = await startServer();
  // polling, then the websocket upgrade (the default transports, with the probe delayed)
  const s = client(srv.url, { transports: [NodeXHR, SlowWebSocket] });
  const rec = record(s);
  const engine = s.io.engine;
  assert.equal(engine.transport.name, "polling", "starts on polling");

  const sent = [];
  let next = 0;
  let chain = connected(s);
  const publishBatch = (k) => {
    chain = chain.then(async () => {
      for (let i = 0; i < k; i++) {
        const n = ++next;
        const a = await publish(srv, "all", { n });
        sent.push({ n, seq: a.seq });
      }
    });
    return chain;
  };
  let upgrading = false;
  let upgraded = false;
  engine.on("upgrading", () => {
    upgrading = true;
    publishBatch(5); // while polling is paused and the websocket takes over
  });
  const upgradeP = once(engine, "upgrade", 10_000, "engine upgrade");
  engine.on("upgrade", () => (upgraded = true));
  s.on("connect", () => publishBatch(10)); // while polling carries them and the probe runs

  await connected(s);
  await upgradeP;
  await transportIs(s, "websocket");
  assert.equal(upgrading, true, "the engine went through upgrading");
  assert.equal(upgraded, true);
  await chain;
  const beforeAfter = sent.length;
  await publishBatch(10);
  const total = sent.length;
  assert.equal(total, 25);
  assert.deepEqual(
    sent.map((x) => x.seq),
    Array.from({ length: total }, (_, i) => i + 1),
    "seqs 1..N on channel all",
  );

  await rec.wait(total);
  await sleep(SETTLE);
  assert.deepEqual(
    rec.events(),
    sent.map(({ n }) => ["message", { n }]),
    `received ${show(rec.list)}`,
  );
  const over = (name) => rec.list.filter((e) => e.transport === name).length;
  t.diagnostic(`received over polling: ${over("polling")}, over websocket: ${over("websocket")}`);
  assert.ok(over("polling") >= 1, "the first publishes came over polling, before the probe opened");
  // What was published after the upgrade came over the websocket.
  assert.deepEqual(
    rec.list.slice(beforeAfter).map((e) => e.transport),
    Array(total - beforeAfter).fill("websocket"),
  );
  assert.equal(s.io.engine.transport.name, "websocket");
  assert.equal(s.connected, true);
});

test("polling upgraded to websocket: the same session and socket, still in all its rooms", T, async () => {
  const srv = await startServer();
  const s = client(srv.url, { transports: [NodeXHR, SlowWebSocket], auth: { channels: ["lobby"] } });
  const rec = record(s);
  await connected(s);
  assert.equal(s.io.engine.transport.name, "polling");
  const sid = s.io.engine.id;
  const id = s.id;
  // Joined over polling, before the probe opens.
  const [ack] = await emitAck(s, "subscribe", "later");
  assert.equal(ack.ok, true, show(ack));
  assert.equal(s.io.engine.transport.name, "polling", "the subscribe went over polling");
  await transportIs(s, "websocket", 10_000);
  assert.equal(s.io.engine.id, sid, "same Engine.IO session");
  assert.equal(s.id, id, "same socket");
  // Each room after the upgrade: the socket's own (its id), auth.channels, subscribe, all.
  await publish(srv, id, "own room");
  await publish(srv, "lobby", "lobby");
  await publish(srv, "later", "later");
  await publish(srv, "all", "all");
  await rec.wait(4).catch((e) => {
    throw new Error(`${e.message}\n(missing rooms after the upgrade)`);
  });
  await sleep(SETTLE);
  // Four channels: compare the multiset (their relative order is not specified).
  const sorted = (l) => l.map((e) => JSON.stringify(e)).sort();
  assert.deepEqual(
    sorted(rec.events()),
    sorted([["message", "own room"], ["message", "lobby"], ["message", "later"], ["message", "all"]]),
    show(rec.events()),
  );
  assert.deepEqual(rec.list.map((e) => e.transport), Array(4).fill("websocket"));
});
