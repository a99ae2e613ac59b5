#!/usr/bin/env python3
"""bench-peers: pushedge side by side with nchan (nginx), measured the same way.

    python3 bench/peers.py [--hold-conns 19000] [--subs 15000] [--publishes 30]
                           [--tls [--cert ec|rsa]]

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

With `--tls`, each server is then started again with a TLS listener and the hold and the
fan-out run again over TLS (wss://): nginx with `listen 127.0.0.1:8301 ssl` (TLS 1.2 and
1.3, `ssl_session_cache shared:SSL:10m`, session tickets on), pushedge with
`--set tls_cert=... --set tls_key=...`, both with the same test certificate (made with the
openssl CLI under target/bench/tls/, ECDSA P-256 unless `--cert rsa`); loadgen checks it
against the test CA. The table gains the TLS rows: bytes per idle TLS WebSocket, what TLS
adds to one, the TLS connect rate, fan-out and CPU per delivery over TLS.

Prints one side-by-side table and writes target/bench/peers.json (peers-tls.json with
--tls).
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
NCHAN_TLS_PORT = 8301

# The TLS listener of the --tls runs: nginx's defaults for the protocols, and the session
# cache and tickets a production configuration has (for resumption).
NGINX_TLS = """        listen 127.0.0.1:{tls_port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;
"""

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
{tls}
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
    def __init__(self, tls=None):
        self.prefix = os.path.join(B.OUT, "nchan")
        os.makedirs(self.prefix, exist_ok=True)
        self.conf = os.path.join(self.prefix, "nginx.conf")
        B.check_ports_free([NCHAN_PORT] + ([NCHAN_TLS_PORT] if tls else []))
        tls_conf = (NGINX_TLS.format(tls_port=NCHAN_TLS_PORT, cert=tls["cert"], key=tls["key"])
                    if tls else "")
        with open(self.conf, "w") as f:
            f.write(NGINX_CONF.format(module=NCHAN_MODULE, prefix=self.prefix, port=NCHAN_PORT,
                                      tls=tls_conf))
        logpath = os.path.join(self.prefix, "stderr.log")
        lf = open(logpath, "w")
        self.proc = B.spawn(["nginx", "-p", self.prefix + "/", "-c", self.conf,
                             "-g", "daemon off;"],
                            stdin=subprocess.DEVNULL, stdout=lf, stderr=lf)
        lf.close()
        if not wait_port(NCHAN_TLS_PORT if tls else NCHAN_PORT, self.proc):
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


def measure_tls(name, pids, idle, url, pub, fmt, cert, a):
    """The hold and the fan-out again, over TLS (a fresh server: the hold is measured
    against its idle RSS)."""
    out = {}
    tls = B.tls_args(cert)
    B.log(f"{name}: TLS hold {a.hold_conns}")
    out["hold"] = B.hold(url, a.hold_conns, pids, idle, fmt=fmt, hold_s=4, extra=tls)
    B.log(f"{name}: TLS fanout {a.subs} x {a.publishes}")
    out["fanout"] = F.fanout(url, pub, a.subs, 1, a.publishes, a.rate, pids, fmt=fmt,
                             extra=tls)
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
    if a.tls:
        spec += [
            (f"TLS: RSS per idle WSS connection at {a.hold_conns} (minus idle RSS)",
             lambda r: f"{r['tls']['hold']['server_rss_per_conn_b']:,.0f} B "
                       f"({r['tls']['hold']['server_rss_delta_per_conn_b']:,.0f} B)"),
            ("TLS: what it adds to an idle connection (RSS minus idle, TLS - plain)",
             lambda r: f"{r['tls']['hold']['server_rss_delta_per_conn_b'] - r['hold']['server_rss_delta_per_conn_b']:+,.0f} B"),
            ("TLS: kernel slab per connection, both ends",
             lambda r: f"{r['tls']['hold']['slab_per_conn_b']:,.0f} B"),
            ("TLS: connections held / failed",
             lambda r: f"{r['tls']['hold']['held']} / {r['tls']['hold']['loadgen']['connect']['failed']}"),
            ("TLS: connect rate (full handshakes + upgrade)",
             lambda r: f"{r['tls']['hold']['loadgen']['connect']['rate_per_s']:,.0f}/s"),
            (f"TLS: fan-out to {a.subs}: last arrival p50 / p99",
             lambda r: f"{B.ms(r['tls']['fanout']['last_arrival_us']['p50'])} / "
                       f"{B.ms(r['tls']['fanout']['last_arrival_us']['p99'])}"),
            ("TLS: fan-out delivered / expected (lost)",
             lambda r: f"{r['tls']['fanout']['delivered']}/{r['tls']['fanout']['expected']} "
                       f"({r['tls']['fanout']['lost']})"),
            ("TLS: server CPU s per million deliveries",
             lambda r: f"{r['tls']['fanout']['server_cpu_s_per_m_deliveries']} (x"
                       f"{r['tls']['fanout']['server_cpu_s_per_m_deliveries'] / r['fanout']['server_cpu_s_per_m_deliveries']:.2f} plain)"),
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
    ap.add_argument("--tls", action="store_true",
                    help="also the hold and the fan-out over TLS, each server fresh: nginx "
                         "with `listen ... ssl` (8301), pushedge with tls_cert/tls_key")
    ap.add_argument("--cert", choices=list(B.CERT_KINDS), default="ec",
                    help="with --tls: the test certificate's key (ECDSA P-256 or RSA 2048)")
    a = ap.parse_args()
    B.check_binaries()
    ensure_nchan()
    B.prepare_system(a.hold_conns)
    nchan_version = B.sh("dpkg-query -W -f '${Version}' libnginx-mod-nchan")
    nginx_version = B.sh("nginx -v 2>&1")
    results = []

    cert = B.make_cert(a.cert) if a.tls else None
    pub = f"http://127.0.0.1:{NCHAN_PORT}/pub?id={{c}}"
    ng = Nginx()
    try:
        url = f"ws://127.0.0.1:{NCHAN_PORT}/sub?id={{c}}"
        r = measure("nchan", ng.pids, ng.idle_rss_kb, url, pub, "raw", a)
        r["idle_rss_kb"] = ng.idle_rss_kb
        r["version"] = f"{nginx_version}, libnginx-mod-nchan {nchan_version}"
        r["error_log_tail"] = B.read(os.path.join(ng.prefix, "error.log")).splitlines()[-5:]
        results.append(r)
    finally:
        ng.stop()
    if cert:
        ng = Nginx(tls=cert)
        try:
            url = f"wss://127.0.0.1:{NCHAN_TLS_PORT}/sub?id={{c}}"
            r = results[-1]
            r["tls"] = measure_tls("nchan", ng.pids, ng.idle_rss_kb, url, pub, "raw", cert, a)
            r["tls"]["idle_rss_kb"] = ng.idle_rss_kb
            r["tls"]["error_log_tail"] = B.read(
                os.path.join(ng.prefix, "error.log")).splitlines()[-5:]
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
    if cert:
        srv = B.start_pushedge(1, backend=a.backend, sets=sets, tag="peers-tls", tls=cert)[0]
        try:
            url = "wss://127.0.0.1:8100/ws?channel={c}"
            pub = f"http://{srv.admin}/pub?channel={{c}}"
            r = results[-1]
            r["tls"] = measure_tls("pushedge", [srv.pid], [srv.idle_rss_kb], url, pub, None,
                                   cert, a)
            r["tls"]["idle_rss_kb"] = [srv.idle_rss_kb]
            r["tls"]["server_log_warnings"] = B.server_errors([srv])
        finally:
            B.stop(srv.proc, grace=15)

    B.write_json("peers-tls.json" if a.tls else "peers.json",
                 {"machine": B.machine(), "args": vars(a), "results": results})
    print(B.table("bench-peers: same loadgen, same box (2 cores), loopback",
                  ["", "nchan (" + nginx_version.split("/")[-1] + ", 1 worker)",
                   f"pushedge ({a.backend}, 1 process)"],
                  rows(results, a)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
