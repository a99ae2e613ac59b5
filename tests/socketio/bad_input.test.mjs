// Bad input at the Engine.IO / Socket.IO level, with raw HTTP (node's http, a fresh
// connection per request) and raw WebSocket (the ws package): the error answers of the
// contract (400 JSON {code, message}, 413), sessions closed on a protocol error, overlapping
// and flooding polls answered without a hang, and the server still serving afterwards.

import test from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import {
  useHarness,
  T,
  WAIT,
  SETTLE,
  startServer,
  client,
  record,
  connected,
  connectError,
  publish,
  request,
  eioPath,
  eioHandshake,
  eioPackets,
  onCleanup,
  withTimeout,
  sleep,
  show,
} from "./harness.mjs";

useHarness();

const ERR = {
  0: "Transport unknown",
  1: "Session ID unknown",
  2: "Bad handshake method",
  3: "Bad request",
  4: "Forbidden",
  5: "Unsupported protocol version",
};

/** Asserts an Engine.IO error answer: HTTP `status`, JSON {code, message}. */
function assertEioError(r, status, code, what) {
  assert.equal(r.status, status, `${what}: HTTP ${r.status} ${JSON.stringify(r.text)}`);
  assert.match(String(r.headers["content-type"]), /application\/json/, `${what}: content-type ${r.headers["content-type"]}`);
  assert.deepEqual(r.json(), { code, message: ERR[code] }, `${what}: ${r.text}`);
}

/**
 * Asserts the refusal of a WebSocket upgrade: HTTP `status`, and a body that is the JSON
 * error or (as socket.io's own server writes for upgrades) its message as plain text.
 */
function assertUpgradeError(r, status, code, what) {
  assert.equal(r.status, status, `${what}: HTTP ${r.status} ${JSON.stringify(r.text)}`);
  if (r.text.trim() === ERR[code]) return;
  let v;
  try {
    v = JSON.parse(r.text);
  } catch {
    assert.fail(`${what}: body ${JSON.stringify(r.text)} is neither the JSON error nor "${ERR[code]}"`);
  }
  assert.deepEqual(v, { code, message: ERR[code] }, `${what}: ${r.text}`);
}

const get = (srv, query, opts = {}) => request({ port: srv.port, path: eioPath(query), ...opts });
const post = (srv, query, body, opts = {}) =>
  request({
    port: srv.port,
    method: "POST",
    path: eioPath(query),
    headers: { "Content-Type": "text/plain;charset=UTF-8" },
    body,
    ...opts,
  });

/**
 * Asserts that session `sid` is closed: a GET is answered 400 {code:1}, or (once) with a
 * payload ending in the close packet "1" and then 400 {code:1}; a POST gets 400 {code:1}.
 */
async function assertClosed(srv, sid, what) {
  let r = await labelled(`${what}: first GET`, get(srv, { sid }));
  if (r.status === 200) {
    const packets = eioPackets(r.text);
    assert.equal(packets.at(-1), "1", `${what}: a GET on a closing session gets the close packet, got ${JSON.stringify(r.text)}`);
    r = await labelled(`${what}: second GET`, get(srv, { sid }));
  }
  assertEioError(r, 400, 1, `${what}: GET after the close`);
  assertEioError(await post(srv, { sid }, "6"), 400, 1, `${what}: POST after the close`);
}

/** `p`, its rejection prefixed with `what` (which request of a test timed out). */
function labelled(what, p) {
  return p.catch((e) => {
    e.message = `${what}: ${e.message}`;
    throw e;
  });
}

/** Asserts that a GET held on a session that is being closed was answered with the close packet or 400 {code:1}. */
function assertClosingAnswer(r, what) {
  if (r.status === 200) {
    assert.equal(eioPackets(r.text).at(-1), "1", `${what}: ${JSON.stringify(r.text)}`);
  } else {
    assertEioError(r, 400, 1, what);
  }
}

/** A raw WebSocket with a message queue. */
function rawWs(url, options = {}) {
  const ws = new WebSocket(url, { perMessageDeflate: false, ...options });
  onCleanup(() => ws.terminate());
  const queue = [];
  const waiters = [];
  ws.on("message", (data, isBinary) => {
    const m = isBinary ? data : data.toString("utf8");
    const w = waiters.shift();
    if (w) w(m);
    else queue.push(m);
  });
  const closed = new Promise((resolve) => ws.on("close", (code, reason) => resolve({ code, reason: reason.toString() })));
  const opened = new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
    ws.once("unexpected-response", (_req, res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        const e = new Error(`HTTP ${res.statusCode} ${text}`);
        e.response = { status: res.statusCode, headers: res.headers, text, json: () => JSON.parse(text) };
        reject(e);
      });
    });
  });
  opened.catch(() => {});
  return {
    ws,
    opened,
    closed,
    next(ms = WAIT) {
      if (queue.length) return Promise.resolve(queue.shift());
      return withTimeout(new Promise((r) => waiters.push(r)), ms, "a WebSocket message");
    },
    send: (m) => ws.send(m),
  };
}

/** The HTTP error answer to a WebSocket upgrade (rejects if the upgrade succeeds). */
async function wsRefusal(url, options) {
  const w = rawWs(url, options);
  try {
    await withTimeout(w.opened, WAIT, `upgrade of ${url}`);
  } catch (e) {
    if (e.response) return e.response;
    throw e;
  }
  throw new Error(`the upgrade of ${url} succeeded`);
}

const wsUrl = (srv, query) => `ws://${srv.sub}${eioPath({ transport: "websocket", ...query })}`;

/** Raw Socket.IO over a direct WebSocket: open packet, CONNECT to "/", CONNECT answer. */
async function rawSioWs(srv) {
  const w = rawWs(wsUrl(srv, {}));
  await withTimeout(w.opened, WAIT, "websocket open");
  const open = await w.next();
  assert.equal(open[0], "0", open);
  const o = JSON.parse(open.slice(1));
  w.send("40");
  const conn = await w.next();
  assert.match(conn, /^40\{/, conn);
  const c = JSON.parse(conn.slice(2));
  assert.equal(typeof c.sid, "string");
  return { ...w, open: o, sioSid: c.sid };
}

// ---------------------------------------------------------------------------- tests

test("the polling handshake answers an open packet with the configured values", T, async () => {
  const srv = await startServer();
  const o = await eioHandshake(srv);
  assert.equal(typeof o.sid, "string");
  assert.ok(o.sid.length > 0);
  assert.deepEqual({ ...o, sid: "-" }, { sid: "-", upgrades: ["websocket"], pingInterval: 25000, pingTimeout: 20000, maxPayload: 1000000 });
  // The path without the trailing slash is served too.
  const r = await request({ port: srv.port, path: eioPath().replace("/socket.io/", "/socket.io") });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.text[0], "0");
  // Two handshakes, two sessions.
  assert.notEqual((await eioHandshake(srv)).sid, o.sid);
});

test("unknown sid -> 400 {code:1}", T, async () => {
  const srv = await startServer();
  assertEioError(await get(srv, { sid: "nope" }), 400, 1, "GET");
  assertEioError(await post(srv, { sid: "nope" }, "40"), 400, 1, "POST");
  const o = await eioHandshake(srv);
  assertEioError(await get(srv, { sid: o.sid + "x" }), 400, 1, "GET, sid with a suffix");
  assertUpgradeError(await wsRefusal(wsUrl(srv, { sid: "nope" })), 400, 1, "websocket upgrade with an unknown sid");
});

test("unknown transport -> 400 {code:0}; EIO other than 4 -> 400 {code:5}; POST without sid -> 400 {code:2}", T, async () => {
  const srv = await startServer();
  assertEioError(await get(srv, { transport: "carrier-pigeon" }), 400, 0, "transport=carrier-pigeon");
  assertEioError(await get(srv, { transport: null }), 400, 0, "no transport");
  for (const eio of ["3", "2", "5", "x"]) {
    assertEioError(await get(srv, { EIO: eio }), 400, 5, `EIO=${eio}`);
  }
  assertUpgradeError(await wsRefusal(wsUrl(srv, { EIO: "3" })), 400, 5, "websocket upgrade with EIO=3");
  assertEioError(await post(srv, {}, "40"), 400, 2, "POST without sid");
  // Still serving.
  await eioHandshake(srv);
});

test("a malformed packet in a POST closes the session", T, async () => {
  const srv = await startServer();
  // Without a held GET: the next GET finds the session closed.
  const o1 = await eioHandshake(srv);
  const p1 = await post(srv, { sid: o1.sid }, "9zz");
  assert.ok([200, 400].includes(p1.status), `POST 9zz: HTTP ${p1.status} ${p1.text}`);
  await assertClosed(srv, o1.sid, "after 9zz");

  // With a held GET: it is answered (close packet, or 400 {code:1}).
  const o2 = await eioHandshake(srv);
  const held = get(srv, { sid: o2.sid });
  await sleep(100);
  await post(srv, { sid: o2.sid }, "9zz");
  assertClosingAnswer(await held, "the held GET");
  await assertClosed(srv, o2.sid, "after 9zz, held GET");

  // A malformed Socket.IO packet (bad JSON in an EVENT) closes it too.
  const o3 = await eioHandshake(srv);
  assert.equal((await post(srv, { sid: o3.sid }, "40")).status, 200);
  const c = await get(srv, { sid: o3.sid });
  assert.equal(c.status, 200);
  assert.match(c.text, /^40\{"sid":"[^"]+"/, c.text);
  const held3 = get(srv, { sid: o3.sid });
  await sleep(100);
  await post(srv, { sid: o3.sid }, '42["chat",');
  assertClosingAnswer(await held3, "the held GET after a bad EVENT");
  await assertClosed(srv, o3.sid, "after a bad EVENT");

  // The server still serves new clients.
  const s = client(srv.url, { transports: ["polling"] });
  await connected(s);
});

test("a malformed packet over a direct WebSocket closes it", T, async () => {
  const srv = await startServer();
  const w = await rawSioWs(srv);
  assert.deepEqual(w.open.upgrades, [], "no upgrades from websocket");
  await publish(srv, "all", "hi");
  assert.equal(await w.next(), '42["message","hi"]');
  w.send("9zz");
  await withTimeout(w.closed, WAIT, "close after 9zz");

  const w2 = await rawSioWs(srv);
  w2.send('42["chat",');
  await withTimeout(w2.closed, WAIT, "close after a bad EVENT");
});

test("an unknown namespace gets connect_error Invalid namespace (socketio_namespaces)", T, async () => {
  const srv = await startServer({ set: { socketio_namespaces: ["/", "/chat1"] } });
  const ok1 = client(srv.url, { transports: ["websocket"] });
  const ok2 = client(srv.url + "/chat1", { transports: ["websocket"] });
  await Promise.all([connected(ok1), connected(ok2)]);
  const bad = client(srv.url + "/chat2", { transports: ["websocket"] });
  const err = await connectError(bad);
  assert.equal(err.message, "Invalid namespace");
  const bad2 = client(srv.url + "/nope", { transports: ["polling"] });
  assert.equal((await connectError(bad2)).message, "Invalid namespace");

  // Raw: the CONNECT_ERROR packet, and the session stays usable for "/".
  const o = await eioHandshake(srv);
  assert.equal((await post(srv, { sid: o.sid }, "40/nope,")).status, 200);
  const r = await get(srv, { sid: o.sid });
  assert.equal(r.status, 200);
  assert.deepEqual(eioPackets(r.text), ['44/nope,{"message":"Invalid namespace"}']);
  assert.equal((await post(srv, { sid: o.sid }, "40")).status, 200);
  const r2 = await get(srv, { sid: o.sid });
  assert.match(r2.text, /^40\{"sid":"[^"]+"/, r2.text);
});

test("a POST over maxPayload -> 413 and the session is gone; a WebSocket message over it closes the socket", T, async () => {
  const srv = await startServer({ set: { socketio_max_payload: 1000 } });
  const o = await eioHandshake(srv);
  assert.equal(o.maxPayload, 1000);
  assert.equal((await post(srv, { sid: o.sid }, "40")).status, 200);
  assert.match((await get(srv, { sid: o.sid })).text, /^40\{/);
  const packet = (len) => {
    const head = '42["chat","';
    const tail = '"]';
    return head + "x".repeat(len - head.length - tail.length) + tail;
  };
  assert.equal(packet(1000).length, 1000);
  const atLimit = await labelled("POST of 1000 bytes", post(srv, { sid: o.sid }, packet(1000)));
  assert.equal(atLimit.status, 200, `a 1000-byte body is within maxPayload: HTTP ${atLimit.status} ${atLimit.text}`);
  // Without client_publish the "chat" is refused with an "error" event: read it, so that
  // nothing is queued on the session any more.
  const refused = await labelled("GET of the refusal", get(srv, { sid: o.sid }));
  assert.equal(refused.status, 200);
  assert.match(refused.text, /^42\["error",\{"event":"chat","code":403,/, refused.text);
  const over = await labelled("POST of 1001 bytes", post(srv, { sid: o.sid }, packet(1001)));
  assert.equal(over.status, 413, `HTTP ${over.status} ${over.text}`);
  await assertClosed(srv, o.sid, "after the 413");

  // A large body (many times the limit) is refused the same way.
  const o2 = await eioHandshake(srv);
  const big = await post(srv, { sid: o2.sid }, "4" + "y".repeat(200_000)).catch((e) => ({ status: `error ${e.code || e.message}` }));
  assert.ok(big.status === 413 || /EPIPE|ECONNRESET/.test(String(big.status)), `HTTP ${big.status}`);
  await assertClosed(srv, o2.sid, "after a 200 kB body");

  // WebSocket: 1000 bytes pass, 1001 bytes close it.
  const w = await rawSioWs(srv);
  w.send(packet(1000));
  // Without client_publish the 1000-byte "chat" gets a refusal ("error" event); the socket stays.
  const refusal = await w.next();
  assert.match(refusal, /^42\["error",\{/, refusal);
  assert.equal(JSON.parse(refusal.slice(2))[1].code, 403, refusal);
  await publish(srv, "all", "still open");
  assert.equal(await w.next(), '42["message","still open"]');
  w.send(packet(1001));
  await withTimeout(w.closed, WAIT, "close after a 1001-byte message");
});

test("protocol errors close the session whichever worker the request lands on (12 sessions each)", T, async () => {
  // Every request is a fresh connection that SO_REUSEPORT puts on either worker: over 12
  // sessions, the faulty request lands on the worker that holds the session and on the
  // other one (which forwards it), unless all land alike (2^-11).
  const srv = await startServer({ workers: 2, set: { socketio_max_payload: 1000 } });
  for (let i = 0; i < 12; i++) {
    const o = await eioHandshake(srv);
    const over = await labelled(`413, session ${i}: POST of 1001 bytes`, post(srv, { sid: o.sid }, "4" + "z".repeat(1000)));
    assert.equal(over.status, 413, `session ${i}: HTTP ${over.status} ${over.text}`);
    await assertClosed(srv, o.sid, `session ${i}, after the 413`);
  }
  for (let i = 0; i < 12; i++) {
    const o = await eioHandshake(srv);
    await labelled(`9zz, session ${i}: POST`, post(srv, { sid: o.sid }, "9zz"));
    await assertClosed(srv, o.sid, `session ${i}, after 9zz`);
  }
  for (let i = 0; i < 12; i++) {
    const o = await eioHandshake(srv);
    const first = labelled(`overlap, session ${i}: first GET`, get(srv, { sid: o.sid }));
    await sleep(50);
    const second = await labelled(`overlap, session ${i}: second GET`, get(srv, { sid: o.sid }));
    assert.equal(second.status, 400, `session ${i}: second GET: HTTP ${second.status} ${second.text}`);
    assertClosingAnswer(await first, `session ${i}: the first GET`);
    await assertClosed(srv, o.sid, `session ${i}, after overlapping GETs`);
  }
});

test("overlapping GETs on one sid: the second is answered 400 and the session is closed", T, async () => {
  const srv = await startServer();
  const o = await eioHandshake(srv);
  const first = get(srv, { sid: o.sid });
  await sleep(100);
  const second = await get(srv, { sid: o.sid });
  assert.equal(second.status, 400, `second GET: HTTP ${second.status} ${second.text}`);
  assertClosingAnswer(await first, "the first GET");
  await assertClosed(srv, o.sid, "after overlapping GETs");
});

test("a poll flood on one sid (200 concurrent GETs): every request is answered, the server still serves", T, async () => {
  const srv = await startServer();
  const o = await eioHandshake(srv);
  const answers = await withTimeout(
    Promise.all(
      Array.from({ length: 200 }, () =>
        get(srv, { sid: o.sid }, { timeout: 15_000 }).then(
          (r) => ({ status: r.status, text: r.text }),
          (e) => ({ status: "error", text: e.message }),
        ),
      ),
    ),
    16_000,
    "200 concurrent GETs",
  );
  const bad = answers.filter((a) => !(a.status === 400 || (a.status === 200 && eioPackets(a.text).every((p) => p === "1" || p === "6"))));
  assert.deepEqual(bad, [], `unexpected answers: ${show(bad.slice(0, 5))}`);
  assert.ok(answers.filter((a) => a.status === 400).length >= 199, "at most one GET is held");
  await assertClosed(srv, o.sid, "after the flood");

  assert.equal(srv.exited(), null, "still running");
  const s = client(srv.url); // default transports, upgrade included
  const rec = record(s);
  await connected(s);
  await publish(srv, "all", "after the flood");
  await rec.wait(1);
  await sleep(SETTLE);
  assert.deepEqual(rec.events(), [["message", "after the flood"]]);
});

test("a WebSocket upgrade from an origin outside allowed_origins gets 403", T, async () => {
  const srv = await startServer({ set: { allowed_origins: ["http://good.example"] } });
  const r = await wsRefusal(wsUrl(srv, {}), { origin: "http://evil.example" });
  assert.equal(r.status, 403, r.text);
  const w = rawWs(wsUrl(srv, {}), { origin: "http://good.example" });
  await withTimeout(w.opened, WAIT, "upgrade from an allowed origin");
  assert.equal((await w.next())[0], "0");
});
