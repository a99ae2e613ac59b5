// The admin port's live dashboard: GET /metrics (the process_* families, build info,
// uptime, the fan-out latency histogram), GET /events (an SSE stream of one stats snapshot
// a second, held open past the admin timeouts, bounded, behind admin_token, ended by a
// drain) and GET /dashboard in headless Chromium, whose numbers must move under a load of
// 200 WebSocket subscribers and a burst of admin publishes, and whose cluster card shows
// the node and its Redis feed (a redis-server of the test's own). The test writes a
// screenshot of the page under that load to docs/dashboard.png.
//
//   cd tests/web && PUSHEDGE_BIN=... node --test --test-concurrency=1 dashboard.test.mjs

import test from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import WebSocket from "../socketio/node_modules/ws/index.js";
import {
  useHarness,
  onCleanup,
  startServer,
  launchChromium,
  publish,
  adminGet,
  request,
  metrics,
  metricValue,
  waitFor,
  withTimeout,
  sleep,
  startRedis,
  REPO,
} from "../socketio/harness.mjs";

useHarness();

const SCREENSHOT = path.join(REPO, "docs", "dashboard.png");

// ------------------------------------------------------------------------ helpers

/** A WebSocket subscriber of `channels`, counting the data messages it gets. */
function subscriber(srv, channels) {
  const ws = new WebSocket(`ws://${srv.sub}/ws?channel=${channels}`);
  const c = { ws, got: 0, open: null };
  c.open = new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  ws.on("message", (d) => {
    if (String(d).includes('"type":"data"')) c.got++;
  });
  ws.on("error", () => {});
  onCleanup(() => ws.terminate());
  return c;
}

/** The samples of `name` in Prometheus text, as [labels, value] pairs. */
function samples(text, name) {
  const out = [];
  for (const line of text.split("\n")) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$/.exec(line);
    if (m && m[1] === name) out.push([m[2] || "", Number(m[3])]);
  }
  return out;
}

/**
 * GET /events on the admin port, kept open: resolves once the head arrived to
 * { status, headers, events: [parsed data JSON, with .at = arrival ms], ended, text(), close() }.
 */
function openEvents(srv, { path: p = "/events", headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: srv.adminHost, port: srv.adminPort, path: p, headers, agent: false }, (res) => {
      const s = { status: res.statusCode, headers: res.headers, events: [], raw: "", ended: false };
      let buf = "";
      res.setEncoding("utf8");
      res.on("data", (chunk) => {
        s.raw += chunk;
        buf += chunk;
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = block
            .split("\n")
            .filter((l) => l.startsWith("data: "))
            .map((l) => l.slice(6))
            .join("\n");
          if (data) {
            const v = s.status === 200 ? JSON.parse(data) : { raw: data };
            v.at = Date.now();
            s.events.push(v);
          }
        }
      });
      const end = () => (s.ended = true);
      res.on("end", end);
      res.on("close", end);
      res.on("error", end);
      s.close = () => req.destroy();
      onCleanup(s.close);
      resolve(s);
    });
    req.on("error", reject);
  });
}

const num = (v) => (v === "" || v == null ? null : Number(v));

// ------------------------------------------------------------------------ /metrics

test("/metrics: process_*, build info, uptime and the fan-out latency histogram", { timeout: 30_000 }, async () => {
  const srv = await startServer();
  const subs = [subscriber(srv, "m"), subscriber(srv, "m")];
  await Promise.all(subs.map((s) => s.open));
  await waitFor(async () => (await adminGet(srv, "/info?channel=m")).json().subscribers === 2, 5_000, "2 subscribers of m");
  for (let i = 0; i < 5; i++) await publish(srv, "m", `hello ${i}`);
  await waitFor(() => subs.every((s) => s.got === 5), 5_000, "5 messages to each subscriber");

  const text = await metrics(srv);
  const info = (await adminGet(srv, "/info")).json();
  for (const [name, type] of [
    ["process_resident_memory_bytes", "gauge"],
    ["process_open_fds", "gauge"],
    ["process_max_fds", "gauge"],
    ["process_cpu_seconds_total", "counter"],
    ["process_start_time_seconds", "gauge"],
    ["pushedge_build_info", "gauge"],
    ["pushedge_uptime_seconds", "gauge"],
    ["pushedge_fanout_latency_seconds", "histogram"],
  ]) {
    assert.ok(text.includes(`\n# TYPE ${name} ${type}\n`), `# TYPE ${name} ${type} in\n${text}`);
    assert.ok(text.includes(`\n# HELP ${name} `), `# HELP ${name}`);
  }
  const m = (name) => metricValue(text, name);
  const rss = m("process_resident_memory_bytes");
  assert.ok(rss > 2 ** 20 && rss < 4 * 2 ** 30, `RSS ${rss}`);
  const fds = m("process_open_fds");
  // Two subscriber sockets, the listeners, epoll, eventfds...
  assert.ok(fds >= 5 && fds <= m("process_max_fds"), `open fds ${fds}, max ${m("process_max_fds")}`);
  assert.ok(m("process_cpu_seconds_total") >= 0 && m("process_cpu_seconds_total") < 600, "cpu seconds");
  const start = m("process_start_time_seconds");
  const now = Date.now() / 1000;
  assert.ok(start > now - 120 && start <= now + 1, `start time ${start} vs now ${now}`);
  const uptime = m("pushedge_uptime_seconds");
  assert.ok(uptime > 0 && uptime < 120 && Math.abs(now - start - uptime) < 5, `uptime ${uptime}, start ${start}`);
  assert.deepEqual(samples(text, "pushedge_build_info"), [[`{version="${info.version}"}`, 1]]);

  // Histogram: cumulative buckets up to +Inf = _count; one observation per message and
  // worker with subscribers (the two subscribers may sit on one worker or on two).
  const buckets = samples(text, "pushedge_fanout_latency_seconds_bucket");
  assert.equal(buckets.at(-1)[0], '{le="+Inf"}');
  assert.equal(buckets[0][0], '{le="0.0001"}');
  assert.ok(buckets.some(([l]) => l === '{le="10"}'), "a 10 s bucket");
  for (let i = 1; i < buckets.length; i++) assert.ok(buckets[i][1] >= buckets[i - 1][1], `cumulative at ${buckets[i][0]}`);
  const count = m("pushedge_fanout_latency_seconds_count");
  const sum = m("pushedge_fanout_latency_seconds_sum");
  assert.equal(buckets.at(-1)[1], count);
  assert.ok(count >= 5 && count <= 5 * srv.workers, `fan-outs ${count} for 5 messages on ${srv.workers} workers`);
  assert.ok(sum > 0 && sum / count < 1, `mean fan-out ${sum / count} s`);
});

// ------------------------------------------------------------------------ /events

test("/events: one snapshot a second, held past the admin timeouts, next to other requests", { timeout: 30_000 }, async () => {
  const srv = await startServer({
    set: { admin_idle_timeout_secs: 1, admin_body_timeout_secs: 1, admin_head_timeout_secs: 1 },
  });
  const s = await openEvents(srv);
  assert.equal(s.status, 200);
  assert.match(s.headers["content-type"], /^text\/event-stream/);
  assert.equal(s.headers["content-length"], undefined);
  await waitFor(() => s.events.length >= 1, 3_000, "the first snapshot");
  assert.ok(s.raw.startsWith("retry: 2000\n\n"), JSON.stringify(s.raw.slice(0, 40)));
  const first = s.events[0];
  assert.equal(first.type, "stats");
  assert.equal(first.node, srv.node);
  for (const k of ["connections", "channels", "subscriptions", "published", "delivered", "slow_consumer_closes", "limit_closes", "uptime_secs"]) {
    assert.equal(typeof first[k], "number", `${k} in ${JSON.stringify(first)}`);
  }
  assert.equal(typeof first.by_transport.ws, "number");
  assert.ok(first.process.rss_bytes > 0 && first.process.open_fds > 0 && first.process.max_fds > 0, "process figures");
  assert.equal(first.rates.deliveries_per_sec, null, "no rate before a second snapshot");

  // Publishes meanwhile (the admin port still serves) show up in the next snapshots.
  const sub = subscriber(srv, "e");
  await sub.open;
  await waitFor(async () => (await adminGet(srv, "/info?channel=e")).json().subscribers === 1, 5_000, "a subscriber of e");
  for (let i = 0; i < 10; i++) await publish(srv, "e", `x${i}`);
  // Held well past admin_idle_timeout_secs / admin_body_timeout_secs (1 s).
  await waitFor(() => s.events.length >= 5, 8_000, () => `5 snapshots, got ${s.events.length}`);
  assert.equal(s.ended, false, "the stream is still open");
  const gaps = s.events.slice(2).map((e, i) => e.at - s.events[i + 1].at);
  for (const g of gaps) assert.ok(g > 500 && g < 2000, `snapshots a second apart: ${gaps}`);
  const last = s.events.at(-1);
  assert.ok(last.published >= 10 && last.delivered >= 10, JSON.stringify(last));
  assert.equal(last.connections, 1);
  assert.equal(last.by_transport.ws, 1);
  assert.ok(s.events.some((e) => e.rates.publishes_per_sec > 0), "publishes/s moved");
  assert.ok(s.events.some((e) => e.rates.deliveries_per_sec > 0), "deliveries/s moved");
  assert.ok(s.events.slice(1).every((e) => typeof e.rates.cpu_percent === "number"), "CPU %");
  assert.ok(last.fanout.count >= 10 && last.fanout.p50_ms > 0 && last.fanout.p99_ms >= last.fanout.p50_ms, JSON.stringify(last.fanout));
  s.close();

  // A stream takes no input: sending anything more closes it.
  const raw = net.connect(srv.adminPort, srv.adminHost);
  onCleanup(() => raw.destroy());
  let got = "";
  raw.on("data", (d) => (got += d));
  const closed = new Promise((r) => raw.once("close", r));
  raw.on("error", () => {});
  raw.write("GET /events HTTP/1.1\r\nHost: x\r\n\r\n");
  await waitFor(() => got.includes("data: {"), 3_000, "the raw stream's first snapshot");
  assert.match(got, /^HTTP\/1\.1 200 OK\r\n/);
  assert.match(got, /\r\nConnection: close\r\n/i);
  raw.write("GET /info HTTP/1.1\r\nHost: x\r\n\r\n");
  await withTimeout(closed, 3_000, "the stream closed after more input");
  assert.ok(!got.includes('"type":"info"'), "no answer to a request on a stream");
});

test("/events: admin_token (Bearer or ?token=), at most half of admin_max_connections, POST refused", { timeout: 30_000 }, async () => {
  const srv = await startServer({ set: { admin_token: "s3cret", admin_max_connections: 6 } });
  for (const p of ["/events", "/events?token=wrong", "/dashboard", "/dashboard?token=nope"]) {
    const r = await adminGet(srv, p);
    assert.equal(r.status, 401, `${p} without the right token`);
  }
  // ?token= is only for the browser's endpoints.
  assert.equal((await adminGet(srv, "/info?token=s3cret")).status, 401);
  const page = await adminGet(srv, "/dashboard?token=s3cret");
  assert.equal(page.status, 200);
  assert.match(page.headers["content-type"], /^text\/html/);
  assert.match(page.headers["content-security-policy"], /default-src 'none'/);
  assert.match(page.text, /new EventSource\(/);
  assert.ok(!/(src|href)="https?:/.test(page.text), "no external resources");
  const a = await openEvents(srv, { path: "/events?token=s3cret" });
  const b = await openEvents(srv, { headers: { Authorization: "Bearer s3cret" } });
  const c = await openEvents(srv, { path: "/events?token=s3cret" });
  assert.deepEqual([a.status, b.status, c.status], [200, 200, 200]);
  const d = await openEvents(srv, { path: "/events?token=s3cret" });
  assert.equal(d.status, 503, "a fourth stream of admin_max_connections = 6");
  await waitFor(() => d.ended, 3_000, "the refused stream answered");
  assert.match(d.raw, /too many event streams/);
  // The other half stays for the API.
  const info = await request({ port: srv.adminPort, path: "/info", headers: { Authorization: "Bearer s3cret" } });
  assert.equal(info.status, 200);
  const post = await request({ port: srv.adminPort, method: "POST", path: "/events?token=s3cret", body: "" });
  assert.equal(post.status, 405);
  // Closing one makes room again.
  a.close();
  await sleep(300);
  const e = await openEvents(srv, { path: "/events?token=s3cret" });
  assert.equal(e.status, 200);
  await waitFor(() => e.events.length >= 2 && b.events.length >= 2, 4_000, "snapshots on the streams");
});

test("/events: a drain ends the streams (and refuses new ones) while the server still runs", { timeout: 30_000 }, async () => {
  const srv = await startServer({ set: { drain_timeout_secs: 10 } });
  // A WebSocket peer that never answers the server's close keeps the drain going.
  const raw = net.connect(srv.port, srv.host);
  onCleanup(() => raw.destroy());
  await new Promise((r) => raw.once("connect", r));
  raw.write(
    "GET /ws?channel=d HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
  );
  await waitFor(async () => (await adminGet(srv, "/info?channel=d")).json().subscribers === 1, 5_000, "the raw subscriber");
  raw.pause(); // and never reads again
  const s = await openEvents(srv);
  await waitFor(() => s.events.length >= 1, 3_000, "a snapshot");
  process.kill(srv.pid, "SIGTERM");
  await waitFor(() => s.ended, 3_000, "the stream ended by the drain");
  assert.equal(srv.exited(), null, "the server is still draining");
  const again = await adminGet(srv, "/events");
  assert.equal(again.status, 503);
  assert.match(again.text, /draining/);
});

// ------------------------------------------------------------------------ the page

test("/dashboard in Chromium: live numbers move under 200 WebSocket subscribers and a publish burst; screenshot", { timeout: 60_000 }, async () => {
  const srv = await startServer();
  const browser = await launchChromium({ ports: [srv.adminPort] });
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  const problems = [];
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console.error: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));
  await page.goto(`${srv.adminUrl}/dashboard`, { waitUntil: "load" });
  const read = (id) => page.$eval(`#${id}`, (el) => el.dataset.value);
  const text = (id) => page.$eval(`#${id}`, (el) => el.textContent);
  const what = (label) => () => `${label}\n${problems.join("\n")}`;

  // Live: the status says so, and the numbers are there (rates after a second snapshot).
  await waitFor(async () => (await text("status")).startsWith("live"), 5_000, what("status live"));
  await waitFor(async () => num(await read("deliveries")) !== null, 5_000, what("a deliveries/s figure"));
  assert.equal(num(await read("connections")), 0);
  assert.equal(num(await read("deliveries")), 0);
  assert.ok(num(await read("rss")) > 1 << 20, "RSS on the page");
  assert.ok(num(await read("fds")) > 0, "descriptors on the page");
  assert.ok(num(await read("uptime")) >= 0, "uptime on the page");
  assert.equal(num(await read("slow")), 0);
  assert.equal(num(await read("limit")), 0);
  assert.match(await text("cluster"), /standalone/);
  assert.match(await text("transports"), /ws/);

  // Load: 200 WebSocket subscribers...
  const N = 200;
  const subs = [];
  for (let i = 0; i < N; i++) subs.push(subscriber(srv, "load"));
  await Promise.all(subs.map((s) => s.open));
  await waitFor(async () => num(await read("connections")) >= N, 5_000, what(`${N} connections on the page`));
  assert.equal(num(await read("subscriptions")), N);
  assert.ok(num(await read("channels")) >= 1);
  assert.match(await text("transports"), /ws\s*200/);

  // ...and a burst of admin publishes (about 6 s of them, so the sparklines draw); the
  // screenshot is taken under the load.
  let published = 0;
  let maxDeliveries = 0;
  let maxPublishes = 0;
  let p50 = null;
  const started = Date.now();
  let shot = false;
  while (Date.now() < started + 6_000) {
    await Promise.all(Array.from({ length: 5 }, () => publish(srv, "load", `tick ${published++}`)));
    maxDeliveries = Math.max(maxDeliveries, num(await read("deliveries")) ?? 0);
    maxPublishes = Math.max(maxPublishes, num(await read("publishes")) ?? 0);
    p50 = num(await read("p50")) ?? p50;
    if (!shot && Date.now() > started + 4_500) {
      shot = true;
      fs.mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
      await page.screenshot({ path: SCREENSHOT, fullPage: true });
    }
    await sleep(10);
  }
  assert.ok(shot && fs.statSync(SCREENSHOT).size > 10_000, "a screenshot");
  await waitFor(() => subs.every((s) => s.got === published), 10_000, () => `${published} messages to each subscriber`);
  await waitFor(async () => {
    maxDeliveries = Math.max(maxDeliveries, num(await read("deliveries")) ?? 0);
    return maxDeliveries > 0;
  }, 3_000, what("deliveries/s above 0"));
  assert.ok(maxPublishes > 0, `publishes/s on the page moved (${maxPublishes})`);
  // The burst delivered published * N messages in about 5 s: the page's rate shows it.
  assert.ok(maxDeliveries >= N, `deliveries/s peak ${maxDeliveries} for ${published} x ${N} deliveries`);
  assert.ok(p50 > 0, `fan-out p50 on the page (${p50} ms)`);
  await waitFor(async () => num(await read("delivered")) >= published * N, 3_000, what("total delivered on the page"));
  assert.ok(num(await read("cpu")) >= 0, "CPU on the page");

  // The subscribers leave: the page follows.
  for (const s of subs) s.ws.close();
  await waitFor(async () => num(await read("connections")) === 0, 6_000, what("0 connections on the page"));
  await waitFor(async () => num(await read("deliveries")) === 0, 4_000, what("deliveries/s back to 0"));

  // Only this origin: the page and its event stream.
  const origin = srv.adminUrl;
  assert.deepEqual(requests.filter((u) => !u.startsWith(origin)), [], "no external requests");
  assert.deepEqual(problems, []);
});

test("/dashboard in Chromium with admin_token: ?token= reaches the stream", { timeout: 30_000 }, async () => {
  const srv = await startServer({ set: { admin_token: "tok en/+1" } });
  const browser = await launchChromium({ ports: [srv.adminPort] });
  const page = await browser.newPage();
  await page.goto(`${srv.adminUrl}/dashboard?token=${encodeURIComponent("tok en/+1")}`, { waitUntil: "load" });
  await waitFor(
    async () => (await page.$eval("#status", (el) => el.textContent)).startsWith("live"),
    5_000,
    "status live with the token",
  );
  assert.equal(await page.$eval("#node", (el) => el.textContent), `node ${srv.node}`);
  const bad = await browser.newPage();
  const r = await bad.goto(`${srv.adminUrl}/dashboard`);
  assert.equal(r.status(), 401);
  await withTimeout(bad.close(), 5_000, "close page");
});

test("/dashboard in Chromium on a cluster node: its node id and the Redis feed up", { timeout: 30_000 }, async () => {
  const redis = await startRedis();
  const srv = await startServer({ set: { "cluster.redis_url": redis.url, "cluster.node_id": "node-a" } });
  await waitFor(async () => (await adminGet(srv, "/info")).json().cluster?.redis === "up", 10_000, "node-a sees Redis");
  const browser = await launchChromium({ ports: [srv.adminPort] });
  const page = await browser.newPage();
  await page.goto(`${srv.adminUrl}/dashboard`, { waitUntil: "load" });
  await waitFor(
    async () => /node-a \(this node\)\s*up/.test(await page.$eval("#cluster", (el) => el.innerText)),
    5_000,
    "the cluster row of node-a, up",
  );
  await redis.stop();
  await waitFor(
    async () => /node-a \(this node\)\s*down/.test(await page.$eval("#cluster", (el) => el.innerText)),
    10_000,
    "node-a's Redis down on the page",
  );
});
