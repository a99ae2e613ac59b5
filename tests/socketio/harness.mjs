// Shared harness of the Socket.IO end-to-end suite (tests/socketio/*.test.mjs).
//
// Everything here runs real processes and real clients, no mocks:
// - startServer(): `pushedge serve` on 127.0.0.1:0 (subscriber and admin), its own control
//   socket in a temp dir, `--workers 2`, `--backend $PUSHEDGE_BACKEND` when set, and the
//   given `--set KEY=VALUE` (values written as TOML); it parses the ` ready: ` line of
//   stderr and returns the addresses.
// - startRedis(): a redis-server of our own on a free port, without persistence.
// - startStatic(): a tiny HTTP server (another origin than pushedge) for the browser page
//   and socket.io.min.js.
// - client()/manager(): socket.io-client sockets (no reconnection unless asked), recorded
//   so cleanup() closes them.
// - record(): every event a socket receives, in arrival order (socket.onAny).
// - request(): one raw HTTP request on a fresh connection (agent: false), for the admin API
//   and the Engine.IO bad-input tests.
//
// Every process, server, socket and browser started here is closed by cleanup() (wired to
// afterEach/after by useHarness()) and, as a last resort, killed when the test process
// exits or is interrupted.

import { spawn } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { after, afterEach } from "node:test";
import { io, Manager } from "socket.io-client";

export { io, Manager };

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, "..", "..");
/** The binary under test: $PUSHEDGE_BIN (relative to the current directory) or the debug build. */
export const BIN = process.env.PUSHEDGE_BIN
  ? path.resolve(process.env.PUSHEDGE_BIN)
  : path.join(REPO, "target", "debug", "pushedge");
/** epoll (default) or uring, passed as --backend. */
export const BACKEND = process.env.PUSHEDGE_BACKEND || "";
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const REDIS_SERVER = process.env.REDIS_SERVER || "redis-server";
/** Per-test time bound (node:test `timeout`). */
export const TEST_TIMEOUT = 20_000;
/** Default bound of one wait inside a test. */
export const WAIT = 5_000;
/** The time given to something that must NOT happen (a delivery to a socket outside the room). */
export const SETTLE = 300;
export const T = { timeout: TEST_TIMEOUT };

// ------------------------------------------------------------------------ bookkeeping

const live = {
  children: new Set(), // ChildProcess (pushedge, redis-server)
  servers: new Set(), // objects with async stop()
  sockets: new Set(), // socket.io-client Socket
  managers: new Set(), // socket.io-client Manager
  closers: new Set(), // async () => void (static servers, browsers, raw sockets)
};

function killAllNow() {
  for (const c of live.children) {
    try {
      c.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
}
process.on("exit", killAllNow);
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(sig, () => {
    killAllNow();
    process.exit(128 + (os.constants.signals[sig] || 1));
  });
}

/** Closes every client, browser, static server, pushedge and redis started so far. */
export async function cleanup() {
  closeClients();
  const closers = [...live.closers];
  live.closers.clear();
  await Promise.allSettled(closers.map((f) => withTimeout(Promise.resolve().then(f), 5_000, "closing")));
  const servers = [...live.servers];
  live.servers.clear();
  await Promise.allSettled(servers.map((s) => s.stop()));
}

/** Disconnects every socket.io-client socket and manager started so far. */
export function closeClients() {
  for (const s of live.sockets) {
    try {
      s.disconnect();
    } catch {
      // ignore
    }
  }
  live.sockets.clear();
  for (const m of live.managers) {
    try {
      m._close();
    } catch {
      // ignore
    }
  }
  live.managers.clear();
}

/** Registers a closer run by cleanup(). */
export function onCleanup(fn) {
  live.closers.add(fn);
  return () => live.closers.delete(fn);
}

/** The last lines of the stderr of every pushedge still running (for a failed test). */
export function serverLogs(lines = 60) {
  const out = [];
  for (const s of live.servers) {
    if (typeof s.log !== "function" || !s.cmdline) continue;
    const tail = s.log().split("\n").slice(-lines).join("\n");
    out.push(`--- ${s.name} stderr (${s.cmdline}):\n${tail}`);
  }
  return out.join("\n");
}

/**
 * Wires cleanup() after each test (printing the servers' stderr when it failed) and after
 * the file. Call once at the top of a test file.
 */
export function useHarness() {
  afterEach(async (t) => {
    if (t && t.passed === false) {
      const logs = serverLogs();
      if (logs) process.stderr.write(`${logs}\n`);
    }
    await cleanup();
  });
  after(cleanup);
}

// ------------------------------------------------------------------------ small tools

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Rejects with `what` when `p` takes longer than `ms`. */
export function withTimeout(p, ms, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/** Waits until `cond()` is truthy (checked every 10 ms); throws `what()` after `ms`. */
export async function waitFor(cond, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) {
      const w = typeof what === "function" ? what() : what;
      throw new Error(`timed out after ${ms} ms waiting for ${w}`);
    }
    await sleep(10);
  }
}

/** The next `event` of an EventEmitter-like object, as its argument array. */
export function once(emitter, event, ms = WAIT, what = event) {
  return withTimeout(
    new Promise((resolve) => emitter.once(event, (...args) => resolve(args))),
    ms,
    what,
  );
}

/** Resolves to a TCP port that was free a moment ago (bind 0 on 127.0.0.1). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** A value written as TOML for `--set KEY=VALUE` (strings quoted, arrays of them). */
export function toml(v) {
  if (typeof v === "string") return JSON.stringify(v);
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  if (Array.isArray(v)) return `[${v.map(toml).join(", ")}]`;
  throw new Error(`no TOML form for ${JSON.stringify(v)}`);
}

// ------------------------------------------------------------------------ pushedge

/** Parses the key=value fields after ` ready: ` in a pushedge log line (null if absent). */
export function parseReady(line) {
  const i = line.indexOf(" ready: ");
  if (i < 0) return null;
  const fields = {};
  for (const tok of line.slice(i + " ready: ".length).trim().split(/\s+/)) {
    const eq = tok.indexOf("=");
    if (eq > 0) fields[tok.slice(0, eq)] = tok.slice(eq + 1);
  }
  if (!fields.subscriber || !fields.admin) return null;
  return fields;
}

function splitAddr(a) {
  const i = a.lastIndexOf(":");
  return { host: a.slice(0, i), port: Number(a.slice(i + 1)) };
}

/**
 * Starts `pushedge serve` and waits for its ready line.
 *
 * options:
 * - set: { key: value } -> `--set key=<TOML of value>`; `socketio: true` is added unless
 *   given (pass `socketio: null` to leave the key out, e.g. for a binary without it).
 *   A value that is already a TOML string can be passed as { toml: "..." }.
 * - workers (default 2), listen (default 127.0.0.1:0), args (extra CLI args),
 * - name: shown in errors.
 *
 * Returns { url, sub, admin, port, adminPort, adminHost, workers, backend, node, control,
 * log(), pid, stop() }.
 */
export async function startServer(options = {}) {
  const { workers = 2, listen = "127.0.0.1:0", args = [], name = "pushedge" } = options;
  if (!fs.existsSync(BIN)) {
    throw new Error(`${BIN} does not exist: run \`cargo build -p pushedge\` (or set PUSHEDGE_BIN)`);
  }
  const set = { socketio: true, ...(options.set || {}) };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "pushedge-sio-"));
  const control = path.join(dir, "p.sock");
  const argv = ["serve", "--listen", listen, "--admin", "127.0.0.1:0", "--control", control, "--workers", String(workers)];
  if (BACKEND) argv.push("--backend", BACKEND);
  for (const [k, v] of Object.entries(set)) {
    if (v === null || v === undefined) continue;
    argv.push("--set", `${k}=${v && typeof v === "object" && "toml" in v ? v.toml : toml(v)}`);
  }
  argv.push(...args);
  const child = spawn(BIN, argv, { stdio: ["ignore", "ignore", "pipe"] });
  live.children.add(child);
  let log = "";
  let exited = null;
  const exitP = new Promise((resolve) => {
    child.on("exit", (code, signal) => {
      exited = { code, signal };
      live.children.delete(child);
      resolve(exited);
    });
  });
  child.on("error", (e) => {
    log += `\n[spawn error: ${e.message}]`;
  });
  let ready = null;
  let onReady;
  const readyP = new Promise((r) => (onReady = r));
  let partial = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (chunk) => {
    log += chunk;
    if (log.length > 2_000_000) log = log.slice(-1_000_000);
    if (ready) return;
    partial += chunk;
    const lines = partial.split("\n");
    partial = lines.pop();
    for (const line of lines) {
      const f = parseReady(line);
      if (f) {
        ready = f;
        onReady(f);
        return;
      }
    }
  });
  const cmdline = `${BIN} ${argv.map((a) => (/[\s"'\[\]*]/.test(a) ? `'${a}'` : a)).join(" ")}`;
  let fields;
  try {
    fields = await withTimeout(
      Promise.race([
        readyP,
        exitP.then((e) => {
          throw new Error(`exited (${e.signal || e.code}) before ready`);
        }),
      ]),
      10_000,
      `${name} ready line`,
    );
  } catch (e) {
    child.kill("SIGKILL");
    await withTimeout(exitP, 2_000, "exit").catch(() => {});
    fs.rmSync(dir, { recursive: true, force: true });
    throw new Error(`${name}: ${e.message}\ncommand: ${cmdline}\nstderr:\n${log}`);
  }
  const sub = splitAddr(fields.subscriber);
  const adm = splitAddr(fields.admin);
  const server = {
    name,
    fields,
    cmdline,
    pid: child.pid,
    sub: fields.subscriber,
    admin: fields.admin,
    host: sub.host,
    port: sub.port,
    adminHost: adm.host,
    adminPort: adm.port,
    url: `http://${fields.subscriber}`,
    adminUrl: `http://${fields.admin}`,
    workers: Number(fields.workers),
    backend: fields.backend,
    node: fields.node,
    control: fields.control,
    log: () => log,
    exited: () => exited,
    async stop() {
      if (!exited) {
        child.kill("SIGTERM");
        try {
          await withTimeout(exitP, 3_000, `${name} exit after SIGTERM`);
        } catch {
          child.kill("SIGKILL");
          await withTimeout(exitP, 3_000, `${name} exit after SIGKILL`).catch(() => {});
        }
      }
      live.servers.delete(server);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  live.servers.add(server);
  return server;
}

// ------------------------------------------------------------------------ HTTP

/**
 * One HTTP request on a fresh connection (agent: false, Connection: close).
 * Resolves to { status, headers, body: Buffer, text, json() }; rejects after `timeout`.
 */
export function request({ host = "127.0.0.1", port, method = "GET", path: p = "/", headers = {}, body, timeout = WAIT }) {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : Buffer.isBuffer(body) ? body : Buffer.from(String(body));
    const h = { Connection: "close", ...headers };
    if (payload !== undefined && !Object.keys(h).some((k) => k.toLowerCase() === "content-length")) {
      h["Content-Length"] = payload.length;
    }
    const req = http.request({ host, port, method, path: p, headers: h, agent: false }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => {
        clearTimeout(timer);
        const buf = Buffer.concat(chunks);
        const text = buf.toString("utf8");
        resolve({
          status: res.statusCode,
          headers: res.headers,
          body: buf,
          text,
          json() {
            try {
              return JSON.parse(text);
            } catch {
              throw new Error(`not JSON (HTTP ${res.statusCode}): ${JSON.stringify(text.slice(0, 300))}`);
            }
          },
        });
      });
      res.on("error", (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
    const timer = setTimeout(() => {
      req.destroy(new Error(`timed out after ${timeout} ms: ${method} ${host}:${port}${p}`));
    }, timeout);
    req.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    if (payload !== undefined) req.write(payload);
    req.end();
  });
}

/**
 * Admin publish: POST /pub?channel=C[&event=E]. `data` is sent as text, or as JSON
 * (Content-Type: application/json) when `json` is true or `data` is not a string.
 * Asserts HTTP 200 and {"type":"ok"}; resolves to the answer ({channel, seq, epoch}).
 */
export async function publish(server, channel, data, { event, json } = {}) {
  const asJson = json ?? typeof data !== "string";
  const body = asJson && typeof data !== "string" ? JSON.stringify(data) : data;
  let q = `/pub?channel=${encodeURIComponent(channel)}`;
  if (event !== undefined) q += `&event=${encodeURIComponent(event)}`;
  const r = await request({
    host: server.adminHost,
    port: server.adminPort,
    method: "POST",
    path: q,
    headers: asJson ? { "Content-Type": "application/json" } : { "Content-Type": "text/plain" },
    body,
  });
  if (r.status !== 200) throw new Error(`publish to ${channel} on ${server.name}: HTTP ${r.status} ${r.text}`);
  const v = r.json();
  if (v.type !== "ok" || !Number.isInteger(v.seq)) throw new Error(`publish to ${channel}: unexpected answer ${r.text}`);
  return v;
}

/** GET on the admin port; resolves to the response. */
export function adminGet(server, p) {
  return request({ host: server.adminHost, port: server.adminPort, path: p });
}

/** GET /info (or /info?channel=C) parsed. */
export async function info(server, channel) {
  const r = await adminGet(server, channel ? `/info?channel=${encodeURIComponent(channel)}` : "/info");
  if (r.status !== 200) throw new Error(`/info: HTTP ${r.status} ${r.text}`);
  return r.json();
}

/** GET /metrics as text. */
export async function metrics(server) {
  const r = await adminGet(server, "/metrics");
  if (r.status !== 200) throw new Error(`/metrics: HTTP ${r.status} ${r.text}`);
  return r.text;
}

/**
 * The sum of the samples of metric `name` in Prometheus text (every label set), or null
 * when there is no sample of it.
 */
export function metricValue(text, name) {
  let sum = null;
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (m && m[1] === name) sum = (sum ?? 0) + Number(m[3]);
  }
  return sum;
}

// ------------------------------------------------------------------------ socket.io-client

/** Options every client gets unless overridden: no reconnection, bounded connect. */
export const CLIENT_DEFAULTS = { reconnection: false, timeout: WAIT, forceNew: true };

/** A socket.io-client socket on its own Manager (`url` may end in a namespace), recorded for cleanup. */
export function client(url, opts = {}) {
  const s = io(url, { ...CLIENT_DEFAULTS, ...opts });
  live.sockets.add(s);
  live.managers.add(s.io);
  return s;
}

/** A Manager (for several namespaces over one connection), recorded for cleanup. */
export function manager(url, opts = {}) {
  const { forceNew, ...rest } = { ...CLIENT_DEFAULTS, ...opts };
  void forceNew;
  const m = new Manager(url, rest);
  live.managers.add(m);
  return m;
}

/** A socket of namespace `nsp` on manager `m`, recorded for cleanup. */
export function nspSocket(m, nsp, opts = {}) {
  const s = m.socket(nsp, opts);
  live.sockets.add(s);
  return s;
}

/** Waits for the socket's `connect`; rejects on `connect_error` (with its message and data). */
export function connected(socket, ms = WAIT, what = "connect") {
  if (socket.connected) return Promise.resolve(socket);
  return withTimeout(
    new Promise((resolve, reject) => {
      const ok = () => {
        socket.off("connect_error", bad);
        resolve(socket);
      };
      const bad = (err) => {
        socket.off("connect", ok);
        reject(new Error(`connect_error on ${socket.nsp}: ${err && err.message} ${JSON.stringify(err && err.data)}`));
      };
      socket.once("connect", ok);
      socket.once("connect_error", bad);
    }),
    ms,
    `${what} (${socket.nsp})`,
  );
}

/** Resolves to the first `connect_error` of the socket (fails if it connects instead). */
export function connectError(socket, ms = WAIT) {
  return withTimeout(
    new Promise((resolve, reject) => {
      socket.once("connect_error", (err) => resolve(err));
      socket.once("connect", () => reject(new Error(`${socket.nsp} connected; expected connect_error`)));
    }),
    ms,
    `connect_error (${socket.nsp})`,
  );
}

/** Waits until the engine's transport is `name` ("websocket" after an upgrade). */
export function transportIs(socket, name, ms = WAIT) {
  return waitFor(
    () => socket.io.engine && socket.io.engine.transport && socket.io.engine.transport.name === name,
    ms,
    () => `transport ${name} (now ${socket.io.engine && socket.io.engine.transport && socket.io.engine.transport.name})`,
  );
}

/**
 * Emits `event` with `args` and an ack; resolves to the ack's argument array.
 * Rejects after `ms` (socket.timeout()).
 */
export function emitAck(socket, event, ...args) {
  return emitAckWithin(WAIT, socket, event, ...args);
}

export function emitAckWithin(ms, socket, event, ...args) {
  return new Promise((resolve, reject) => {
    socket.timeout(ms).emit(event, ...args, (err, ...ackArgs) => {
      if (err) reject(new Error(`no ack for ${event} within ${ms} ms (${err.message})`));
      else resolve(ackArgs);
    });
  });
}

/**
 * Records every event `socket` receives (socket.onAny), in arrival order, as
 * { event, args, transport }. Register it right after creating the socket.
 *
 * rec.list        all of them
 * rec.of(name)    the argument arrays of event `name`
 * rec.wait(n, {event, ms})  waits until n were recorded (of `event` when given)
 */
export function record(socket, { stripOffset = false } = {}) {
  const list = [];
  socket.onAny((event, ...args) => {
    const transport = socket.io.engine && socket.io.engine.transport && socket.io.engine.transport.name;
    if (stripOffset) {
      // The last argument is the recovery offset (a string); an event without one keeps
      // its arguments and gets offset: null, which the test's assertions show.
      const last = args[args.length - 1];
      if (typeof last === "string") list.push({ event, args: args.slice(0, -1), transport, offset: last });
      else list.push({ event, args, transport, offset: null });
    } else {
      list.push({ event, args, transport });
    }
  });
  const rec = {
    list,
    of: (name) => list.filter((e) => e.event === name).map((e) => e.args),
    events: () => list.map((e) => [e.event, ...e.args]),
    async wait(n, { event, ms = WAIT } = {}) {
      const count = () => (event ? list.filter((e) => e.event === event).length : list.length);
      await waitFor(() => count() >= n, ms, () => `${n} events${event ? ` "${event}"` : ""} on ${socket.nsp}, got ${count()}: ${show(rec.events())}`);
      return rec;
    },
  };
  return rec;
}

/** JSON-ish rendering that shows Buffers and ArrayBuffers. */
export function show(v) {
  return JSON.stringify(v, (_k, x) => {
    if (x && x.type === "Buffer" && Array.isArray(x.data)) return `<Buffer ${x.data.join(",")}>`;
    if (x instanceof ArrayBuffer) return `<ArrayBuffer ${[...new Uint8Array(x)].join(",")}>`;
    return x;
  });
}

// ------------------------------------------------------------------------ redis

/** Starts redis-server on a free port (no persistence). Resolves to { port, url, stop() }. */
export async function startRedis() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "pushedge-sio-redis-"));
  let lastErr;
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const child = spawn(
      REDIS_SERVER,
      ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    live.children.add(child);
    let log = "";
    child.stdout.on("data", (c) => (log += c));
    child.stderr.on("data", (c) => (log += c));
    let exited = false;
    const exitP = new Promise((r) =>
      child.on("exit", () => {
        exited = true;
        live.children.delete(child);
        r();
      }),
    );
    let spawnErr = null;
    child.on("error", (e) => (spawnErr = e));
    try {
      await waitFor(
        async () => {
          if (spawnErr) throw new Error(`cannot run ${REDIS_SERVER} (${spawnErr.message}): run \`make deps-redis\``);
          if (exited) throw new Error(`redis-server exited: ${log}`);
          return (await redisPing(port).catch(() => false)) === true;
        },
        5_000,
        `redis-server on ${port} answering PING`,
      );
    } catch (e) {
      lastErr = e;
      child.kill("SIGKILL");
      await exitP;
      if (spawnErr) break;
      continue;
    }
    const redis = {
      port,
      url: `redis://127.0.0.1:${port}`,
      log: () => log,
      async stop() {
        if (!exited) {
          child.kill("SIGTERM");
          await withTimeout(exitP, 3_000, "redis exit").catch(() => {
            child.kill("SIGKILL");
            return exitP;
          });
        }
        live.servers.delete(redis);
        fs.rmSync(dir, { recursive: true, force: true });
      },
    };
    live.servers.add(redis);
    return redis;
  }
  fs.rmSync(dir, { recursive: true, force: true });
  throw lastErr;
}

/** PING over RESP; resolves true on +PONG. */
export function redisPing(port) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, "127.0.0.1");
    let buf = "";
    s.setTimeout(1_000, () => s.destroy(new Error("timeout")));
    s.on("connect", () => s.write("PING\r\n"));
    s.on("data", (d) => {
      buf += d;
      if (buf.includes("\r\n")) {
        s.end();
        resolve(buf.startsWith("+PONG"));
      }
    });
    s.on("error", reject);
  });
}

// ------------------------------------------------------------------------ static pages, browser

export const BUNDLE = path.join(HERE, "node_modules", "socket.io-client", "dist", "socket.io.min.js");

/**
 * A tiny HTTP server on 127.0.0.1:0 serving `pages` ({ "/path": html }) and
 * /socket.io.min.js (the socket.io-client bundle). Resolves to { url, port, requests, close() }.
 */
export async function startStatic(pages = {}) {
  const requests = [];
  const srv = http.createServer((req, res) => {
    requests.push(req.url);
    const p = new URL(req.url, "http://x").pathname;
    if (p === "/socket.io.min.js") {
      res.writeHead(200, { "Content-Type": "application/javascript" });
      res.end(fs.readFileSync(BUNDLE));
    } else if (Object.hasOwn(pages, p)) {
      res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
      res.end(pages[p]);
    } else if (p === "/favicon.ico") {
      res.writeHead(204);
      res.end();
    } else {
      res.writeHead(404, { "Content-Type": "text/plain" });
      res.end("not found");
    }
  });
  const sockets = new Set();
  srv.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  const { port } = srv.address();
  const close = () =>
    new Promise((r) => {
      for (const s of sockets) s.destroy();
      srv.close(() => r());
    });
  onCleanup(close);
  return { url: `http://127.0.0.1:${port}`, port, requests, close };
}

export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-background-networking",
  "--disable-gpu",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

/**
 * Headless Chromium through playwright-core, closed by cleanup(). `ports`: the ports the
 * page talks to; Chromium refuses some ports as unsafe (net::ERR_UNSAFE_PORT: 5060, 6000,
 * 6665-6669, 10080, ...) and a port from bind(0) may be one of them, so they are allowed
 * explicitly.
 */
export async function launchChromium({ ports = [], args: extra = [] } = {}) {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: run \`make deps-socketio\` (apt-get install chromium)`);
  const { chromium } = await import("playwright-core");
  const args = [...CHROMIUM_ARGS];
  if (ports.length) args.push(`--explicitly-allowed-ports=${ports.join(",")}`);
  args.push(...extra);
  const browser = await withTimeout(
    chromium.launch({ executablePath: CHROMIUM, headless: true, args }),
    15_000,
    "chromium launch",
  );
  onCleanup(() => browser.close());
  return browser;
}

// ------------------------------------------------------------------------ Engine.IO, raw

/** The Engine.IO endpoint path with a query (EIO=4 unless given). */
export function eioPath(query = {}) {
  const q = new URLSearchParams({ EIO: "4", transport: "polling", ...query });
  for (const [k, v] of Object.entries(query)) if (v === null) q.delete(k);
  return `/socket.io/?${q}`;
}

/**
 * Engine.IO polling handshake; asserts 200 and an open packet. Resolves to the open
 * packet's object ({sid, upgrades, pingInterval, pingTimeout, maxPayload}).
 */
export async function eioHandshake(server, query = {}) {
  const r = await request({ port: server.port, path: eioPath(query) });
  if (r.status !== 200 || r.text[0] !== "0") {
    throw new Error(`handshake: HTTP ${r.status} ${JSON.stringify(r.text.slice(0, 300))}`);
  }
  return JSON.parse(r.text.slice(1));
}

/** The packets of an Engine.IO v4 polling payload (separated by \x1e). */
export function eioPackets(text) {
  return text.length ? text.split("\x1e") : [];
}
