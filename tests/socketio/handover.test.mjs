// Hot handover (`pushedge ctl upgrade`) with Socket.IO connections open: clients over
// WebSocket and over long-polling only, in the main namespace and in /chat1's room
// "lobby", connection state recovery on, and an admin publish stream running through the
// upgrade. Afterwards every acknowledged publish has arrived exactly once, in order, at
// every client; no client saw a disconnect; the socket ids are unchanged (and still
// route: a publish to a socket's own room reaches it); an emit with an ack works; and a
// socket whose transport was cut before the upgrade recovers in the successor (the kept
// recoveries were handed over) with what it missed. The upgrade is done twice (the second
// successor keeps sessions the first process made). A second test drives a raw polling
// session: a GET held across the upgrade, and a binary event whose attachment is posted
// only after it.
//
// The successor is not a child of the harness: its pid is read from its "handover: pid N
// took over" line and it is killed when the test ends.

import test from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import {
  useHarness,
  BIN,
  startServer,
  client,
  record,
  connected,
  transportIs,
  emitAck,
  publish,
  request,
  eioHandshake,
  eioPath,
  eioPackets,
  onCleanup,
  waitFor,
  show,
} from "./harness.mjs";

useHarness();

/** Upgrade attempts when the server answers "...: retry" (a transient state). */
const UPGRADE_ATTEMPTS = 20;
/** Polling-only clients per namespace. */
const POLLING = 4;

/** Runs `pushedge ctl --control PATH ...args`; resolves to { code, out }. */
function ctl(srv, ...args) {
  return new Promise((resolve) => {
    const c = spawn(BIN, ["ctl", "--control", srv.control, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    c.stdout.on("data", (d) => (out += d));
    c.stderr.on("data", (d) => (out += d));
    c.on("error", (e) => resolve({ code: -1, out: `${out}\n[spawn error: ${e.message}]` }));
    c.on("exit", (code) => resolve({ code, out }));
  });
}

/**
 * `ctl upgrade`, retried while the server says a transient state is in the way ("...:
 * retry"); asserts it succeeded, pushes the successor's pid (from its "took over" line,
 * the `round`-th of the log) to `successors` and resolves to the answer.
 */
async function upgrade(t, srv, round, successors) {
  let answer = null;
  const tries = [];
  for (let i = 0; i < UPGRADE_ATTEMPTS; i++) {
    const r = await ctl(srv, "upgrade");
    tries.push(r.out.trim());
    if (r.code === 0) {
      answer = r.out;
      break;
    }
    if (!r.out.includes("retry")) break;
  }
  assert.ok(answer, `ctl upgrade ${round} failed:\n${tries.join("\n")}\n${srv.log().split("\n").slice(-30).join("\n")}`);
  const v = JSON.parse(answer);
  assert.equal(v.upgraded, true, answer);
  t.diagnostic(`upgrade ${round} after ${tries.length} attempt(s): ${tries.join(" | ")}`);
  const tookOver = () => [...srv.log().matchAll(/handover: pid (\d+) took over/g)];
  await waitFor(() => tookOver().length >= round, 10_000, `the took-over line of successor ${round}`);
  const pid = Number(tookOver()[round - 1][1]);
  assert.equal(pid, v.pid);
  successors.push(pid);
  return v;
}

/** Kills the successors (not children of the harness) when the test ends. */
function killAtCleanup(successors) {
  onCleanup(() => {
    for (const pid of successors) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // gone already
      }
    }
  });
}

/** Admin publishes of {n} to `channel`, one after the other, until stopped; `acked` the n answered 200. */
function publishLoop(srv, channel) {
  const acked = [];
  let stopped = false;
  let failed = 0;
  let n = 0;
  const done = (async () => {
    while (!stopped) {
      n += 1;
      try {
        const r = await request({
          host: srv.adminHost,
          port: srv.adminPort,
          method: "POST",
          path: `/pub?channel=${encodeURIComponent(channel)}`,
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ n }),
          timeout: 20_000,
        });
        if (r.status === 200) acked.push(n);
        else failed += 1;
      } catch {
        failed += 1;
      }
    }
  })();
  return {
    acked,
    failed: () => failed,
    async stop() {
      stopped = true;
      await done;
    },
  };
}

/** The n of the "message" events a recorder got. */
function received(rec) {
  return rec.of("message").map((args) => args[0] && args[0].n);
}

/** Every acked n arrived exactly once and in order (a publish that failed may arrive or not). */
function checkStream(who, got, acked) {
  for (let i = 1; i < got.length; i++) {
    assert.ok(got[i] > got[i - 1], `${who}: out of order or twice at ${i}: ${show(got.slice(Math.max(0, i - 3), i + 3))}`);
  }
  const seen = new Set(got);
  const missing = acked.filter((n) => !seen.has(n));
  assert.deepEqual(missing, [], `${who}: acknowledged publishes missing`);
}

test("ctl upgrade carries Socket.IO sessions over WebSocket and polling, with a publish stream running", { timeout: 60_000 }, async (t) => {
  const srv = await startServer({ set: { socketio_recovery_secs: 120 } });

  // The clients that live through the upgrade.
  // Several polling clients, so that requests forwarded between the two workers are
  // likely when the workers freeze.
  const sockets = {
    wsMain: client(srv.url, { transports: ["websocket"] }),
    wsChat: client(`${srv.url}/chat1`, { transports: ["websocket"], auth: { channels: ["lobby"] } }),
    // Polling first, then upgraded to WebSocket (its session moved to the WebSocket's record).
    upgradedMain: client(srv.url),
  };
  for (let i = 0; i < POLLING; i++) {
    sockets[i ? `pollMain${i}` : "pollMain"] = client(srv.url, { transports: ["polling"] });
    sockets[i ? `pollChat${i}` : "pollChat"] = client(`${srv.url}/chat1`, { transports: ["polling"], auth: { channels: ["lobby"] } });
  }
  const recs = {};
  const disconnects = {};
  for (const [k, s] of Object.entries(sockets)) {
    recs[k] = record(s, { stripOffset: true });
    disconnects[k] = [];
    s.on("disconnect", (reason) => disconnects[k].push(reason));
  }
  await Promise.all(Object.values(sockets).map((s) => connected(s)));
  await transportIs(sockets.upgradedMain, "websocket");
  const ids = Object.fromEntries(Object.entries(sockets).map(([k, s]) => [k, s.id]));

  // A socket whose transport is cut before the upgrade: its recovery is kept, and must be
  // handed over.
  const cut = client(`${srv.url}/chat1`, { transports: ["websocket"], auth: { channels: ["quiet"] } });
  const cutRec = record(cut, { stripOffset: true });
  await connected(cut);
  const cutId = cut.id;
  await publish(srv, "chat1.quiet", { n: 1 });
  await cutRec.wait(1, { event: "message" });
  const cutDown = new Promise((r) => cut.once("disconnect", r));
  cut.io.engine.close();
  await cutDown;
  for (let n = 2; n <= 4; n++) await publish(srv, "chat1.quiet", { n });

  const main = publishLoop(srv, "all");
  const lobby = publishLoop(srv, "chat1.lobby");
  await waitFor(() => main.acked.length >= 20 && lobby.acked.length >= 20, 10_000, "publishes before the upgrade");

  // Two upgrades in a row (the second successor takes over sessions made by the first
  // process), each retried while the server says a transient state is in the way.
  const successors = [];
  killAtCleanup(successors);
  for (let round = 1; round <= 2; round++) {
    const before = { main: main.acked.length, lobby: lobby.acked.length };
    await waitFor(() => main.acked.length >= before.main + 10 && lobby.acked.length >= before.lobby + 10, 15_000, `publishes before upgrade ${round}`);
    const v = await upgrade(t, srv, round, successors);
    // Every session (the polling ones without a socket) and whatever GETs were held.
    assert.ok(v.connections >= Object.keys(sockets).length, show(v));
  }
  // Running (a zombie nobody reaped yet has exited).
  const alive = (pid) => {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
      return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
    } catch {
      return false;
    }
  };
  await waitFor(() => !alive(successors[0]), 10_000, "the first successor exits after handing over");

  // The stream goes on in the successor.
  const before = { main: main.acked.length, lobby: lobby.acked.length };
  await waitFor(
    () => main.acked.length >= before.main + 20 && lobby.acked.length >= before.lobby + 20,
    15_000,
    "publishes after the upgrade",
  );
  await Promise.all([main.stop(), lobby.stop()]);
  assert.ok(main.acked.length > 40 && lobby.acked.length > 40);

  for (const k of Object.keys(sockets)) {
    const loop = k.includes("Main") ? main : lobby;
    const last = loop.acked[loop.acked.length - 1];
    await waitFor(() => received(recs[k]).includes(last), 10_000, () => `${k}: the last acknowledged publish (${last}), got ${received(recs[k]).length}`);
    checkStream(k, received(recs[k]), loop.acked);
  }
  for (const [k, s] of Object.entries(sockets)) {
    assert.deepEqual(disconnects[k], [], `${k} saw a disconnect`);
    assert.equal(s.connected, true, `${k} connected`);
    assert.equal(s.id, ids[k], `${k}: same socket id`);
  }

  // The ids still name their records: a socket's own room reaches it.
  await publish(srv, sockets.wsMain.id, { own: 1 });
  await publish(srv, `chat1.${sockets.pollChat.id}`, { own: 2 });
  await waitFor(() => recs.wsMain.of("message").some((a) => a[0].own === 1), 5_000, "own room (WebSocket)");
  await waitFor(() => recs.pollChat.of("message").some((a) => a[0].own === 2), 5_000, "own room (polling)");

  // Emits with an ack still work, on either transport.
  for (const k of ["wsMain", "pollChat"]) {
    const [ack] = await emitAck(sockets[k], "subscribe", ["after"]);
    assert.equal(ack.ok, true, `${k}: ${show(ack)}`);
    assert.deepEqual(ack.rooms, ["after"]);
  }
  await publish(srv, "after", { after: 1 });
  await publish(srv, "chat1.after", { after: 2 });
  await waitFor(() => recs.wsMain.of("message").some((a) => a[0].after === 1), 5_000, "a room joined after the upgrade (WebSocket)");
  await waitFor(() => recs.pollChat.of("message").some((a) => a[0].after === 2), 5_000, "a room joined after the upgrade (polling)");

  // The socket cut before the upgrade recovers in the successor: same id, what it missed
  // exactly once.
  await publish(srv, "chat1.quiet", { n: 5 });
  cut.connect();
  await connected(cut, 8_000, "reconnect after the upgrade");
  assert.equal(cut.recovered, true, "recovered in the successor");
  assert.equal(cut.id, cutId, "same socket id");
  await cutRec.wait(5, { event: "message" });
  assert.deepEqual(received(cutRec), [1, 2, 3, 4, 5]);

  // The old process is gone; the successor serves the admin port.
  await waitFor(() => srv.exited() !== null, 10_000, "the old process exits");
  assert.equal(srv.exited().code, 0);
});

test("a raw polling session: a held GET and a binary event half received cross the upgrade", { timeout: 60_000 }, async (t) => {
  const srv = await startServer({ set: { client_publish: ["*"] } });
  const successors = [];
  killAtCleanup(successors);
  const watcher = client(srv.url, { transports: ["websocket"] });
  const seen = record(watcher);
  await connected(watcher);

  const open = await eioHandshake(srv);
  const packets = [];
  const get = () => request({ port: srv.port, path: eioPath({ sid: open.sid }), timeout: 30_000 });
  // The packets of the next GET, which must be answered 200 with the session open.
  const poll = async () => {
    const r = await get();
    assert.equal(r.status, 200, r.text);
    const p = eioPackets(r.text);
    assert.ok(!p.includes("1"), `the session was closed: ${show(packets)} then ${show(p)}`);
    return p;
  };
  const post = async (body) => {
    const r = await request({ port: srv.port, method: "POST", path: eioPath({ sid: open.sid }), headers: { "Content-Type": "text/plain;charset=UTF-8" }, body });
    assert.equal(r.status, 200, `POST ${body}: ${r.status} ${r.text}`);
  };
  await post("40");
  const connect = await get();
  assert.match(connect.text, /^40\{"sid":"/, connect.text);
  const socketId = JSON.parse(connect.text.slice(2)).sid;
  // A binary event with one attachment and an ack id: the attachment comes after the upgrade.
  await post('451-7["chat",{"_placeholder":true,"num":0}]');
  // A GET with nothing to answer: held across the upgrade, on its connection.
  const held = get();

  await upgrade(t, srv, 1, successors);

  await post("bAQID");
  // The ack, and the broadcast of the event (to this socket too, as it is in "all").
  const first = await held;
  assert.equal(first.status, 200, first.text);
  packets.push(...eioPackets(first.text));
  assert.ok(!packets.includes("1"), `the session was closed: ${show(packets)}`);
  await waitFor(
    async () => {
      if (!packets.some((p) => p.startsWith("437"))) packets.push(...(await poll()));
      return packets.some((p) => p.startsWith("437"));
    },
    10_000,
    () => `the ack, got ${show(packets)}`,
  );
  const ack = JSON.parse(packets.find((p) => p.startsWith("437")).slice(3));
  assert.equal(ack[0].ok, true, show(ack));
  assert.equal(ack[0].seq, 1, show(ack));
  await seen.wait(1);
  assert.deepEqual(seen.events(), [["chat", Buffer.from([1, 2, 3])]], show(seen.events()));

  // The socket id still routes (its own room), and the session still polls.
  await publish(srv, socketId, "own");
  await waitFor(
    async () => {
      if (!packets.includes('42["message","own"]')) packets.push(...(await poll()));
      return packets.includes('42["message","own"]');
    },
    10_000,
    () => `the own-room message, got ${show(packets)}`,
  );
});
