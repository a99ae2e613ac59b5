// Acks both ways and binary payloads.
// - Client publish: emit(event, ...args, ack) with client_publish=["*"] is sequenced on the
//   namespace's broadcast room (ack {ok:true, seq, epoch}) and every socket of the namespace,
//   sender included, gets the event with its args; without client_publish the ack is
//   {ok:false, code:403}, and without an ack the refusal comes as an "error" event.
// - Server -> client acks with socketio_test=true (the conformance switch): "message-with-ack"
//   is acked with its args, "message" echoed as "message-back", "auth" carries the CONNECT auth.
// - Binary: Buffers emitted by a client (top level and nested) reach every socket as Buffers
//   with the same bytes, over websocket and polling; {"$binary": "<base64>"} in an admin JSON
//   publish arrives as a Buffer.

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
  publish,
  info,
  once,
  sleep,
  show,
} from "./harness.mjs";

useHarness();

const PUB = { client_publish: ["*"] };

test("client emit with ack (client_publish on): {ok:true, seq, epoch}, every socket of the namespace gets it", T, async () => {
  const srv = await startServer({ set: PUB });
  const a = client(srv.url, { transports: ["websocket"] });
  const b = client(srv.url, { transports: ["polling"] });
  const other = client(srv.url + "/chat1", { transports: ["websocket"] });
  const ra = record(a);
  const rb = record(b);
  const ro = record(other);
  await Promise.all([a, b, other].map((s) => connected(s)));

  const [ack1] = await emitAck(a, "chat", "hi", { x: 1, y: [null, true] });
  assert.equal(ack1.ok, true, show(ack1));
  assert.equal(ack1.seq, 1, show(ack1));
  assert.equal(typeof ack1.epoch, "string");
  assert.ok(ack1.epoch.length > 0);
  const [ack2] = await emitAck(b, "chat", "from b");
  assert.deepEqual(ack2, { ok: true, seq: 2, epoch: ack1.epoch });
  // The broadcast room's channel is "all": an admin publish there continues the stream.
  const p = await publish(srv, "all", "admin");
  assert.deepEqual([p.seq, p.epoch], [3, ack1.epoch]);

  const expected = [
    ["chat", "hi", { x: 1, y: [null, true] }],
    ["chat", "from b"],
    ["message", "admin"],
  ];
  await Promise.all([ra.wait(3), rb.wait(3)]);
  await sleep(SETTLE);
  assert.deepEqual(ra.events(), expected, show(ra.events()));
  assert.deepEqual(rb.events(), expected, show(rb.events()));
  assert.deepEqual(ro.events(), [], "another namespace sees nothing");

  // A namespace's client publish goes to its own broadcast room (chat1.all).
  const [ack3] = await emitAck(other, "chat", 42);
  assert.equal(ack3.ok, true, show(ack3));
  assert.equal(ack3.seq, 1, "first message of chat1.all");
  await ro.wait(1);
  await sleep(SETTLE);
  assert.deepEqual(ro.events(), [["chat", 42]]);
  assert.equal(ra.list.length, 3);

  // Without an ack it is published too.
  a.emit("noack", "fire and forget");
  await Promise.all([ra.wait(4), rb.wait(4)]);
  assert.deepEqual(ra.events().at(-1), ["noack", "fire and forget"]);
  assert.deepEqual(rb.events().at(-1), ["noack", "fire and forget"]);

  // To one room: publish {room, event, data}.
  const c = client(srv.url, { transports: ["websocket"], auth: { channels: ["lobby"] } });
  const rc = record(c);
  await connected(c);
  const [ack4] = await emitAck(a, "publish", { room: "lobby", event: "chat", data: { t: "to lobby" } });
  assert.equal(ack4.ok, true, show(ack4));
  assert.equal(ack4.seq, 1, "first message of lobby");
  const [ack5] = await emitAck(a, "publish", { room: "lobby", data: "default event" });
  assert.equal(ack5.ok, true, show(ack5));
  await rc.wait(2);
  await sleep(SETTLE);
  assert.deepEqual(rc.events(), [["chat", { t: "to lobby" }], ["message", "default event"]], show(rc.events()));
  assert.equal(ra.list.length, 4, "the sender is not in lobby");
});

test("client emit without client_publish: the ack gets {ok:false, code:403}, nothing is delivered", T, async () => {
  const srv = await startServer();
  const a = client(srv.url, { transports: ["websocket"] });
  const b = client(srv.url, { transports: ["websocket"] });
  const ra = record(a);
  const rb = record(b);
  await Promise.all([a, b].map((s) => connected(s)));
  const [ack] = await emitAck(a, "chat", "hi");
  assert.equal(ack.ok, false, show(ack));
  assert.equal(ack.code, 403, show(ack));
  assert.equal(typeof ack.error, "string", show(ack));

  // Without an ack the refusal is an "error" event to the sender.
  const errP = once(a, "error", 5_000, '"error" event');
  a.emit("chat", "no ack");
  const [err] = await errP;
  assert.equal(err.event, "chat", show(err));
  assert.equal(err.code, 403, show(err));
  assert.equal(typeof err.error, "string", show(err));

  const [ack2] = await emitAck(a, "publish", { room: "lobby", data: "x" });
  assert.equal(ack2.ok, false, show(ack2));
  assert.equal(ack2.code, 403, show(ack2));

  await sleep(SETTLE);
  assert.deepEqual(rb.events(), []);
  assert.deepEqual(ra.events(), [["error", err]]);
  const i = await info(srv, "all");
  assert.equal(i.seq, 0, "nothing was sequenced on all");
});

for (const transport of ["websocket", "polling"]) {
  test(`server -> client acks with socketio_test=true (${transport}): message-with-ack, message-back, auth`, T, async () => {
    const srv = await startServer({ set: { socketio_test: true } });
    const s = client(srv.url, { transports: [transport], auth: { token: "abc", n: 1 } });
    const authP = once(s, "auth", 5_000, '"auth" event');
    await connected(s);
    const [auth] = await authP;
    assert.deepEqual(auth, { token: "abc", n: 1 });

    const got = await new Promise((resolve, reject) => {
      s.timeout(5_000).emit("message-with-ack", 1, "2", (err, ...args) => (err ? reject(err) : resolve(args)));
    });
    assert.deepEqual(got, [1, "2"]);
    const got2 = await emitAck(s, "message-with-ack", { a: [1, 2] }, null, true);
    assert.deepEqual(got2, [{ a: [1, 2] }, null, true]);

    const back = once(s, "message-back", 5_000, '"message-back"');
    s.emit("message", "x", { y: 2 });
    assert.deepEqual(await back, ["x", { y: 2 }]);
    const back2 = once(s, "message-back", 5_000, '"message-back" with a Buffer');
    s.emit("message", Buffer.from([9, 8, 7]));
    const [buf] = await back2;
    assert.ok(Buffer.isBuffer(buf), show(buf));
    assert.deepEqual([...buf], [9, 8, 7]);
  });
}

test("socketio_test=true: the /custom namespace is allowed and emits auth", T, async () => {
  const srv = await startServer({ set: { socketio_test: true } });
  const s = client(srv.url + "/custom", { transports: ["websocket"], auth: { k: "v" } });
  const authP = once(s, "auth", 5_000, '"auth" on /custom');
  await connected(s);
  assert.deepEqual(await authP, [{ k: "v" }]);
});

test("binary: a Buffer emitted by a client reaches every socket as a Buffer (websocket and polling)", T, async () => {
  const srv = await startServer({ set: PUB });
  const a = client(srv.url, { transports: ["websocket"] });
  const b = client(srv.url, { transports: ["polling"] });
  const ra = record(a);
  const rb = record(b);
  await Promise.all([a, b].map((s) => connected(s)));
  const bytes = Buffer.from([0, 1, 2, 127, 128, 254, 255, 0x1e, 0x0a, 0x62]); // incl. \x1e and "b"
  // Large, but within max_message_bytes (64 KiB by default) once base64'd for the history.
  const big = Buffer.alloc(30_000, 0xab);
  big[0] = 1;
  big[29_999] = 2;

  const [ack1] = await emitAck(a, "bin", bytes);
  assert.equal(ack1.ok, true, show(ack1));
  const [ack2] = await emitAck(b, "mixed", "label", bytes, 7, { nested: Buffer.from([5, 6]), list: [Buffer.from([]), "s"] });
  assert.equal(ack2.ok, true, show(ack2));
  const [ack3] = await emitAck(a, "big", big);
  assert.equal(ack3.ok, true, show(ack3));
  assert.deepEqual([ack1.seq, ack2.seq, ack3.seq], [1, 2, 3]);

  for (const [name, rec] of [["a (websocket)", ra], ["b (polling)", rb]]) {
    await rec.wait(3);
    await sleep(SETTLE);
    const ev = rec.list;
    assert.deepEqual(ev.map((e) => e.event), ["bin", "mixed", "big"], name);
    const [bin] = ev[0].args;
    assert.equal(ev[0].args.length, 1, name);
    assert.ok(Buffer.isBuffer(bin), `${name}: ${show(bin)}`);
    assert.deepEqual([...bin], [...bytes], name);

    const m = ev[1].args;
    assert.equal(m.length, 4, name);
    assert.equal(m[0], "label");
    assert.ok(Buffer.isBuffer(m[1]), name);
    assert.deepEqual([...m[1]], [...bytes]);
    assert.equal(m[2], 7);
    assert.ok(Buffer.isBuffer(m[3].nested), name);
    assert.deepEqual([...m[3].nested], [5, 6]);
    assert.ok(Buffer.isBuffer(m[3].list[0]), name);
    assert.equal(m[3].list[0].length, 0);
    assert.equal(m[3].list[1], "s");

    const [bg] = ev[2].args;
    assert.ok(Buffer.isBuffer(bg), name);
    assert.equal(bg.length, big.length, name);
    assert.ok(bg.equals(big), name);
  }
});

test('binary: an admin JSON publish {"$binary":"AQID"} arrives as a Buffer [1,2,3]', T, async () => {
  const srv = await startServer();
  const a = client(srv.url, { transports: ["websocket"] });
  const b = client(srv.url, { transports: ["polling"] });
  const ra = record(a);
  const rb = record(b);
  await Promise.all([a, b].map((s) => connected(s)));
  await publish(srv, "all", { $binary: "AQID" });
  await publish(srv, "all", { name: "f", file: { $binary: "AAEC/w==" }, n: 1 }, { event: "file" });
  // Not the exact form (another key beside $binary): stays an object.
  await publish(srv, "all", { $binary: "AQID", other: 1 }, { event: "plain" });
  for (const [name, rec] of [["websocket", ra], ["polling", rb]]) {
    await rec.wait(3);
    await sleep(SETTLE);
    const ev = rec.list;
    assert.deepEqual(ev.map((e) => e.event), ["message", "file", "plain"], name);
    const [buf] = ev[0].args;
    assert.ok(Buffer.isBuffer(buf), `${name}: ${show(buf)}`);
    assert.deepEqual([...buf], [1, 2, 3]);
    const [f] = ev[1].args;
    assert.equal(f.name, "f");
    assert.equal(f.n, 1);
    assert.ok(Buffer.isBuffer(f.file), `${name}: ${show(f)}`);
    assert.deepEqual([...f.file], [0, 1, 2, 255]);
    assert.deepEqual(ev[2].args, [{ $binary: "AQID", other: 1 }], name);
  }
});
