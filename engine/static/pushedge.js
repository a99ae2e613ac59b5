/* pushedge.js: the browser client of pushedge (served at /pushedge.js and, as an ES module, at /pushedge.mjs).
 *
 *   const c = new Pushedge("http://127.0.0.1:8100", { token, transports: ["ws", "sse", "poll"], backoff: { min: 250, max: 10000 } });
 *   const news = c.subscribe("news", { since: 1 });        // since: N or "N@EPOCH"; without it, from now on
 *   news.on("message", (m) => console.log(m.seq, m.content)); // also "gap", "reset", "close", "join", "leave", "error"
 *   c.on("open", (e) => console.log("on", e.transport));    // also "close", "transport", "error", "refresh"
 *   const { seq, epoch } = await c.publish("chat.lobby", { text: "hi" }); // WebSocket only
 *   const { count, members } = await c.presence("chat.lobby");
 *   c.on("refresh", async () => c.refresh(await fetchNewToken()));
 *
 * Several channels share one connection. The transports are tried in order (WebSocket, then Server-Sent Events,
 * then long-polling) until one works, and the one that works is kept. Connections that drop are opened again
 * after a full-jitter exponential backoff, each channel resuming right after the last message it delivered
 * (seq and epoch), so nothing is missed or repeated; what the server no longer has arrives as a "gap" event,
 * a new stream of the channel as "reset".
 */
var Pushedge = (function () {
  "use strict";
  var ALL = ["ws", "sse", "poll"];
  var STABLE_MS = 1000; // a connection that closes sooner, having received nothing, did not work

  class Emitter {
    constructor() {
      this._h = {};
    }
    on(ev, fn) {
      (this._h[ev] = this._h[ev] || []).push(fn);
      return this;
    }
    off(ev, fn) {
      var l = this._h[ev] || [];
      this._h[ev] = fn ? l.filter((f) => f !== fn) : [];
      return this;
    }
    once(ev, fn) {
      var w = (...a) => {
        this.off(ev, w);
        fn.apply(this, a);
      };
      return this.on(ev, w);
    }
    _e(ev, ...a) {
      for (var fn of (this._h[ev] || []).slice()) {
        try {
          fn.apply(this, a);
        } catch (e) {
          setTimeout(() => {
            throw e;
          });
        }
      }
    }
  }

  function fail(reason, extra) {
    return Object.assign(new Error(reason), extra || {});
  }
  var noWs = (op, t) => op + " needs the WebSocket transport (now " + t + ")";

  /** One subscribed channel: its events and its position (seq and epoch of the last message delivered). */
  class Channel extends Emitter {
    constructor(client, name, since) {
      super();
      this.client = client;
      this.name = name;
      this.seq = 0;
      this.epoch = "";
      this.known = false; // whether seq/epoch say where the channel's stream is
      this.active = true;
      if (since != null && since !== "") {
        var m = /^(\d+)(?:@([0-9a-z]+))?$/.exec(String(since));
        if (!m) throw fail("since must be N or N@EPOCH");
        this.seq = Math.max(0, +m[1] - 1);
        this.epoch = m[2] || "";
        this.known = true;
      }
    }
    /** Where the next connection resumes: `SEQ[@EPOCH]` (the first seq wanted), or null (from now on). */
    get position() {
      return this.known ? this.seq + 1 + (this.epoch ? "@" + this.epoch : "") : null;
    }
    publish(content) {
      return this.client.publish(this.name, content);
    }
    presence() {
      return this.client.presence(this.name);
    }
    unsubscribe() {
      this.client._unsub(this);
    }
    _at(seq, epoch) {
      this.seq = seq;
      if (epoch) this.epoch = epoch;
      this.known = true;
    }
  }

  class Pushedge extends Emitter {
    constructor(url, opts) {
      super();
      opts = opts || {};
      this.url = String(url || location.origin).replace(/\/+$/, "");
      this.token = opts.token || "";
      this.transports = (opts.transports || ALL).filter((t) => ALL.indexOf(t) >= 0);
      if (!this.transports.length) throw fail("no known transport in " + opts.transports);
      this.backoff = Object.assign({ min: 250, max: 10000 }, opts.backoff);
      this.timeout = opts.timeout || 10000; // for op replies
      this.channels = new Map();
      this.transport = null; // the transport connecting or open
      this.state = "idle"; // idle, connecting, open, closed
      this.working = null; // the transport that worked last
      this._ti = 0;
      this._f = 0;
      this._a = 0;
      this._g = 0;
      this._c = null;
      this._t = 0;
      this._p = new Map(); // op id -> { op, channel, resolve, reject, timer }
      this._q = []; // ops waiting for the WebSocket to open
      this._n = 1;
      this._w = [];
    }

    /** Subscribes `name` (several channels share the connection); returns its Channel. */
    subscribe(name, opts) {
      var ch = this.channels.get(name);
      if (ch) return ch;
      ch = new Channel(this, name, opts && opts.since);
      this.channels.set(name, ch);
      if (this.state === "open" && this.transport === "ws") this._sub(ch);
      else if (this._c) this.transport !== "ws" && this._ch();
      else this._en();
      return ch;
    }

    _unsub(ch) {
      if (!ch.active) return;
      ch.active = false;
      this.channels.delete(ch.name);
      if (this.state === "open" && this.transport === "ws") this._send({ op: "unsub", channel: ch.name }, true);
      else if (this._c && this.transport !== "ws") this._ch();
    }

    /** Publishes `content` (any JSON value) to `channel` over the WebSocket; resolves to { seq, epoch }. */
    publish(channel, content) {
      return this._op({ op: "pub", channel: channel, content: content }, (m) => ({ seq: m.seq, epoch: m.epoch }));
    }

    /** Who is on `channel`: { count, members } (the WebSocket op, else GET /presence). */
    presence(channel) {
      if ((this.transport || this.transports[this._ti]) === "ws" && this.state !== "closed")
        return this._op({ op: "presence", channel: channel }, (m) => ({ count: m.count, members: m.members || [] }));
      return fetch(this._http("/presence", "channel=" + encodeURIComponent(channel)), { cache: "no-store" }).then((r) =>
        r.json().then((m) => {
          if (!r.ok || m.type === "error") throw fail((m && m.reason) || "HTTP " + r.status, { code: r.status });
          return { count: m.count, members: m.members || [] };
        }),
      );
    }

    /** A new token: the WebSocket `refresh` op, else the connection is opened again with it. */
    refresh(token) {
      this.token = token;
      if (this.state === "open" && this.transport === "ws")
        return this._op({ op: "refresh", token: token }, (m) => ({ expires: m.expires }));
      if (this.state !== "open" && this.state !== "connecting") return Promise.resolve({});
      this._re();
      return this._ready();
    }

    /** Closes the connection for good. */
    close() {
      if (this.state === "closed") return;
      var was = this.state === "open";
      this._stop();
      this.state = "closed";
      this._flush(fail("client closed"));
      if (was) this._e("close", { transport: this.transport, reason: "closed by the client" });
    }

    /** Test hook: drops the connection as a network failure would (it reconnects). */
    _debugDrop() {
      if (this._c) this._c.drop();
    }

    // ------------------------------------------------------------- ops

    _op(msg, done) {
      if (this.state === "closed") return Promise.reject(fail("client closed"));
      var t = this.transport || this.transports[this._ti];
      if (t !== "ws")
        return Promise.reject(
          fail(noWs(msg.op, t), { code: 0, op: msg.op }),
        );
      return new Promise((resolve, reject) => {
        var id = this._n++;
        var p = { op: msg.op, channel: msg.channel, done: done, resolve: resolve, reject: reject };
        p.timer = setTimeout(() => {
          this._p.delete(id);
          this._q = this._q.filter((q) => q.id !== id);
          reject(fail(msg.op + ": no answer within " + this.timeout + " ms", { op: msg.op }));
        }, this.timeout);
        this._p.set(id, p);
        msg.id = id;
        if (this.state === "open") (p.sent = true), this._send(msg);
        else {
          this._q.push(msg);
          this._en(true);
        }
      });
    }

    _sub(ch) {
      var msg = { op: "sub", channel: ch.name };
      if (ch.known) msg.since = ch.position;
      var id = this._n++;
      var p = { op: "sub", channel: ch.name, sent: true };
      p.timer = setTimeout(() => this._p.delete(id), this.timeout);
      this._p.set(id, p);
      msg.id = id;
      this._send(msg);
    }

    _send(msg, noId) {
      if (noId) msg.id = this._n++;
      this._c && this._c.send(JSON.stringify(msg));
    }

    _s(p, m) {
      clearTimeout(p.timer);
      var ch = p.channel != null ? this.channels.get(p.channel) : null;
      if (m.type === "error") {
        var e = fail(m.reason || "error " + m.code, { code: m.code, op: p.op, channel: p.channel });
        if (p.op === "sub" && ch) {
          ch.active = false;
          this.channels.delete(ch.name);
          ch._e("error", e);
        }
        if (p.reject) p.reject(e);
        return;
      }
      if (p.op === "sub" && ch && !ch.known && m.seq != null) ch._at(m.seq, m.epoch);
      if (p.resolve) p.resolve(p.done ? p.done(m) : m);
    }

    // A reply to an op: found by its id.
    _reply(m) {
      var p = this._p.get(m.id);
      if (!p) return false;
      this._p.delete(m.id);
      this._s(p, m);
      return true;
    }

    _flush(err) {
      for (var [, p] of this._p) {
        clearTimeout(p.timer);
        if (p.reject) p.reject(err);
      }
      this._p.clear();
      this._q = [];
      for (var o of this._w.splice(0)) o.reject(err);
    }

    _ready() {
      return new Promise((resolve, reject) => {
        var t = setTimeout(() => reject(fail("not connected within " + this.timeout + " ms")), this.timeout);
        this._w.push({ resolve: (v) => (clearTimeout(t), resolve(v)), reject: (e) => (clearTimeout(t), reject(e)) });
      });
    }

    // ------------------------------------------------------------- envelopes

    _env(m) {
      var ch = m.channel != null ? this.channels.get(m.channel) : null;
      switch (m.type) {
        case "data":
          if (!ch) return;
          if (ch.known && m.seq <= ch.seq && (!m.epoch || !ch.epoch || m.epoch === ch.epoch)) return; // a duplicate
          ch._at(m.seq, m.epoch);
          ch._e("message", m);
          return;
        case "gap":
          if (!ch) return;
          if (m.to > ch.seq || !ch.known) ch._at(m.to, "");
          ch._e("gap", m);
          return;
        case "reset":
          if (!ch) return;
          ch.seq = 0;
          ch.epoch = m.epoch || "";
          ch.known = true;
          ch._e("reset", m);
          return;
        case "next_seq":
        case "noop":
          if (ch && !ch.known && m.seq != null) ch._at(m.seq - 1, m.epoch);
          else if (ch && !ch.epoch && m.epoch) ch.epoch = m.epoch;
          return;
        case "close":
          if (!ch) return;
          ch.active = false;
          this.channels.delete(ch.name);
          ch._e("close", m);
          if (this.transport !== "ws") this._ch();
          return;
        case "join":
        case "leave":
          if (ch) ch._e(m.type, m.member || {}, m);
          return;
        case "refresh":
          this._e("refresh", m);
          return;
        case "ok":
        case "presence":
        case "refreshed":
        case "pong":
          this._reply(m);
          return;
        case "error":
          if (this._reply(m)) return;
          var e = fail(m.reason || "error " + m.code, { code: m.code, channel: m.channel });
          if (ch) ch._e("error", e);
          else this._e("error", e);
      }
    }

    // The SSE cursor (`a:12@e1,b:3`): where channels that have not delivered anything yet stand.
    _cu(id) {
      for (var item of String(id || "").split(",")) {
        var i = item.lastIndexOf(":");
        var ch = this.channels.get(item.slice(0, i));
        var p = /^(\d+)(?:@([0-9a-z]+))?$/.exec(item.slice(i + 1));
        if (ch && p && !ch.known) ch._at(+p[1], p[2]);
      }
    }

    // ------------------------------------------------------------- connections

    _http(path, q) {
      return this.url + path + "?" + q + (this.token ? "&token=" + encodeURIComponent(this.token) : "");
    }

    // `channel=a,b&since=a:3@e1,b:7`: every channel (onlyKnown: those with a position) and the positions.
    _query(list, key) {
      if (!list.length) return "";
      var pos = list.filter((c) => c.known).map((c) => encodeURIComponent(c.name) + ":" + c.position);
      var q = "channel=" + list.map((c) => encodeURIComponent(c.name)).join(",");
      return pos.length && key ? q + "&" + key + "=" + pos.join(",") : q;
    }

    _en(any) {
      if (this.state !== "idle" || this._t) return;
      if (!this.channels.size && !(any && this.transports[this._ti] === "ws")) return;
      this.state = "connecting";
      this._t = setTimeout(() => this._co(), 0);
    }

    // The set of channels changed while an SSE or poll connection is up: connect again with the new set.
    _ch() {
      if (this._c && this._c.changed) this._c.changed();
      else this._re();
    }

    _re() {
      this._stop();
      this.state = "idle";
      this._en(this._q.length > 0);
    }

    _stop() {
      this._g++;
      clearTimeout(this._t);
      this._t = 0;
      var c = this._c;
      this._c = null;
      if (c) c.close();
    }

    _co() {
      this._t = 0;
      if (this.state === "closed") return;
      var t = this.transports[this._ti];
      if (t !== "ws") {
        // ops waiting for a WebSocket that did not work
        for (var q of this._q.splice(0)) this._reply({ type: "error", id: q.id, code: 0, reason: noWs(q.op, t) });
        if (!this.channels.size) return void (this.state = "idle");
      }
      this.state = "connecting";
      if (this.transport !== t) {
        this.transport = t;
        this._e("transport", t);
      }
      var gen = ++this._g;
      this._c = this["_" + t](gen);
    }

    // The connection `gen` is up.
    _up(gen) {
      if (gen !== this._g) return;
      this.state = "open";
      this._e("open", { transport: this.transport });
      for (var o of this._w.splice(0)) o.resolve({ transport: this.transport });
    }

    // The connection `gen` worked (it stayed up, or delivered something).
    _good(gen) {
      if (gen !== this._g) return;
      this.working = this.transport;
      this._f = 0;
      this._a = 0;
    }

    // The connection `gen` is gone: `good` says whether it had worked.
    _down(gen, info, good) {
      if (gen !== this._g) return;
      this._g++;
      this._c = null;
      var was = this.state === "open";
      this.state = "connecting";
      for (var [k, p] of this._p) {
        if (!p.sent) continue; // queued, for the next connection
        clearTimeout(p.timer);
        this._p.delete(k);
        if (p.reject) p.reject(fail(p.op + ": the connection was lost" + (p.op === "pub" ? " (it may have been published)" : ""), { op: p.op }));
      }
      if (was) this._e("close", Object.assign({ transport: this.transport }, info));
      if (info && info.error) this._e("error", info.error);
      var delay;
      if (!good && (!this.working || ++this._f >= 3)) {
        this._f = 0;
        this._ti = (this._ti + 1) % this.transports.length;
        if (this._ti) delay = 0; // the next transport, at once
      }
      if (delay == null) {
        var cap = Math.min(this.backoff.max, this.backoff.min * Math.pow(2, this._a++));
        delay = Math.random() * cap;
      }
      this._t = setTimeout(() => this._co(), delay);
    }

    _ws(gen) {
      var list = [...this.channels.values()];
      var inUrl = list.filter((c) => c.known);
      var ws = new WebSocket(this._http("/ws", this._query(inUrl, "since")).replace(/^http/, "ws"));
      var opened = 0;
      var good = false;
      var ok = () => {
        if (!good) (good = true), this._good(gen);
      };
      var stable;
      ws.onopen = () => {
        if (gen !== this._g) return;
        opened = Date.now();
        stable = setTimeout(ok, STABLE_MS);
        this._up(gen);
        var names = new Set(inUrl.map((c) => c.name));
        for (var ch of this.channels.values()) if (!names.has(ch.name)) this._sub(ch);
        for (var n of names) if (!this.channels.has(n)) this._send({ op: "unsub", channel: n }, true);
        for (var q of this._q.splice(0)) {
          var p = this._p.get(q.id);
          if (p) (p.sent = true), ws.send(JSON.stringify(q));
        }
      };
      ws.onmessage = (e) => {
        if (gen !== this._g) return;
        ok();
        var m;
        try {
          m = JSON.parse(e.data);
        } catch (_) {
          return;
        }
        this._env(m);
      };
      ws.onclose = (e) => {
        clearTimeout(stable);
        this._down(gen, { code: e.code, reason: e.reason || (opened ? "closed" : "could not connect") }, good);
      };
      return {
        send: (s) => ws.readyState === 1 && ws.send(s),
        close: () => ws.close(),
        drop: () => ws.close(3000, "dropped"),
      };
    }

    _sse(gen) {
      var es = new EventSource(this._http("/sse", this._query([...this.channels.values()], "since")));
      var good = false;
      var stable;
      var ok = () => {
        if (!good) (good = true), this._good(gen);
      };
      var down = (info) => {
        es.close();
        clearTimeout(stable);
        this._down(gen, info, good);
      };
      es.onopen = () => {
        if (gen !== this._g) return;
        stable = setTimeout(ok, STABLE_MS);
        this._up(gen);
      };
      es.onmessage = (e) => {
        if (gen !== this._g) return;
        ok();
        var m;
        try {
          m = JSON.parse(e.data);
        } catch (_) {
          return;
        }
        this._env(m);
        this._cu(e.lastEventId);
      };
      es.onerror = () => down({ reason: "event stream failed" });
      return { close: () => (es.close(), clearTimeout(stable)), drop: () => down({ reason: "dropped" }) };
    }

    _poll(gen) {
      var ac;
      var good = false;
      var first = true;
      var drop = (info) => {
        if (ac) ac.abort();
        this._down(gen, info, good);
      };
      // One loop per channel set; `changed` starts another (a new generation) after aborting the held poll.
      var loop = async (my) => {
        while (my === this._g) {
          var list = [...this.channels.values()];
          if (!list.length) return;
          // the first poll (answered at once) says where unknown channels stand, then each asks from its position
          var q = first || !list.every((c) => c.known) ? this._query(list, "") : this._query(list, "seq");
          var a = (ac = new AbortController());
          var t = setTimeout(() => a.abort(), 90000);
          var r, arr;
          try {
            r = await fetch(this._http("/poll", q), { signal: a.signal, cache: "no-store" });
            arr = await r.json();
          } catch (e) {
            if (my === this._g) drop({ reason: "the poll failed: " + e.message });
            return;
          } finally {
            clearTimeout(t);
          }
          if (my !== this._g) return;
          if (!r.ok || !Array.isArray(arr)) {
            var err = fail((arr && arr.reason) || "HTTP " + r.status, { code: r.status });
            return drop({ reason: err.message, code: r.status, error: err });
          }
          if (first) (first = false), this._up(gen);
          good || ((good = true), this._good(gen));
          for (var m of arr) this._env(m);
        }
      };
      loop(gen);
      return {
        close: () => ac && ac.abort(),
        drop: () => drop({ reason: "dropped" }),
        changed: () => {
          gen = ++this._g;
          if (ac) ac.abort();
          loop(gen);
        },
      };
    }
  }

  Pushedge.Channel = Channel;
  return Pushedge;
})();
if (typeof window !== "undefined") window.Pushedge = Pushedge;
