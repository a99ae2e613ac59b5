// The browser client library (engine/static/pushedge.js, served at /pushedge.js and /pushedge.mjs) in headless
// Chromium, against a real pushedge (tests/socketio/harness.mjs starts it, the pages, and the browser).
//
//   cd tests/web && PUSHEDGE_BIN=../../target/debug/pushedge node --test --test-concurrency=1 client.test.mjs
//
// Every page is served by a static server on another origin than pushedge (startStatic), so every request the
// library makes is cross-origin. Apart from test 1 (which checks the server's own routes), the library is loaded
// from the subscriber port's /pushedge.js when it serves it, else from a copy of engine/static/pushedge.js served
// by the test (so the library can be tested against a server without the route).

import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import {
  REPO,
  useHarness,
  startServer,
  startStatic,
  launchChromium,
  publish,
  request,
  onCleanup,
  sleep,
  waitFor,
} from "../socketio/harness.mjs";

useHarness();

const T = { timeout: 30_000 };
const WAIT = 10_000;
const LIB = path.join(REPO, "engine", "static", "pushedge.js");
const MODULE_TAIL = "export default Pushedge; export { Pushedge };";
let uniq = 0;
const chan = (p) => `${p}${process.pid}x${Date.now().toString(36)}x${uniq++}`;

/** A server of the library file itself (application/javascript, CORS *), for servers without /pushedge.js. */
async function serveLibCopy() {
  const srv = http.createServer((req, res) => {
    const js = fs.readFileSync(LIB, "utf8");
    const p = new URL(req.url, "http://x").pathname;
    const body = p === "/pushedge.js" ? js : p === "/pushedge.mjs" ? `${js}\n${MODULE_TAIL}\n` : null;
    if (body === null) {
      res.writeHead(404);
      return res.end();
    }
    res.writeHead(200, { "Content-Type": "application/javascript; charset=utf-8", "Access-Control-Allow-Origin": "*" });
    res.end(body);
  });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  onCleanup(() => new Promise((r) => (srv.closeAllConnections(), srv.close(() => r()))));
  return { url: `http://127.0.0.1:${srv.address().port}`, port: srv.address().port };
}

/** Where pages load the library from: the server's /pushedge.js when it serves this file, else a copy served here. */
async function libBase(srv) {
  const r = await request({ port: srv.port, path: "/pushedge.js" }).catch(() => null);
  if (r && r.status === 200 && r.text === fs.readFileSync(LIB, "utf8")) return { url: srv.url, ports: [] };
  const copy = await serveLibCopy();
  const why = r && r.status === 200 ? "another version of the file (a stale build)" : `HTTP ${r && r.status}`;
  process.stderr.write(`# ${srv.url}/pushedge.js: ${why}; loading engine/static/pushedge.js from ${copy.url}\n`);
  return { url: copy.url, ports: [copy.port] };
}

// The page: the library, and start() which makes a client and records everything it and its channels emit.
const RECORDER = `
window.log = { msgs: {}, contents: {}, events: [], transports: [], opens: [] };
window.start = (P, url, opts, chans) => {
  const c = (window.c = new P(url, opts));
  c.on("open", (e) => (log.opens.push(e.transport), log.events.push(["open", e.transport])));
  c.on("close", (e) => log.events.push(["close", e.transport, e.reason || e.code]));
  c.on("transport", (t) => log.transports.push(t));
  c.on("error", (e) => log.events.push(["error", String(e && e.message)]));
  c.on("refresh", (m) => log.events.push(["refresh", m]));
  for (const [name, since] of chans) window.sub(name, since);
  return true;
};
window.sub = (name, since) => {
  const ch = c.subscribe(name, since == null ? {} : { since });
  log.msgs[name] = [];
  log.contents[name] = [];
  ch.on("message", (m) => (log.msgs[name].push(m.seq), log.contents[name].push(m.content)));
  for (const ev of ["gap", "reset", "close", "join", "leave", "error"]) {
    ch.on(ev, (x) => log.events.push([name + ":" + ev, x instanceof Error ? { message: x.message, code: x.code } : x]));
  }
  return true;
};`;

function page(src, { module = false } = {}) {
  const load = module
    ? `<script type="module">import Pushedge, { Pushedge as Named } from ${JSON.stringify(src)};
         window.Mod = { same: Pushedge === Named, type: typeof Pushedge }; window.P = Pushedge; window.loaded = true;</script>`
    : `<script src=${JSON.stringify(src)}></script><script>window.P = window.Pushedge; window.loaded = true;</script>`;
  return `<!doctype html><meta charset="utf-8"><title>pushedge client test</title><body><script>${RECORDER}</script>${load}</body>`;
}

/** A browser with pages allowed to reach `ports`; opens `url` in a new context (routes applied first). */
async function openPage(browser, url, routes) {
  const ctx = await browser.newContext();
  const pg = await ctx.newPage();
  const errors = [];
  pg.on("pageerror", (e) => errors.push(e.message));
  if (process.env.WEB_DEBUG) {
    pg.on("console", (m) => process.stderr.write(`console: ${m.text()}\n`));
    pg.on("request", (r) => process.stderr.write(`request: ${r.url()}\n`));
    pg.on("requestfailed", (r) => process.stderr.write(`failed: ${r.url()} ${r.failure() && r.failure().errorText}\n`));
  }
  if (routes) await routes(pg);
  await pg.goto(url);
  await pg.waitForFunction(() => window.loaded === true, null, { timeout: WAIT });
  pg.errors = errors;
  return pg;
}

async function setup({ set = {}, module = false } = {}) {
  const srv = await startServer({ set: { socketio: null, ...set } });
  const lib = await libBase(srv);
  const st = await startStatic({
    "/classic": page(`${lib.url}/pushedge.js`),
    "/module": page(`${lib.url}/pushedge.mjs`, { module: true }),
  });
  const browser = await launchChromium({ ports: [srv.port, st.port, ...lib.ports] });
  return { srv, st, browser, lib };
}

const log = (pg) => pg.evaluate(() => window.log);
async function waitLog(pg, cond, what) {
  let last;
  try {
    await waitFor(async () => cond((last = await log(pg))), WAIT, what);
    return last;
  } catch (e) {
    e.message += `\nlog: ${JSON.stringify(last).slice(0, 3000)}`;
    throw e;
  }
}
const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

// 1. Served by pushedge to a page of another origin: /pushedge.js as a classic script (window.Pushedge) and
//    /pushedge.mjs as a module (default and named export, the same class); each subscribes two channels on one
//    connection and receives what is published to both, in order; the routes' headers.
test("1. /pushedge.js and /pushedge.mjs from the subscriber port, two channels on one connection", T, async () => {
  const srv = await startServer({ set: { socketio: null } });
  const js = await request({ port: srv.port, path: "/pushedge.js", headers: { Origin: "http://elsewhere.example" } });
  assert.equal(js.status, 200, `GET /pushedge.js: HTTP ${js.status} ${js.text.slice(0, 200)}`);
  assert.match(js.headers["content-type"], /javascript/);
  assert.equal(js.headers["cache-control"], "public, max-age=300");
  assert.ok(js.headers["access-control-allow-origin"], "CORS header on /pushedge.js");
  assert.equal(js.text, fs.readFileSync(LIB, "utf8"), "/pushedge.js is engine/static/pushedge.js (rebuild the server?)");
  const mjs = await request({ port: srv.port, path: "/pushedge.mjs" });
  assert.equal(mjs.status, 200);
  assert.match(mjs.headers["content-type"], /javascript/);
  assert.equal(mjs.headers["cache-control"], "public, max-age=300");
  assert.ok(mjs.text.startsWith(js.text), "/pushedge.mjs starts with the text of /pushedge.js");
  assert.match(mjs.text.slice(js.text.length), /^\s*export default Pushedge;\s*export \{ Pushedge \};\s*$/, "then the export line");

  const st = await startStatic({
    "/classic": page(`${srv.url}/pushedge.js`),
    "/module": page(`${srv.url}/pushedge.mjs`, { module: true }),
  });
  const browser = await launchChromium({ ports: [srv.port, st.port] });
  for (const kind of ["classic", "module"]) {
    const pg = await openPage(browser, `${st.url}/${kind}`);
    if (kind === "module") {
      assert.deepEqual(await pg.evaluate(() => window.Mod), { same: true, type: "function" });
    } else {
      assert.equal(await pg.evaluate(() => typeof window.Pushedge), "function");
    }
    const [a, b] = [chan("a"), chan("b")];
    await pg.evaluate(([url, a, b]) => start(P, url, {}, [[a, 1], [b, 1]]), [srv.url, a, b]);
    await waitLog(pg, (l) => l.opens.length === 1, "open");
    for (let i = 1; i <= 3; i++) {
      await publish(srv, a, `a${i}`);
      await publish(srv, b, `b${i}`);
    }
    const l = await waitLog(pg, (l) => l.msgs[a].length === 3 && l.msgs[b].length === 3, "3 messages on each channel");
    assert.deepEqual(l.msgs[a], [1, 2, 3]);
    assert.deepEqual(l.msgs[b], [1, 2, 3]);
    assert.deepEqual(l.contents[a], ["a1", "a2", "a3"]);
    assert.deepEqual(l.contents[b], ["b1", "b2", "b3"]);
    assert.deepEqual(l.opens, ["ws"], `${kind}: one WebSocket connection for both channels`);
    assert.deepEqual(pg.errors, []);
  }
});

// 2. A connection dropped twice in the middle of a stream (the test hook c._debugDrop() closes the underlying
//    WebSocket / EventSource / held poll as a network failure would) while the backend keeps publishing to two
//    channels: every transport reconnects on its own, resumes each channel from its own seq and epoch, and each
//    channel delivers exactly 1..40 once, in order (no loss, no duplicate), with no gap or reset.
for (const transport of ["ws", "sse", "poll"]) {
  test(`2. ${transport}: dropped connections mid-stream lose and repeat nothing`, T, async () => {
    const { srv, st, browser } = await setup();
    const pg = await openPage(browser, `${st.url}/classic`);
    const [a, b] = [chan("a"), chan("b")];
    const opts = { transports: [transport], backoff: { min: 50, max: 400 } };
    await pg.evaluate(([url, opts, a, b]) => start(P, url, opts, [[a, 1], [b, 1]]), [srv.url, opts, a, b]);
    await waitLog(pg, (l) => l.opens.length === 1, "open");
    const N = 40;
    for (let i = 1; i <= N; i++) {
      await publish(srv, a, `a${i}`);
      if (i % 2) await publish(srv, b, `b${i}`);
      if (i % 2 === 0) await publish(srv, b, `b${i}`);
      if (i === 12 || i === 27) {
        await waitLog(pg, (l) => l.msgs[a].length >= i - 4, `some of the first ${i} messages`);
        await pg.evaluate(() => c._debugDrop());
      }
      await sleep(5);
    }
    const l = await waitLog(pg, (l) => l.msgs[a].length >= N && l.msgs[b].length >= N, `${N} messages on each channel`);
    await sleep(300); // anything repeated late would show
    const fin = await log(pg);
    assert.deepEqual(fin.msgs[a], range(1, N), "channel a: 1..N once each");
    assert.deepEqual(fin.msgs[b], range(1, N), "channel b: 1..N once each");
    assert.deepEqual(fin.contents[a], range(1, N).map((i) => `a${i}`));
    assert.ok(l.opens.length >= 3, `reconnected after each drop: opens ${JSON.stringify(l.opens)}`);
    assert.ok(l.opens.every((t) => t === transport), `stayed on ${transport}: ${JSON.stringify(l.opens)}`);
    assert.deepEqual(fin.events.filter((e) => /:(gap|reset)$/.test(e[0])), [], "no gap, no reset");
    assert.deepEqual(pg.errors, []);
  });
}

// 3. Fallback: with every WebSocket closed by the browser (page.routeWebSocket -> ws.close()) the client tries
//    ws, then ends on SSE and receives there; with /sse aborted as well (page.route), it ends on long-poll and
//    receives there. The transports tried, in order, are reported through the "transport" event.
test("3. fallback: WebSocket blocked -> SSE; WebSocket and SSE blocked -> long-poll", T, async () => {
  const { srv, st, browser } = await setup();
  const blockWs = (pg) => pg.routeWebSocket(/.*/, (ws) => ws.close());
  const blockSse = (pg) => pg.route(/\/sse\?/, (r) => r.abort());
  for (const [routes, want, tried] of [
    [blockWs, "sse", ["ws", "sse"]],
    [async (pg) => (await blockWs(pg), await blockSse(pg)), "poll", ["ws", "sse", "poll"]],
  ]) {
    const pg = await openPage(browser, `${st.url}/classic`, routes);
    const a = chan("a");
    await pg.evaluate(([url, a]) => start(P, url, { backoff: { min: 50, max: 200 } }, [[a, 1]]), [srv.url, a]);
    await waitLog(pg, (l) => l.opens.includes(want), `open on ${want}`);
    for (let i = 1; i <= 3; i++) await publish(srv, a, `m${i}`);
    const l = await waitLog(pg, (l) => l.msgs[a].length === 3, "3 messages");
    assert.deepEqual(l.msgs[a], [1, 2, 3]);
    assert.deepEqual(l.transports, tried, "transports tried in order");
    assert.equal(await pg.evaluate(() => [c.transport, c.working, c.state].join()), `${want},${want},open`);
  }
});

// 4. Client publish over the WebSocket with an op id: the promise resolves to the message's {seq, epoch} (the same
//    as the subscriber sees, JSON content arriving as JSON); a publish the server refuses (a channel outside
//    client_publish) rejects with the server's error (code 403) and the connection goes on; over SSE, publish
//    rejects at once with an error naming the WebSocket.
test("4. publish: ack with seq and epoch, a refused publish rejects, no publish over SSE", T, async () => {
  const { srv, st, browser } = await setup({ set: { client_publish: ["chat.*"] } });
  const pg = await openPage(browser, `${st.url}/classic`);
  const room = chan("chat.r");
  await pg.evaluate(([url, room]) => start(P, url, {}, [[room, 1]]), [srv.url, room]);
  await waitLog(pg, (l) => l.opens.length === 1, "open");
  const acks = await pg.evaluate(async (room) => [await c.publish(room, { text: "hi" }), await c.publish(room, "plain")], room);
  assert.equal(acks[0].seq, 1);
  assert.equal(acks[1].seq, 2);
  assert.match(acks[0].epoch, /^[0-9a-z]{1,16}$/);
  assert.equal(acks[1].epoch, acks[0].epoch);
  const l = await waitLog(pg, (l) => l.msgs[room].length === 2, "own messages back");
  assert.deepEqual(l.contents[room], [{ text: "hi" }, "plain"], "JSON content arrives as JSON");
  const refused = await pg.evaluate(async (ch) => {
    try {
      await c.publish(ch, "no");
      return null;
    } catch (e) {
      return { message: e.message, code: e.code, op: e.op };
    }
  }, chan("news"));
  assert.ok(refused, "a publish outside client_publish rejects");
  assert.equal(refused.code, 403, JSON.stringify(refused));
  assert.equal(refused.op, "pub");
  assert.ok(refused.message.length > 0);
  const after = await pg.evaluate((room) => c.publish(room, "still up"), room);
  assert.equal(after.seq, 3, "the connection goes on after a refusal");
  const sse = await pg.evaluate(async ([url, room]) => {
    const s = new P(url, { transports: ["sse"] });
    s.subscribe(room);
    try {
      await s.publish(room, "x");
      return null;
    } catch (e) {
      return e.message;
    } finally {
      s.close();
    }
  }, [srv.url, room]);
  assert.match(sse || "", /WebSocket/, "publish over SSE rejects naming the WebSocket");
});

// 5. Presence between two pages on a channel matching `presence` (presence_public = true): A alone is listed as
//    one anonymous member "anon:<conn id>" (c.presence() over the WebSocket); A sees B's join event (the member that
//    is not A; whether A also gets its own join is not asserted), A's c.presence() then lists 2 members including B,
//    an SSE client's presence() (GET /presence on the subscriber port) says 2 as well, and when B closes A gets
//    B's leave event (the same member) and presence counts 1 again.
test("5. presence: list and join/leave between two pages", T, async () => {
  const { srv, st, browser } = await setup({ set: { presence: ["chat.*"], presence_public: true } });
  const room = chan("chat.p");
  const A = await openPage(browser, `${st.url}/classic`);
  await A.evaluate(([url, room]) => start(P, url, {}, [[room, null]]), [srv.url, room]);
  await waitLog(A, (l) => l.opens.length === 1, "A open");
  let alone;
  await waitFor(async () => (alone = await A.evaluate((room) => c.presence(room), room)).count === 1, WAIT, "A alone");
  const self = alone.members[0].sub; // A's own member (A may see its own join too)
  assert.match(self, /^anon:/, JSON.stringify(alone));
  const B = await openPage(browser, `${st.url}/classic`);
  await B.evaluate(([url, room]) => start(P, url, {}, [[room, null]]), [srv.url, room]);
  const isB = (e) => e[0] === `${room}:join` && e[1].sub !== self;
  const la = await waitLog(A, (l) => l.events.some(isB), "A sees B join");
  const join = la.events.find(isB)[1];
  assert.match(join.sub, /^anon:/, JSON.stringify(join));
  let p;
  await waitFor(async () => (p = await A.evaluate((room) => c.presence(room), room)).count === 2, 3_000, () => `presence count 2: ${JSON.stringify(p)}`);
  assert.equal(p.members.length, 2);
  assert.ok(p.members.some((m) => m.sub === join.sub), "the joined member is listed");
  const viaGet = await A.evaluate(async ([url, room]) => {
    const s = new P(url, { transports: ["sse"] });
    try {
      return await s.presence(room);
    } finally {
      s.close();
    }
  }, [srv.url, room]);
  assert.equal(viaGet.count, 2, `GET /presence: ${JSON.stringify(viaGet)}`);
  await B.evaluate(() => c.close());
  const l2 = await waitLog(A, (l) => l.events.some((e) => e[0] === `${room}:leave`), "A sees B leave");
  assert.equal(l2.events.find((e) => e[0] === `${room}:leave`)[1].sub, join.sub, JSON.stringify(l2.events));
  await waitFor(async () => (await A.evaluate((room) => c.presence(room), room)).count === 1, WAIT, "A alone again");
});

// 7. Token refresh: with auth = "token", a token signed for 2 s brings a "refresh" notice on the client; over the
//    WebSocket, c.refresh(newToken) is the `refresh` op (resolves to {expires} later than the first token's) and the
//    same connection goes on delivering (no close, one open); over SSE, c.refresh(newToken) reconnects with the new
//    token and the channel resumes from its position (1..4 exactly once across the reconnect).
test("7. token refresh: the refresh notice, c.refresh() over WebSocket (op) and SSE (reconnect)", T, async () => {
  const { srv, st, browser } = await setup({ set: { auth: "token", token_secret: "test-secret-0123456789" } });
  const sign = async (channel, ttl) => {
    const r = await request({ host: srv.adminHost, port: srv.adminPort, path: `/sign?channel=${encodeURIComponent(channel)}&ttl=${ttl}` });
    assert.equal(r.status, 200, r.text);
    return r.json();
  };
  for (const transport of ["ws", "sse"]) {
    const pg = await openPage(browser, `${st.url}/classic`);
    const a = chan("a");
    const first = await sign(a, 2);
    const opts = { token: first.token, transports: [transport], backoff: { min: 50, max: 200 } };
    await pg.evaluate(([url, opts, a]) => start(P, url, opts, [[a, 1]]), [srv.url, opts, a]);
    await waitLog(pg, (l) => l.opens.length === 1, "open");
    await publish(srv, a, "m1");
    await publish(srv, a, "m2");
    await waitLog(pg, (l) => l.msgs[a].length === 2, "2 messages");
    await waitLog(pg, (l) => l.events.some((e) => e[0] === "refresh"), "the refresh notice");
    const next = await sign(a, 600);
    const r = await pg.evaluate((t) => c.refresh(t), next.token);
    if (transport === "ws") assert.ok(r.expires > first.expires, `refreshed: ${JSON.stringify(r)}`);
    await publish(srv, a, "m3");
    await publish(srv, a, "m4");
    const l = await waitLog(pg, (l) => l.msgs[a].length >= 4, "4 messages");
    assert.deepEqual(l.msgs[a], [1, 2, 3, 4], `${transport}: each message once`);
    if (transport === "ws") {
      assert.deepEqual(l.opens, ["ws"], "the same WebSocket goes on");
      assert.deepEqual(l.events.filter((e) => e[0] === "close"), []);
    } else {
      assert.deepEqual(l.opens, ["sse", "sse"], "SSE reconnected once, with the new token");
    }
    assert.equal(await pg.evaluate(() => c.token), next.token);
    await pg.evaluate(() => c.close());
  }
});

// 6. docs/client.png: a small page written with the library (a feed of two channels, the transport in use).
test("6. screenshot of a client-library example page (docs/client.png)", T, async () => {
  const srv = await startServer({ set: { socketio: null } });
  const lib = await libBase(srv);
  const html = `<!doctype html><meta charset="utf-8"><title>pushedge.js example</title>
<style>body{font:15px system-ui,sans-serif;margin:24px;color:#222;width:640px}h1{font-size:20px;margin:0 0 4px}
#st{color:#666;margin-bottom:12px}.ch{border:1px solid #ddd;border-radius:6px;padding:8px 12px;margin:8px 0}
.ch b{display:block;margin-bottom:4px}.m{font-family:ui-monospace,monospace;font-size:13px;padding:2px 0}
pre{background:#f6f6f6;padding:10px;border-radius:6px;font-size:12px}</style>
<h1>pushedge.js</h1><div id="st">connecting...</div><div id="feeds"></div>
<pre>const c = new Pushedge("${srv.url}");
for (const name of ["news", "scores"])
  c.subscribe(name, { since: 1 }).on("message", (m) =&gt; show(name, m));</pre>
<script src="${lib.url}/pushedge.js"></script>
<script>
const c = new Pushedge(${JSON.stringify(srv.url)});
c.on("open", (e) => (document.getElementById("st").textContent = "connected over " + e.transport));
for (const name of ["news", "scores"]) {
  const box = document.createElement("div");
  box.className = "ch";
  box.innerHTML = "<b>" + name + "</b>";
  document.getElementById("feeds").append(box);
  c.subscribe(name, { since: 1 }).on("message", (m) => {
    const d = document.createElement("div");
    d.className = "m";
    d.textContent = "#" + m.seq + "  " + (typeof m.content === "string" ? m.content : JSON.stringify(m.content));
    box.append(d);
  });
}
window.loaded = true;
</script>`;
  const st = await startStatic({ "/": html });
  await publish(srv, "news", "pushedge 1.0 released");
  await publish(srv, "scores", { home: 2, away: 1 });
  await publish(srv, "news", "browser client library: one file, no build step");
  const browser = await launchChromium({ ports: [srv.port, st.port, ...lib.ports] });
  const ctx = await browser.newContext({ viewport: { width: 700, height: 420 } });
  const pg = await ctx.newPage();
  await pg.goto(`${st.url}/`);
  await pg.waitForFunction(() => document.querySelectorAll(".m").length === 3, null, { timeout: WAIT });
  await pg.waitForFunction(() => /connected/.test(document.getElementById("st").textContent), null, { timeout: WAIT });
  fs.mkdirSync(path.join(REPO, "docs"), { recursive: true });
  await pg.screenshot({ path: path.join(REPO, "docs", "client.png") });
  assert.ok(fs.statSync(path.join(REPO, "docs", "client.png")).size > 1000);
});
