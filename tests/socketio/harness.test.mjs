// The harness itself, against any pushedge binary (no Socket.IO keys): the ready line is
// parsed, the admin API answers, the process is stopped; redis-server starts and answers
// PING; the static server serves the socket.io-client bundle and headless Chromium loads
// it from a page. When these fail, the other files' failures say nothing about the engine.

import test from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import {
  useHarness,
  T,
  startServer,
  startRedis,
  startStatic,
  launchChromium,
  publish,
  info,
  metrics,
  metricValue,
  parseReady,
  request,
  redisPing,
  toml,
  BACKEND,
  BUNDLE,
} from "./harness.mjs";

useHarness();

test("parseReady reads the fields of a ready line", () => {
  const line =
    "2026-12-01T20:41:07.171Z info  ready: pushedge 0.1.0 subscriber=127.0.0.1:18501 admin=127.0.0.1:10439 control=/tmp/x/p2.sock workers=2 backend=uring node=vm-7236";
  assert.deepEqual(parseReady(line), {
    subscriber: "127.0.0.1:18501",
    admin: "127.0.0.1:10439",
    control: "/tmp/x/p2.sock",
    workers: "2",
    backend: "uring",
    node: "vm-7236",
  });
  assert.equal(parseReady("info  reactor: epoll"), null);
});

test("toml renders --set values", () => {
  assert.equal(toml(true), "true");
  assert.equal(toml(120), "120");
  assert.equal(toml("redis://127.0.0.1:1"), '"redis://127.0.0.1:1"');
  assert.deepEqual(toml(["/", "/chat1"]), '["/", "/chat1"]');
});

test("pushedge starts, answers the admin API, and stops", T, async () => {
  const srv = await startServer({ set: { socketio: null, allowed_origins: ["*"] } });
  assert.match(srv.url, /^http:\/\/127\.0\.0\.1:\d+$/);
  assert.ok(srv.port > 0 && srv.adminPort > 0 && srv.port !== srv.adminPort);
  assert.equal(srv.workers, 2);
  assert.equal(srv.backend, BACKEND || "epoll");
  const a = await publish(srv, "h", "one");
  assert.equal(a.seq, 1);
  assert.equal(a.channel, "h");
  const b = await publish(srv, "h", { x: 1 });
  assert.equal(b.seq, 2);
  assert.equal(b.epoch, a.epoch);
  const i = await info(srv, "h");
  assert.equal(i.seq, 2);
  const m = await metrics(srv);
  assert.equal(metricValue(m, "pushedge_messages_published_total"), 2);
  assert.equal(metricValue(m, "pushedge_no_such_metric"), null);
  // The subscriber port answers HTTP.
  const r = await request({ port: srv.port, path: "/nothing-here" });
  assert.ok(r.status >= 400 && r.status < 500, `HTTP ${r.status}`);
  await srv.stop();
  assert.notEqual(srv.exited(), null, "stopped");
  await assert.rejects(request({ port: srv.adminPort, path: "/info", timeout: 1000 }));
});

test("a bad --set is reported with the command line and stderr", T, async () => {
  await assert.rejects(startServer({ set: { socketio: null, no_such_key_xyz: 1 } }), (e) => {
    assert.match(e.message, /exited .* before ready/);
    assert.match(e.message, /no_such_key_xyz/);
    return true;
  });
});

test("redis-server starts on a free port and answers PING", T, async () => {
  const redis = await startRedis();
  assert.equal(await redisPing(redis.port), true);
  await redis.stop();
  await assert.rejects(redisPing(redis.port));
});

test("headless Chromium loads the socket.io-client bundle from the static server", T, async () => {
  assert.ok(fs.existsSync(BUNDLE), BUNDLE);
  const web = await startStatic({ "/": '<!doctype html><title>t</title><script src="/socket.io.min.js"></script>' });
  const browser = await launchChromium({ ports: [web.port] });
  const page = await browser.newPage();
  await page.goto(web.url + "/", { waitUntil: "load" });
  assert.equal(await page.title(), "t");
  assert.equal(await page.evaluate(() => typeof window.io), "function");
  assert.deepEqual(await page.evaluate(() => [typeof window.io.Manager, typeof window.io.Socket]), ["function", "function"]);
  assert.deepEqual(web.requests.filter((u) => u !== "/favicon.ico"), ["/", "/socket.io.min.js"]);
  await browser.close();
});
