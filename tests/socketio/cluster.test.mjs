// A cluster: a redis-server of our own and two pushedge nodes (node-a, node-b), each on its
// own subscriber port, sharing channels through Redis. Socket.IO sockets (websocket) on
// both nodes get what is published on node A: to the broadcast room, to a room, and a
// client publish made on node B; the seqs are cluster-wide.

import test from "node:test";
import assert from "node:assert/strict";
import {
  useHarness,
  T,
  SETTLE,
  startServer,
  startRedis,
  client,
  record,
  connected,
  emitAck,
  publish,
  info,
  waitFor,
  sleep,
  show,
} from "./harness.mjs";

useHarness();

async function node(redis, id, set = {}) {
  const srv = await startServer({
    name: id,
    set: { "cluster.redis_url": redis.url, "cluster.node_id": id, ...set },
  });
  assert.equal(srv.node, id);
  let last;
  await waitFor(
    async () => {
      last = await info(srv);
      return last.cluster && last.cluster.redis === "up";
    },
    8_000,
    () => `${id}: /info cluster.redis "up" (${JSON.stringify(last && last.cluster)})`,
  );
  return srv;
}

test("cluster: sockets on both nodes get a publish made on node A", T, async () => {
  const redis = await startRedis();
  const set = { client_publish: ["*"] };
  const a = await node(redis, "node-a", set);
  const b = await node(redis, "node-b", set);
  assert.notEqual(a.port, b.port);

  const opts = { transports: ["websocket"] };
  const socks = {
    a1: client(a.url, opts),
    a2: client(a.url, opts),
    b1: client(b.url, { ...opts, auth: { channels: ["lobby"] } }),
    b2: client(b.url, opts),
  };
  const recs = Object.fromEntries(Object.entries(socks).map(([k, s]) => [k, record(s)]));
  await Promise.all(Object.values(socks).map((s) => connected(s)));

  const p1 = await publish(a, "all", "from A");
  assert.equal(p1.seq, 1);
  try {
    await Promise.all(Object.values(recs).map((r) => r.wait(1)));
  } catch (e) {
    e.message += `\nnode-a /info?channel=all ${JSON.stringify(await info(a, "all"))}\nnode-b ${JSON.stringify(await info(b, "all"))}`;
    throw e;
  }

  // A room on node B, published on node A.
  const p2 = await publish(a, "lobby", { room: "lobby" }, { event: "news" });
  assert.equal(p2.seq, 1);
  await recs.b1.wait(2);

  // A client publish on node B reaches node A's sockets, seq counted cluster-wide.
  const [ack] = await emitAck(socks.b2, "chat", "from b2");
  assert.equal(ack.ok, true, show(ack));
  assert.equal(ack.seq, 2, show(ack));
  assert.equal(ack.epoch, p1.epoch, "one stream across the cluster");

  await Promise.all([recs.a1.wait(2), recs.a2.wait(2), recs.b1.wait(3), recs.b2.wait(2)]);
  await sleep(SETTLE);
  const everyone = [
    ["message", "from A"],
    ["chat", "from b2"],
  ];
  assert.deepEqual(recs.a1.events(), everyone, show(recs.a1.events()));
  assert.deepEqual(recs.a2.events(), everyone, show(recs.a2.events()));
  assert.deepEqual(recs.b2.events(), everyone, show(recs.b2.events()));
  // b1 had its lobby message before b2 emitted.
  assert.deepEqual(recs.b1.events(), [everyone[0], ["news", { room: "lobby" }], everyone[1]], show(recs.b1.events()));

  const ia = await info(a, "all");
  const ib = await info(b, "all");
  assert.equal(ia.seq, 2, JSON.stringify(ia));
  assert.equal(ib.seq, 2, JSON.stringify(ib));
});
