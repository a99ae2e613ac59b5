// Engine.IO sessions across workers (--workers 2). SO_REUSEPORT spreads TCP connections
// over the workers at random, so a polling client that opens a fresh connection per
// request (agent: false, Connection: close) lands on both: the requests that reach the
// other worker are forwarded to the session's worker (pushedge_socketio_forwarded_total)
// and everything still arrives exactly once, in order. A WebSocket upgrade that lands on
// the other worker moves the session there (pushedge_socketio_moved_total).

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
  emitAck,
  transportIs,
  publish,
  metrics,
  metricValue,
  sleep,
  show,
} from "./harness.mjs";

useHarness();

const FRESH_CONNECTIONS = {
  agent: false,
  transportOptions: { polling: { extraHeaders: { Connection: "close" } } },
};

test("polling session across workers: 50 publishes and 20 acked emits arrive in order; requests were forwarded", T, async () => {
  const srv = await startServer({ workers: 2, set: { client_publish: ["*"] } });
  assert.equal(srv.workers, 2);
  const a = client(srv.url, { transports: ["polling"], ...FRESH_CONNECTIONS });
  const b = client(srv.url, { transports: ["polling"], ...FRESH_CONNECTIONS });
  const ra = record(a);
  const rb = record(b);
  await Promise.all([a, b].map((s) => connected(s)));

  const expected = [];
  const seqs = [];
  let emits = 0;
  let pubs = 0;
  for (let k = 1; k <= 70; k++) {
    if (k % 7 === 2 || k % 7 === 5) {
      const from = emits % 2 ? b : a;
      const [ack] = await emitAck(from, "chat", { k }, emits % 2 ? "from b" : "from a");
      assert.equal(ack.ok, true, `emit ${k}: ${show(ack)}`);
      seqs.push(ack.seq);
      expected.push(["chat", { k }, emits % 2 ? "from b" : "from a"]);
      emits++;
    } else {
      const p = await publish(srv, "all", { k });
      seqs.push(p.seq);
      expected.push(["message", { k }]);
      pubs++;
    }
  }
  assert.deepEqual([pubs, emits], [50, 20]);
  assert.deepEqual(seqs, Array.from({ length: 70 }, (_, i) => i + 1), "seqs of channel all, in issue order");

  await Promise.all([ra.wait(70, { ms: 10_000 }), rb.wait(70, { ms: 10_000 })]);
  await sleep(SETTLE);
  assert.deepEqual(ra.events(), expected, show(ra.events()));
  assert.deepEqual(rb.events(), expected, show(rb.events()));
  assert.equal(a.io.engine.transport.name, "polling");
  assert.equal(b.io.engine.transport.name, "polling");

  const m = await metrics(srv);
  const forwarded = metricValue(m, "pushedge_socketio_forwarded_total");
  assert.ok(forwarded > 0, `pushedge_socketio_forwarded_total = ${forwarded}`);
});

test("websocket upgrades across workers: sessions move, every socket gets every publish once", T, async () => {
  const srv = await startServer({ workers: 2 });
  // 16 upgrades each land on the other worker with probability 1/2: at least one moves
  // unless all 16 land on the same one (2^-16).
  const socks = Array.from({ length: 16 }, () => client(srv.url, FRESH_CONNECTIONS));
  const recs = socks.map((s) => record(s));
  await Promise.all(socks.map((s) => connected(s)));
  await Promise.all(socks.map((s) => transportIs(s, "websocket", 10_000)));
  for (let n = 1; n <= 5; n++) await publish(srv, "all", { n });
  await Promise.all(recs.map((r) => r.wait(5)));
  await sleep(SETTLE);
  const expected = [1, 2, 3, 4, 5].map((n) => ["message", { n }]);
  recs.forEach((r, i) => assert.deepEqual(r.events(), expected, `socket ${i}: ${show(r.events())}`));
  const m = await metrics(srv);
  const moved = metricValue(m, "pushedge_socketio_moved_total");
  assert.ok(moved > 0, `pushedge_socketio_moved_total = ${moved}`);
});
