// Namespaces and rooms: several namespaces multiplexed over one Manager (one Engine.IO
// connection), each with its channel prefix ("/chat1" -> "chat1."); rooms from
// auth.channels on CONNECT, joined and left later with "subscribe" / "unsubscribe" (acked),
// and each socket's own room (its id).

import test from "node:test";
import assert from "node:assert/strict";
import {
  useHarness,
  T,
  SETTLE,
  startServer,
  client,
  manager,
  nspSocket,
  record,
  connected,
  emitAck,
  publish,
  sleep,
  show,
} from "./harness.mjs";

useHarness();

for (const transport of ["websocket", "polling"]) {
  test(`two namespaces multiplexed on one manager (${transport}): chat1.all reaches only /chat1, chat2.all only /chat2`, T, async () => {
    const srv = await startServer();
    const m = manager(srv.url, { transports: [transport] });
    const main = nspSocket(m, "/");
    const c1 = nspSocket(m, "/chat1");
    const c2 = nspSocket(m, "/chat2");
    const m2 = manager(srv.url, { transports: [transport] });
    const o1 = nspSocket(m2, "/chat1");
    const recs = { main: record(main), c1: record(c1), c2: record(c2), o1: record(o1) };
    await Promise.all([main, c1, c2, o1].map((s) => connected(s)));
    assert.equal(c1.io, c2.io, "one manager");
    assert.equal(main.io, c1.io);
    assert.equal(c1.io.engine, c2.io.engine, "one Engine.IO connection");
    assert.notEqual(o1.io, c1.io);
    assert.notEqual(c1.id, c2.id, "a socket id per namespace");

    await publish(srv, "chat1.all", "to chat1");
    await publish(srv, "chat2.all", { to: "chat2" }, { event: "news" });
    await publish(srv, "all", "to main");
    await publish(srv, "chat1.all", "to chat1 again", { event: "again" });
    await Promise.all([recs.c1.wait(2), recs.o1.wait(2), recs.c2.wait(1), recs.main.wait(1)]);
    await sleep(SETTLE);
    assert.deepEqual(recs.c1.events(), [["message", "to chat1"], ["again", "to chat1 again"]], show(recs.c1.events()));
    assert.deepEqual(recs.o1.events(), [["message", "to chat1"], ["again", "to chat1 again"]], show(recs.o1.events()));
    assert.deepEqual(recs.c2.events(), [["news", { to: "chat2" }]], show(recs.c2.events()));
    assert.deepEqual(recs.main.events(), [["message", "to main"]], show(recs.main.events()));

    // Leaving one namespace keeps the others on the shared connection.
    c2.disconnect();
    await publish(srv, "chat1.all", "after chat2 left");
    await Promise.all([recs.c1.wait(3), recs.o1.wait(3)]);
    await sleep(SETTLE);
    assert.equal(c1.connected, true);
    assert.deepEqual(recs.c1.events().at(-1), ["message", "after chat2 left"]);
    assert.equal(recs.c2.list.length, 1);
  });
}

test("rooms: auth.channels joins on connect, subscribe/unsubscribe with acks, a publish reaches only the room", T, async () => {
  const srv = await startServer();
  const a = client(srv.url + "/chat1", { transports: ["websocket"], auth: { channels: ["lobby"] } });
  const b = client(srv.url + "/chat1", { transports: ["websocket"] });
  const c = client(srv.url + "/chat2", { transports: ["websocket"], auth: { channels: ["lobby"] } });
  const ra = record(a);
  const rb = record(b);
  const rc = record(c);
  await Promise.all([a, b, c].map((s) => connected(s)));

  // lobby of /chat1 is chat1.lobby: A only (C is in lobby of /chat2 = chat2.lobby).
  await publish(srv, "chat1.lobby", "L1");
  await ra.wait(1);
  await sleep(SETTLE);
  assert.deepEqual(ra.events(), [["message", "L1"]]);
  assert.deepEqual(rb.events(), []);
  assert.deepEqual(rc.events(), []);

  // B joins "other" later.
  const [ackOther] = await emitAck(b, "subscribe", "other");
  assert.equal(ackOther.ok, true, show(ackOther));
  assert.ok(Array.isArray(ackOther.rooms) && ackOther.rooms.includes("other"), show(ackOther));
  await publish(srv, "chat1.other", "O1", { event: "chat" });
  await rb.wait(1);
  await sleep(SETTLE);
  assert.deepEqual(rb.events(), [["chat", "O1"]]);
  assert.deepEqual(ra.events(), [["message", "L1"]]);

  // B joins lobby too (array form): both get lobby publishes.
  const [ackLobby] = await emitAck(b, "subscribe", ["lobby"]);
  assert.equal(ackLobby.ok, true, show(ackLobby));
  assert.ok(Array.isArray(ackLobby.rooms) && ackLobby.rooms.includes("lobby"), show(ackLobby));
  await publish(srv, "chat1.lobby", "L2");
  await Promise.all([ra.wait(2), rb.wait(2)]);

  // A leaves lobby: only B gets the next one.
  const [ackLeave] = await emitAck(a, "unsubscribe", "lobby");
  assert.equal(ackLeave.ok, true, show(ackLeave));
  await publish(srv, "chat1.lobby", "L3");
  await rb.wait(3);

  // chat2.lobby reaches C only.
  await publish(srv, "chat2.lobby", "C1");
  await rc.wait(1);
  await sleep(SETTLE);
  assert.deepEqual(ra.events(), [["message", "L1"], ["message", "L2"]], show(ra.events()));
  assert.deepEqual(rb.events(), [["chat", "O1"], ["message", "L2"], ["message", "L3"]], show(rb.events()));
  assert.deepEqual(rc.events(), [["message", "C1"]], show(rc.events()));

  // B leaves both: nothing more for B.
  const [ackLeaveBoth] = await emitAck(b, "unsubscribe", ["lobby", "other"]);
  assert.equal(ackLeaveBoth.ok, true, show(ackLeaveBoth));
  await publish(srv, "chat1.lobby", "L4");
  await publish(srv, "chat1.other", "O2");
  await sleep(SETTLE);
  assert.equal(rb.list.length, 3, show(rb.events()));
  assert.equal(ra.list.length, 2, show(ra.events()));
  // They are still in the namespace's broadcast room.
  await publish(srv, "chat1.all", "everyone");
  await Promise.all([ra.wait(3), rb.wait(4)]);
  assert.deepEqual(ra.events().at(-1), ["message", "everyone"]);
  assert.deepEqual(rb.events().at(-1), ["message", "everyone"]);
});

test("rooms: each socket is in its own room (channel <prefix><socket.id>)", T, async () => {
  const srv = await startServer();
  const a = client(srv.url + "/chat1", { transports: ["websocket"] });
  const b = client(srv.url + "/chat1", { transports: ["websocket"] });
  const m = client(srv.url, { transports: ["websocket"] });
  const ra = record(a);
  const rb = record(b);
  const rm = record(m);
  await Promise.all([a, b, m].map((s) => connected(s)));
  await publish(srv, `chat1.${a.id}`, "for a");
  await publish(srv, `chat1.${b.id}`, { for: "b" }, { event: "direct" });
  await publish(srv, m.id, "for main");
  await Promise.all([ra.wait(1), rb.wait(1), rm.wait(1)]);
  await sleep(SETTLE);
  assert.deepEqual(ra.events(), [["message", "for a"]]);
  assert.deepEqual(rb.events(), [["direct", { for: "b" }]]);
  assert.deepEqual(rm.events(), [["message", "for main"]]);
});
