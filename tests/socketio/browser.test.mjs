// The socket.io-client browser bundle (socket.io.min.js) in headless Chromium, from a page
// served by a tiny static server on another origin than pushedge (another port): it
// connects with the default transports (polling, then the websocket upgrade), receives
// admin publishes (text, JSON, {"$binary"} as an ArrayBuffer), emits with an ack, and
// sends binary. A polling-only run covers the cross-origin POSTs. The test reads what the
// page saw through an exposed function and page.evaluate.

import test from "node:test";
import assert from "node:assert/strict";
import {
  useHarness,
  SETTLE,
  startServer,
  startStatic,
  launchChromium,
  publish,
  waitFor,
  withTimeout,
  sleep,
} from "./harness.mjs";

useHarness();

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>pushedge socket.io</title>
<script src="/socket.io.min.js"></script>
<script>
  // ArrayBuffers cannot cross page.exposeFunction as such: tag them.
  function enc(x) {
    if (x instanceof ArrayBuffer) return { $ArrayBuffer: Array.from(new Uint8Array(x)) };
    if (Array.isArray(x)) return x.map(enc);
    if (x && typeof x === "object") {
      const o = {};
      for (const k of Object.keys(x)) o[k] = enc(x[k]);
      return o;
    }
    return x;
  }
  window.start = (url, opts) => new Promise((resolve, reject) => {
    const s = io(url, Object.assign({ reconnection: false, timeout: 5000 }, opts || {}));
    window.sock = s;
    window.transports = [s.io.engine.transport.name]; // the first one, then each upgrade
    s.io.engine.on("upgrade", (t) => window.transports.push(t.name));
    s.onAny((event, ...args) => window.report({ event, args: enc(args), transport: s.io.engine.transport.name }));
    s.on("connect", () => resolve({ id: s.id, transport: s.io.engine.transport.name, origin: location.origin }));
    s.on("connect_error", (e) => reject(new Error("connect_error: " + e.message)));
  });
  window.upgraded = () => new Promise((resolve) => {
    const e = window.sock.io.engine;
    if (e.transport.name === "websocket") resolve("websocket");
    else e.once("upgrade", (t) => resolve(t.name));
  });
  window.emitAck = (...args) => window.sock.timeout(5000).emitWithAck(...args).then(enc);
  window.emitBinaryAck = (event, bytes) => window.sock.timeout(5000).emitWithAck(event, new Uint8Array(bytes).buffer).then(enc);
  window.transport = () => window.sock.io.engine.transport.name;
</script></head><body>pushedge</body></html>`;

async function openPage(srvUrl, opts) {
  const web = await startStatic({ "/": PAGE });
  const browser = await launchChromium({ ports: [new URL(srvUrl).port, web.port] });
  const page = await browser.newPage();
  const events = [];
  const problems = [];
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console.${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
  await page.exposeFunction("report", (e) => events.push(e));
  await page.goto(web.url + "/", { waitUntil: "load" });
  const hello = await withTimeout(page.evaluate(([u, o]) => window.start(u, o), [srvUrl, opts]), 10_000, "page connect").catch((e) => {
    throw new Error(`${e.message}\n${problems.join("\n")}`);
  });
  assert.equal(hello.origin, web.url, "the page's origin");
  assert.notEqual(new URL(srvUrl).origin, web.url, "pushedge is another origin");
  const wait = (n) =>
    waitFor(() => events.length >= n, 5_000, () => `${n} events in the page, got ${JSON.stringify(events)}\n${problems.join("\n")}`);
  return { page, events, problems, hello, wait, browser };
}

test("browser: socket.io.min.js connects cross-origin (polling -> websocket), receives publishes, emits with ack", { timeout: 30_000 }, async () => {
  const srv = await startServer({ set: { allowed_origins: ["*"], client_publish: ["*"] } });
  const { page, events, problems, wait } = await openPage(srv.url);
  assert.equal(await withTimeout(page.evaluate(() => window.upgraded()), 10_000, "upgrade in the page"), "websocket");
  assert.deepEqual(await page.evaluate(() => window.transports), ["polling", "websocket"], "polling, then one upgrade");
  assert.equal(await page.evaluate(() => window.transport()), "websocket");

  await publish(srv, "all", "hello browser");
  await publish(srv, "all", { a: 1, b: ["x", null] }, { event: "news" });
  await publish(srv, "all", { $binary: "AQID" }, { event: "bin" });
  await wait(3);

  const ack = await page.evaluate(() => window.emitAck("chat", "from the page", { n: 1 }));
  assert.equal(ack.ok, true, JSON.stringify(ack));
  assert.equal(ack.seq, 4, JSON.stringify(ack));
  await wait(4);
  const ack2 = await page.evaluate(() => window.emitBinaryAck("upload", [7, 0, 255]));
  assert.equal(ack2.ok, true, JSON.stringify(ack2));
  assert.equal(ack2.seq, 5);
  await wait(5);
  await sleep(SETTLE);

  assert.deepEqual(
    events.map((e) => [e.event, ...e.args]),
    [
      ["message", "hello browser"],
      ["news", { a: 1, b: ["x", null] }],
      ["bin", { $ArrayBuffer: [1, 2, 3] }],
      ["chat", "from the page", { n: 1 }],
      ["upload", { $ArrayBuffer: [7, 0, 255] }],
    ],
    JSON.stringify(events),
  );
  assert.deepEqual(events.map((e) => e.transport), Array(5).fill("websocket"));
  assert.deepEqual(problems, []);
});

test("browser: polling only, cross-origin GETs and POSTs", { timeout: 30_000 }, async () => {
  const srv = await startServer({ set: { allowed_origins: ["*"], client_publish: ["*"] } });
  const { page, events, problems, hello, wait } = await openPage(srv.url, { transports: ["polling"] });
  assert.equal(hello.transport, "polling");
  assert.deepEqual(await page.evaluate(() => window.transports), ["polling"]);
  await publish(srv, "all", "one");
  await wait(1);
  const ack = await page.evaluate(() => window.emitAck("chat", "two"));
  assert.equal(ack.ok, true, JSON.stringify(ack));
  assert.equal(ack.seq, 2);
  const ack2 = await page.evaluate(() => window.emitBinaryAck("upload", [1, 30, 98]));
  assert.equal(ack2.ok, true, JSON.stringify(ack2));
  await wait(3);
  await sleep(SETTLE);
  assert.deepEqual(
    events.map((e) => [e.event, ...e.args]),
    [
      ["message", "one"],
      ["chat", "two"],
      ["upload", { $ArrayBuffer: [1, 30, 98] }],
    ],
    JSON.stringify(events),
  );
  assert.equal(await page.evaluate(() => window.transport()), "polling");
  assert.deepEqual(problems, []);
});
