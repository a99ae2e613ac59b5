#!/usr/bin/env python3
"""python-socketio (5.x, sync client) against pushedge's Socket.IO endpoint.

Starts its own `pushedge serve` ($PUSHEDGE_BIN, default target/debug/pushedge from the repo
root; --backend $PUSHEDGE_BACKEND when set), then, over websocket and over polling:
connects with socketio.Client(), receives admin publishes (text, JSON with event=, binary),
emits with a callback ack and with call() (client_publish on: {ok: true, seq, epoch}, and
every socket of the namespace gets the event), joins a room through auth.channels on
/chat1; then, on a server without client_publish, the ack is {ok: false, code: 403}.

Plain asserts; exits non-zero on the first failure. Every server it started is stopped,
also on failure; a watchdog ends the run after WHOLE_RUN_SECS.

    python3 tests/socketio/test_python.py
"""

import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import requests
import socketio

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BIN = os.path.abspath(os.environ["PUSHEDGE_BIN"]) if os.environ.get("PUSHEDGE_BIN") else os.path.join(REPO, "target", "debug", "pushedge")
BACKEND = os.environ.get("PUSHEDGE_BACKEND", "")
WAIT = 5.0
SETTLE = 0.3
WHOLE_RUN_SECS = 90

SERVERS = []  # running
STARTED = []  # every server started, for the logs of a failed test


def toml(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml(x) for x in v) + "]"
    raise ValueError(v)


class Server:
    """`pushedge serve` on 127.0.0.1:0; parses the ` ready: ` line of stderr."""

    def __init__(self, **settings):
        if not os.path.exists(BIN):
            raise SystemExit(f"{BIN} does not exist: run `cargo build -p pushedge` (or set PUSHEDGE_BIN)")
        self.dir = tempfile.mkdtemp(prefix="pushedge-sio-py-")
        settings = {"socketio": True, **settings}
        argv = [BIN, "serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                "--control", os.path.join(self.dir, "p.sock"), "--workers", "2"]
        if BACKEND:
            argv += ["--backend", BACKEND]
        for k, v in settings.items():
            argv += ["--set", f"{k}={toml(v)}"]
        self.argv = argv
        self.log = []
        self.fields = None
        ready = threading.Event()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        SERVERS.append(self)
        STARTED.append(self)

        def read():
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace")
                self.log.append(line)
                if self.fields is None and " ready: " in line:
                    f = {}
                    for tok in line.split(" ready: ", 1)[1].split():
                        if "=" in tok:
                            k, v = tok.split("=", 1)
                            f[k] = v
                    if "subscriber" in f and "admin" in f:
                        self.fields = f
                        ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        ready.wait(10)
        if self.fields is None:
            self.stop()
            raise AssertionError(f"pushedge did not become ready\ncommand: {' '.join(argv)}\nstderr:\n{''.join(self.log)}")
        self.url = "http://" + self.fields["subscriber"]
        self.admin = "http://" + self.fields["admin"]

    def publish(self, channel, data, event=None):
        params = {"channel": channel}
        if event is not None:
            params["event"] = event
        if isinstance(data, str):
            r = requests.post(self.admin + "/pub", params=params, data=data.encode(), headers={"Content-Type": "text/plain"}, timeout=WAIT)
        else:
            r = requests.post(self.admin + "/pub", params=params, data=json.dumps(data), headers={"Content-Type": "application/json"}, timeout=WAIT)
        assert r.status_code == 200, f"publish {channel}: HTTP {r.status_code} {r.text}"
        v = r.json()
        assert v["type"] == "ok", v
        return v

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3)
        if self in SERVERS:
            SERVERS.remove(self)


class Recorder:
    """Every event a client gets on a namespace (catch-all handler), in arrival order."""

    def __init__(self, sio, namespace="/"):
        self.events = []
        self.cond = threading.Condition()

        def on_any(event, *args):
            with self.cond:
                self.events.append([event, *args])
                self.cond.notify_all()

        sio.on("*", on_any, namespace=namespace)

    def wait(self, n, timeout=WAIT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.events) < n:
                left = deadline - time.monotonic()
                assert left > 0, f"timed out waiting for {n} events, got {self.events!r}"
                self.cond.wait(left)
        return self.events


def connect(srv, transport, namespace="/", auth=None):
    sio = socketio.Client(reconnection=False)
    rec = Recorder(sio, namespace)
    sio.connect(srv.url, transports=[transport], namespaces=[namespace], auth=auth, wait_timeout=WAIT)
    assert sio.connected
    assert sio.transport() == transport, sio.transport()
    return sio, rec


def test_transport(transport):
    other = "polling" if transport == "websocket" else "websocket"
    srv = Server(client_publish=["*"])
    clients = []
    try:
        sio, rec = connect(srv, transport)
        clients.append(sio)
        obs, orec = connect(srv, other)
        clients.append(obs)
        assert sio.get_sid("/") != obs.get_sid("/")

        p1 = srv.publish("all", "hello python")
        p2 = srv.publish("all", {"a": 1, "b": [True, None, "é"]}, event="news")
        srv.publish("all", {"$binary": base64.b64encode(b"\x01\x02\x03").decode()}, event="bin")
        assert (p1["seq"], p2["seq"]) == (1, 2)
        rec.wait(3)

        # call(): blocks for the ack.
        ack = sio.call("chat", "hi", timeout=WAIT)
        assert isinstance(ack, dict), ack
        assert ack["ok"] is True, ack
        assert ack["seq"] == 4, ack
        assert ack["epoch"] == p1["epoch"], (ack, p1)

        # emit() with a callback.
        got = []
        done = threading.Event()

        def cb(*args):
            got.append(args)
            done.set()

        sio.emit("chat", ("two", {"args": 2}), callback=cb)
        assert done.wait(WAIT), "the callback ack never came"
        assert len(got) == 1 and len(got[0]) == 1, got
        assert got[0][0]["ok"] is True and got[0][0]["seq"] == 5, got

        # Binary from the client.
        ack = sio.call("upload", b"\x00\xff\x1e\x62", timeout=WAIT)
        assert ack["ok"] is True and ack["seq"] == 6, ack

        expected = [
            ["message", "hello python"],
            ["news", {"a": 1, "b": [True, None, "é"]}],
            ["bin", b"\x01\x02\x03"],
            ["chat", "hi"],
            ["chat", "two", {"args": 2}],
            ["upload", b"\x00\xff\x1e\x62"],
        ]
        for name, r in (("client", rec), ("observer", orec)):
            r.wait(len(expected))
            time.sleep(SETTLE)
            assert r.events == expected, f"{transport} {name}: {r.events!r}"

        # A room through auth.channels on /chat1.
        c1, c1rec = connect(srv, transport, namespace="/chat1", auth={"channels": ["lobby"]})
        clients.append(c1)
        srv.publish("chat1.lobby", "in the lobby")
        srv.publish("chat1.all", {"to": "chat1"}, event="news")
        c1rec.wait(2)
        time.sleep(SETTLE)
        assert c1rec.events == [["message", "in the lobby"], ["news", {"to": "chat1"}]], c1rec.events
        assert len(rec.events) == len(expected), rec.events
    finally:
        for c in clients:
            try:
                c.disconnect()
            except Exception:
                pass
        srv.stop()


def test_refused():
    srv = Server()
    sio = None
    try:
        sio, rec = connect(srv, "websocket")
        ack = sio.call("chat", "hi", timeout=WAIT)
        assert ack["ok"] is False, ack
        assert ack["code"] == 403, ack
        assert isinstance(ack["error"], str), ack
        time.sleep(SETTLE)
        assert rec.events == [], rec.events
    finally:
        if sio is not None:
            sio.disconnect()
        srv.stop()


def watchdog():
    time.sleep(WHOLE_RUN_SECS)
    print(f"test_python: timed out after {WHOLE_RUN_SECS} s", file=sys.stderr, flush=True)
    for s in list(SERVERS):
        s.proc.kill()
    os._exit(3)


def main():
    threading.Thread(target=watchdog, daemon=True).start()
    tests = [
        ("websocket", lambda: test_transport("websocket")),
        ("polling", lambda: test_transport("polling")),
        ("client publish refused (403)", test_refused),
    ]
    failed = 0
    for name, fn in tests:
        start = time.monotonic()
        first = len(STARTED)
        try:
            fn()
            print(f"ok - python-socketio: {name} ({time.monotonic() - start:.1f} s)", flush=True)
        except Exception:
            failed += 1
            print(f"not ok - python-socketio: {name}", flush=True)
            traceback.print_exc()
            for s in STARTED[first:]:
                print(f"server stderr ({' '.join(s.argv)}):\n" + "".join(s.log[-40:]), file=sys.stderr)
        finally:
            for s in list(SERVERS):
                s.stop()
    print(f"python-socketio: {len(tests) - failed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # python-socketio's background threads must not hold the exit.
    os._exit(code)
