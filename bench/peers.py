#!/usr/bin/env python3
"""bench-peers: pushedge side by side with nchan (nginx), measured the same way.

    python3 bench/peers.py [--hold-conns 19000] [--subs 15000] [--publishes 30]

Installs `nginx` and `libnginx-mod-nchan` with apt when missing (nothing else), writes an
nchan configuration as nchan's README documents it under target/bench/nchan/ (one worker,
`worker_rlimit_nofile 20000`, `worker_connections 20000`, a subscriber location for
websocket/eventsource/longpoll with `nchan_channel_id $arg_id`, an HTTP publisher
location), and runs nginx in the foreground with that prefix (not the system service).

For each server, the same loadgen runs:
- hold: 19,000 idle WebSocket subscribers; bytes per idle connection = the server's RSS
  (nginx: master + worker; pushedge: its one process) over N, and minus its idle RSS;
  kernel slab per connection (both ends); connect rate;
- fanout: 15,000 WebSocket subscribers on one channel, 30 publishes at 1/s (nchan answers
  a publish only after its fan-out, so they are paced to be measured alone): last arrival
  per publish p50/p99, and CPU seconds per million deliveries;
- publish rate to a channel with one subscriber: one keep-alive connection with 128
  pipelined requests, and 8 connections with one request each.

Prints one side-by-side table and writes target/bench/peers.json.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import benchlib as B  # noqa: E402
import fanout as F  # noqa: E402

NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"
NCHAN_PORT = 8300

NGINX_CONF = """# nchan as its README documents it, for bench/peers.py (written by the script).
load_module {module};
worker_processes 1;
worker_rlimit_nofile 20000;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;

events {{
    worker_connections 20000;
}}

http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    server {{
        listen 127.0.0.1:{port} backlog=4096;

        location = /sub {{
            nchan_subscriber websocket eventsource longpoll;
            nchan_channel_id $arg_id;
        }}

        location = /pub {{
            nchan_publisher;
            nchan_channel_id $arg_id;
        }}
    }}
}}
"""


def ensure_nchan():
    if shutil.which("nginx") and os.path.exists(NCHAN_MODULE):
        return
    B.log("installing nginx and libnginx-mod-nchan with apt")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "nginx",
                        "libnginx-mod-nchan"], env=env, timeout=600)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "nginx",
                        "libnginx-mod-nchan"], env=env, timeout=600, check=True)


def wait_port(port, proc, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class Nginx:
    def __init__(self):
        self.prefix = os.path.join(B.OUT, "nchan")
        os.makedirs(self.prefix, exist_ok=True)
        self.conf = os.path.join(self.prefix, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(NGINX_CONF.format(module=NCHAN_MODULE, prefix=self.prefix, port=NCHAN_PORT))
        logpath = os.path.join(self.prefix, "stderr.log")
        lf = open(logpath, "w")
        self.proc = B.spawn(["nginx", "-p", self.prefix + "/", "-c", self.conf,
                             "-g", "daemon off;"],
                            stdin=subprocess.DEVNULL, stdout=lf, stderr=lf)
        lf.close()
        if not wait_port(NCHAN_PORT, self.proc):
            raise SystemExit("nginx did not start:\n" + B.read(logpath)
                             + B.read(os.path.join(self.prefix, "error.log")))
        time.sleep(0.3)
        self.pids = [self.proc.pid] + B.children_of(self.proc.pid)
        self.idle_rss_kb = [B.rss_kb(p) for p in self.pids]

    def stop(self):
        B.stop(self.proc, grace=10)


def measure(name, pids, idle, url, pub, fmt, a):
    out = {"server": name}
    B.log(f"{name}: hold {a.hold_conns}")
    out["hold"] = B.hold(url, a.hold_conns, pids, idle, fmt=fmt, hold_s=4)
    B.log(f"{name}: fanout {a.subs} x {a.publishes}")
    out["fanout"] = F.fanout(url, pub, a.subs, 1, a.publishes, a.rate, pids, fmt=fmt)
    B.log(f"{name}: publish rate")
    out["pubrate_1x128"] = F.pubrate(url, pub, pids, a.pub_messages, 1, 128, fmt=fmt)
    out["pubrate_8x1"] = F.pubrate(url, pub, pids, a.pub_messages, 8, 1, fmt=fmt)
    return out


def rows(results, a):
    def cell(r, f):
        try:
            return f(r)
        except (KeyError, TypeError, ZeroDivisionError):
            return "-"

    def lat(r, k):
        return B.ms(r["fanout"]["last_arrival_us"][k])

    spec = [
        (f"RSS per idle WS connection at {a.hold_conns} (minus idle RSS)",
         lambda r: f"{r['hold']['server_rss_per_conn_b']:,.0f} B ({r['hold']['server_rss_delta_per_conn_b']:,.0f} B)"),
        ("kernel slab per connection, both ends (net of /proc inodes)",
         lambda r: f"{r['hold']['slab_per_conn_b']:,.0f} B ({r['hold']['slab_net_per_conn_b']:,.0f} B)"),
        (f"connections held / failed",
         lambda r: f"{r['hold']['held']} / {r['hold']['loadgen']['connect']['failed']}"),
        ("connect rate", lambda r: f"{r['hold']['loadgen']['connect']['rate_per_s']:,.0f}/s"),
        (f"fan-out to {a.subs}: last arrival p50", lambda r: lat(r, "p50")),
        (f"fan-out to {a.subs}: last arrival p99", lambda r: lat(r, "p99")),
        (f"fan-out to {a.subs}: last arrival max", lambda r: lat(r, "max")),
        ("fan-out: delivered / expected (lost)",
         lambda r: f"{r['fanout']['delivered']}/{r['fanout']['expected']} ({r['fanout']['lost']})"),
        ("fan-out: publish reply p50", lambda r: B.ms(r["fanout"]["publish_reply_us"]["p50"])),
        ("server CPU s per million deliveries",
         lambda r: f"{r['fanout']['server_cpu_s_per_m_deliveries']}"),
        ("publishes/s, 1 connection x 128 pipelined",
         lambda r: f"{r['pubrate_1x128']['publishes_per_s']:,.0f}"
                   + ("" if r["pubrate_1x128"]["complete"] else " (subscriber INCOMPLETE)")),
        ("publishes/s, 8 connections x 1",
         lambda r: f"{r['pubrate_8x1']['publishes_per_s']:,.0f}"
                   + ("" if r["pubrate_8x1"]["complete"] else " (subscriber INCOMPLETE)")),
    ]
    return [[label] + [cell(r, f) for r in results] for label, f in spec]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hold-conns", type=int, default=19000)
    ap.add_argument("--subs", type=int, default=15000)
    ap.add_argument("--publishes", type=int, default=30)
    ap.add_argument("--rate", type=float, default=1.0)
    ap.add_argument("--pub-messages", type=int, default=200000)
    ap.add_argument("--backend", choices=["epoll", "uring"], default="epoll")
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    B.check_binaries()
    ensure_nchan()
    B.prepare_system(a.hold_conns)
    nchan_version = B.sh("dpkg-query -W -f '${Version}' libnginx-mod-nchan")
    nginx_version = B.sh("nginx -v 2>&1")
    results = []

    ng = Nginx()
    try:
        url = f"ws://127.0.0.1:{NCHAN_PORT}/sub?id={{c}}"
        pub = f"http://127.0.0.1:{NCHAN_PORT}/pub?id={{c}}"
        r = measure("nchan", ng.pids, ng.idle_rss_kb, url, pub, "raw", a)
        r["idle_rss_kb"] = ng.idle_rss_kb
        r["version"] = f"{nginx_version}, libnginx-mod-nchan {nchan_version}"
        r["error_log_tail"] = B.read(os.path.join(ng.prefix, "error.log")).splitlines()[-5:]
        results.append(r)
    finally:
        ng.stop()

    sets = ["heartbeat_secs=600"] + a.set
    srv = B.start_pushedge(1, backend=a.backend, sets=sets, tag="peers")[0]
    try:
        url = "ws://127.0.0.1:8100/ws?channel={c}"
        pub = f"http://{srv.admin}/pub?channel={{c}}"
        r = measure("pushedge", [srv.pid], [srv.idle_rss_kb], url, pub, None, a)
        r["idle_rss_kb"] = [srv.idle_rss_kb]
        r["version"] = B.sh(f"{B.PUSHEDGE} --version") + f" ({a.backend} {' '.join(a.set)})".rstrip()
        r["server_log_warnings"] = B.server_errors([srv])
        results.append(r)
    finally:
        B.stop(srv.proc, grace=15)

    B.write_json("peers.json", {"machine": B.machine(), "args": vars(a), "results": results})
    print(B.table("bench-peers: same loadgen, same box (2 cores), loopback",
                  ["", "nchan (" + nginx_version.split("/")[-1] + ", 1 worker)",
                   f"pushedge ({a.backend}, 1 process)"],
                  rows(results, a)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
