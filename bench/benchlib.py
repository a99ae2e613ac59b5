"""Shared helpers of the side-by-side benchmark scripts (bench/*.py).

Everything here is measurement plumbing: system limits, starting and stopping servers,
running loadgen with `--json` and reacting to its phase lines, reading RSS / CPU / slab
figures from /proc, printing tables and writing JSON under target/bench/.

Every process a script starts is registered here and killed at exit, on SIGINT/SIGTERM,
and when a run passes its deadline (each started in its own session, so the whole group
goes: loadgen's child processes, nginx's worker).
"""

import atexit
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
OUT = os.path.join(TARGET, "bench")
RUN = os.path.join(OUT, "run")
PUSHEDGE = os.environ.get("PUSHEDGE_BIN", os.path.join(TARGET, "release", "pushedge"))
LOADGEN = os.environ.get("LOADGEN_BIN", os.path.join(TARGET, "release", "loadgen"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# Stop a run (and report it as aborted) when MemAvailable falls below this.
MEM_FLOOR_KB = int(os.environ.get("BENCH_MEM_FLOOR_MB", "1536")) * 1024

_procs = []  # Popen objects to kill at exit
_lock = threading.Lock()


# ---------------------------------------------------------------- processes and cleanup

def _kill(p, grace=3.0):
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def cleanup():
    with _lock:
        procs = list(_procs)
        _procs.clear()
    for p in reversed(procs):
        _kill(p)


def _on_signal(signum, _frame):
    cleanup()
    sys.stderr.write(f"bench: stopped by signal {signum}\n")
    os._exit(128 + signum)


atexit.register(cleanup)
signal.signal(signal.SIGINT, _on_signal)
signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGHUP, _on_signal)


def spawn(args, **kw):
    """Starts a process in its own session (so its whole group can be killed) and
    registers it for cleanup."""
    p = subprocess.Popen(args, start_new_session=True, **kw)
    with _lock:
        _procs.append(p)
    return p


def stop(p, grace=3.0):
    _kill(p, grace)
    with _lock:
        if p in _procs:
            _procs.remove(p)


def log(msg):
    sys.stderr.write(f"bench: {msg}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------- system

def sh(cmd):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()


def read(path, default=""):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def sysctl_set(key, value):
    path = "/proc/sys/" + key.replace(".", "/")
    try:
        with open(path, "w") as f:
            f.write(value)
        return True
    except OSError as e:
        log(f"cannot set {key}={value}: {e}")
        return False


def _port_ranges(spec):
    out = []
    for item in filter(None, (x.strip() for x in spec.split(","))):
        lo, _, hi = item.partition("-")
        out.append((int(lo), int(hi or lo)))
    return out


def ports_reserved(reserved, wanted):
    """Every port of the list `wanted` lies in the list `reserved` (both as the kernel's
    ip_local_reserved_ports: "8100-8101,18000-18499")."""
    have = _port_ranges(reserved)
    return all(any(a <= p <= b for a, b in have)
               for lo, hi in _port_ranges(wanted) for p in range(lo, hi + 1))


def prepare_system(conns):
    """Widens the ephemeral port range and raises nf_conntrack_max when needed."""
    lo, hi = map(int, read("/proc/sys/net/ipv4/ip_local_port_range", "32768 60999").split())
    if lo > 1024 or hi < 65000:
        if sysctl_set("net.ipv4.ip_local_port_range", "1024 65000"):
            log("net.ipv4.ip_local_port_range = 1024 65000")
    # The servers' fixed ports lie inside the widened ephemeral range: reserve them, or a
    # client socket that happened to get one as its source port would keep a server from
    # binding it.
    reserved = read("/proc/sys/net/ipv4/ip_local_reserved_ports").strip()
    want = ",".join(x for x in [reserved, RESERVED_PORTS] if x)
    if not ports_reserved(reserved, RESERVED_PORTS):
        if sysctl_set("net.ipv4.ip_local_reserved_ports", want):
            log(f"net.ipv4.ip_local_reserved_ports = {want}")
    ct = "/proc/sys/net/netfilter/nf_conntrack_max"
    if os.path.exists(ct):
        cur = int(read(ct, "0") or 0)
        # Two tracked flows per loopback connection at most, plus room.
        want = 2 * conns + 65536
        if cur < want:
            if sysctl_set("net.netfilter.nf_conntrack_max", str(want)):
                log(f"net.netfilter.nf_conntrack_max = {want}")


# Subscriber ports (8100 pushedge, 8300 nchan) and admin ports (18000 + process index).
# 8101 / 8301: their TLS listeners in the side-by-side runs.
RESERVED_PORTS = "8100,8101,8300,8301,18000-18499"


def sources_for(conns, per_source=28000):
    """Source addresses for `conns` connections to one server address: at most
    `per_source` each (below half the ephemeral range, where connect() gets slow)."""
    n = max(1, math.ceil(conns / per_source))
    if n > 250:
        raise SystemExit("too many connections for 127.0.0.2-127.0.0.251")
    return f"127.0.0.2-127.0.0.{1 + n}", n


def meminfo():
    out = {}
    for line in read("/proc/meminfo").splitlines():
        k, v = line.split(":", 1)
        out[k] = int(v.split()[0])
    return out


def slab_kb():
    return meminfo()["Slab"]


def slabinfo():
    """{cache: (active objects, object size)} from /proc/slabinfo (root only; {}
    otherwise). SLUB's active counts are approximate (per-cpu partial slabs)."""
    out = {}
    for line in read("/proc/slabinfo").splitlines()[2:]:
        f = line.split()
        if len(f) > 5:
            out[f[0]] = (int(f[1]), int(f[3]))
    return out


# A process monitor on this sandbox walks /proc/<pid>/fd of every process every few
# seconds; each descriptor it sees leaves a proc inode (~700 B) and a dentry (192 B) in
# the (reclaimable) slab. That is not the cost of a connection, and it lands at random
# relative to a sample, so it is measured and taken out separately.
def proc_fd_artifact_bytes(before, after):
    objs = after.get("proc_inode_cache", (0, 0))[0] - before.get("proc_inode_cache", (0, 0))[0]
    size = after.get("proc_inode_cache", (0, 696))[1]
    dentry = after.get("dentry", (0, 192))[1]
    return max(objs, 0) * (size + dentry)


def slab_delta(before, after, n, top=8):
    """The caches that grew most, in bytes per connection."""
    def b(m, k):
        o, sz = m.get(k, (0, 0))
        return o * sz
    d = {k: b(after, k) - b(before, k) for k in set(before) | set(after)}
    rows = sorted(d.items(), key=lambda kv: -kv[1])[:top]
    return {k: round(v / n, 1) for k, v in rows if v > 0}


def tcp_mem_pages():
    m = re.search(r"TCP:.* mem (\d+)", read("/proc/net/sockstat"))
    return int(m.group(1)) if m else 0


def rss_kb(pid):
    m = re.search(r"VmRSS:\s+(\d+)", read(f"/proc/{pid}/status"))
    return int(m.group(1)) if m else 0


def cpu_s(pid):
    """utime + stime of a process (all its threads), seconds."""
    s = read(f"/proc/{pid}/stat")
    if not s:
        return 0.0
    f = s[s.rindex(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / CLK_TCK


def tree_cpu_s(pid):
    return cpu_s(pid) + sum(tree_cpu_s(c) for c in children_of(pid))


def stat_cpu():
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    f = [int(x) for x in read("/proc/stat").splitlines()[0].split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return sum(f) - idle, sum(f)


def stat_fields():
    return [int(x) for x in read("/proc/stat").splitlines()[0].split()[1:]]


def stat_share(before, after):
    """Shares of the machine's CPU time between two stat_fields(): busy (not idle or
    iowait) and steal (taken by the hypervisor for other guests: a noisy neighbour)."""
    d = [b - a for a, b in zip(before, after)]
    tot = sum(d) or 1
    return {"busy": round((tot - d[3] - d[4]) / tot, 3), "steal": round(d[7] / tot, 3)}


def children_of(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            s = read(f"/proc/{d}/stat")
            if s:
                f = s[s.rindex(")") + 2:].split()
                if int(f[1]) == pid:
                    out.append(int(d))
    return out


def tree_rss_kb(pid):
    return rss_kb(pid) + sum(tree_rss_kb(c) for c in children_of(pid))


def nofile():
    import resource
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_g():
    return sh("free -g | sed -n 2p")


# ---------------------------------------------------------------- HTTP

def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def info(admin):
    return json.loads(http_get(f"http://{admin}/info"))


# ---------------------------------------------------------------- pushedge

class Server:
    def __init__(self, proc, admin, control, logpath):
        self.proc = proc
        self.pid = proc.pid
        self.admin = admin
        self.control = control
        self.log = logpath
        self.idle_rss_kb = 0


def listening(port, host="127.0.0.1"):
    """Something accepts connections on host:port already."""
    try:
        socket.create_connection((host, port), timeout=0.3).close()
        return True
    except OSError:
        return False


def check_ports_free(ports):
    """Stops the run when another process listens on one of `ports`: pushedge binds its
    subscriber port with SO_REUSEPORT, so a stray server there would silently take a
    share of the connections."""
    busy = [p for p in ports if listening(p)]
    if busy:
        raise SystemExit(f"port(s) {', '.join(map(str, busy))} already in use on 127.0.0.1 "
                         "(another server?): stop it first")


def listeners_toml(listeners):
    """A pushedge config file's `[[listener]]` entries: `listeners` is a list of
    (port, cert or None), cert as make_cert() returns it."""
    out = []
    for port, cert in listeners:
        out.append(f'[[listener]]\naddr = "127.0.0.1:{port}"\n')
        if cert:
            out.append(f'tls = {{ cert = "{cert["cert"]}", key = "{cert["key"]}" }}\n')
    return "".join(out)


def start_pushedge(n, port=8100, admin_base=18000, backend="epoll", workers=None,
                   sets=(), tag="pe", ready_timeout=20, node_sets=None, tls=None,
                   listeners=None):
    """Starts `n` pushedge processes on one subscriber port (SO_REUSEPORT), each with its
    own admin port and control socket; waits for every ready line; returns the servers
    with their idle RSS (measured right after startup). `node_sets(i)`, when given, adds
    process i's own `--set` values (after `sets`: they win). `tls` (a make_cert() dict)
    makes the subscriber listener TLS; `listeners`, a list of (port, cert or None),
    replaces the one listener on `port` with these (a config file of `[[listener]]`
    entries, e.g. a plain one and a TLS one side by side)."""
    os.makedirs(RUN, exist_ok=True)
    check_ports_free([p for p, _ in listeners] if listeners else [port])
    sets = list(sets) + (tls_sets(tls) if tls else [])
    servers = []
    for i in range(n):
        admin = f"127.0.0.1:{admin_base + i}"
        control = os.path.join(RUN, f"{tag}-{i}.sock")
        logpath = os.path.join(RUN, f"{tag}-{i}.log")
        args = [PUSHEDGE, "serve"]
        if listeners:
            conf = os.path.join(RUN, f"{tag}-{i}.toml")
            with open(conf, "w") as f:
                f.write(listeners_toml(listeners))
            args += ["--config", conf]
        else:
            args += ["--listen", f"127.0.0.1:{port}"]
        args += ["--admin", admin, "--control", control, "--backend", backend]
        if n > 1:  # several processes on one port: meant (pushedge refuses it otherwise)
            args += ["--set", "reuse_port=true"]
        if workers:
            args += ["--workers", str(workers)]
        for s in list(sets) + (list(node_sets(i)) if node_sets else []):
            args += ["--set", s]
        lf = open(logpath, "w")
        p = spawn(args, stdin=subprocess.DEVNULL, stdout=lf, stderr=lf)
        lf.close()
        servers.append(Server(p, admin, control, logpath))
    deadline = time.time() + ready_timeout
    for s in servers:
        while "ready: pushedge" not in read(s.log):
            if s.proc.poll() is not None:
                raise SystemExit(f"pushedge exited at startup:\n{read(s.log)}")
            if time.time() > deadline:
                raise SystemExit(f"pushedge printed no ready line:\n{read(s.log)}")
            time.sleep(0.02)
    time.sleep(0.3)
    for s in servers:
        s.idle_rss_kb = rss_kb(s.pid)
    return servers


def server_conns(servers):
    out = []
    for s in servers:
        try:
            out.append(info(s.admin)["connections"])
        except Exception:  # noqa: BLE001 - a server that does not answer counts as 0
            out.append(0)
    return out


def server_metrics(servers, names=("pushedge_connections_accepted_total",
                                   "pushedge_connections_rejected_total",
                                   "pushedge_heartbeat_timeouts_total",
                                   "pushedge_handshake_timeouts_total",
                                   "pushedge_slow_consumer_closes_total",
                                   "pushedge_messages_delivered_total")):
    """Counters of /metrics summed over the servers (labels kept in the key)."""
    out = {}
    for s in servers:
        try:
            text = http_get(f"http://{s.admin}/metrics")
        except Exception:  # noqa: BLE001 - a server that does not answer adds nothing
            continue
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            key, _, val = line.rpartition(" ")
            if key.split("{")[0] in names:
                out[key] = out.get(key, 0) + int(float(val))
    return out


def server_errors(servers):
    """Lines at warn/error level in the servers' logs (the first few)."""
    out = []
    for s in servers:
        for line in read(s.log).splitlines():
            if " warn " in line or " error " in line:
                out.append(line)
    return out[:10]


# ---------------------------------------------------------------- TLS

CERT_DIR = os.path.join(OUT, "tls")
# Certificate kinds make_cert() knows: the openssl -newkey argument and -pkeyopt values.
CERT_KINDS = {
    "ec": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
    "rsa": ["-newkey", "rsa:2048"],
}


def make_cert(kind="ec"):
    """A test CA and a server certificate it signed, made with the openssl CLI under
    target/bench/tls/<kind>/ (once; kept for later runs while valid for a day more):
    `ca.pem`, `server.pem` (the server certificate then the CA: the chain) and
    `server.key` (PKCS#8). The server certificate is for DNS:localhost and
    IP:127.0.0.1, valid 30 days; `ec` is ECDSA P-256 (the default of current CAs),
    `rsa` RSA 2048. Returns {"ca", "cert", "key", "kind"}."""
    if kind not in CERT_KINDS:
        raise SystemExit(f"unknown certificate kind {kind!r} ({', '.join(CERT_KINDS)})")
    d = os.path.join(CERT_DIR, kind)
    out = {"ca": os.path.join(d, "ca.pem"), "cert": os.path.join(d, "server.pem"),
           "key": os.path.join(d, "server.key"), "kind": kind}
    if all(os.path.exists(p) for p in out.values() if p != kind):
        ok = subprocess.run(["openssl", "x509", "-checkend", "86400", "-noout", "-in",
                             out["cert"]], capture_output=True).returncode == 0
        if ok:
            return out
    os.makedirs(d, exist_ok=True)
    new = CERT_KINDS[kind]

    def run(args):
        r = subprocess.run(["openssl"] + args, cwd=d, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"openssl {' '.join(args)} failed:\n{r.stderr}")

    run(["req", "-x509", *new, "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
         "-days", "30", "-subj", "/CN=pushedge bench CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    run(["req", *new, "-nodes", "-keyout", "server.key", "-out", "server.csr",
         "-subj", "/CN=localhost"])
    with open(os.path.join(d, "server.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                "basicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n")
    run(["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "server.crt", "-days", "30", "-extfile", "server.ext"])
    with open(out["cert"], "w") as f:
        f.write(read(os.path.join(d, "server.crt")) + read(out["ca"]))
    log(f"made a test CA and server certificate ({kind}) in {os.path.relpath(d, ROOT)}")
    return out


def tls_sets(cert):
    """pushedge `--set` values that make its subscriber listener TLS."""
    return [f"tls_cert={cert['cert']}", f"tls_key={cert['key']}"]


def tls_args(cert=None, insecure=False, resume=True):
    """loadgen's TLS options: trust the test CA (`--cacert`, names checked), or
    `--insecure` (no chain check; the handshake signature is still verified)."""
    args = ["--insecure"] if insecure or cert is None else ["--cacert", cert["ca"]]
    return args + ([] if resume else ["--no-resume"])


# ---------------------------------------------------------------- transports

# Subscriber transports of pushedge as loadgen speaks them; "wss" is WebSocket over TLS,
# and any of them over TLS is "<name>+tls" ("ws+tls" is "wss").
TRANSPORTS = ("ws", "sse", "stream", "poll", "socketio")
TLS_TRANSPORTS = ("wss",) + tuple(t + "+tls" for t in TRANSPORTS if t != "ws")


def split_tls(transport):
    """("ws", True) for "wss" and "ws+tls"; (name, False) for a plain one."""
    if transport == "wss":
        return "ws", True
    if transport.endswith("+tls"):
        return transport[:-4], True
    return transport, False


def sub_url(transport, port, channel="{c}"):
    """The loadgen `--url` of pushedge's subscriber port for `transport` (a TLS one,
    `wss` or `<name>+tls`, gives a wss:// or https:// URL). Socket.IO (Engine.IO v4 over
    WebSocket) names no channel in the URL: loadgen connects the main namespace and puts
    the channel, as a room, in the CONNECT auth (`40{"channels":["ch0"]}`; main prefix
    "": room `ch0` = channel `ch0`)."""
    base, tls = split_tls(transport)
    ws, http = ("wss", "https") if tls else ("ws", "http")
    if base == "ws":
        return f"{ws}://127.0.0.1:{port}/ws?channel={channel}"
    if base == "socketio":
        return f"{ws}://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
    return f"{http}://127.0.0.1:{port}/{base}?channel={channel}"


def transport_sets(transports, sets=(), quiet=False):
    """`--set` values a pushedge run needs for `transports`, before the user's `sets` (so
    that theirs win): Socket.IO is switched on, and with `quiet` its Engine.IO pings are
    pushed out of the run (`socketio_ping_interval_secs=600`, like `heartbeat_secs=600`
    for the other transports) so that none is counted in a measured window."""
    given = {s.split("=", 1)[0].strip() for s in sets}
    out = []
    if "socketio" in [split_tls(t)[0] for t in transports]:
        if "socketio" not in given:
            out.append("socketio=true")
        if quiet and "socketio_ping_interval_secs" not in given:
            out.append("socketio_ping_interval_secs=600")
    return out + list(sets)


# ---------------------------------------------------------------- loadgen

class LoadgenRun:
    """Runs loadgen with --json; `on_phase(name, fields)` is called (on a reader thread)
    at each phase line. Bounded by `timeout` seconds; aborted when memory runs low."""

    def __init__(self, args, timeout, on_phase=None, mem_guard=True):
        self.args = [LOADGEN] + args + ["--json"]
        self.timeout = timeout
        self.on_phase = on_phase
        self.mem_guard = mem_guard
        self.phases = []
        self.stderr = []
        self.aborted = None
        self.min_avail_kb = None

    def run(self):
        log(" ".join(self.args[1:]))
        stat0 = stat_fields()
        p = spawn(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE, text=True)
        self.proc = p
        out = []
        t_out = threading.Thread(target=lambda: out.append(p.stdout.read()), daemon=True)
        t_err = threading.Thread(target=self._read_err, args=(p,), daemon=True)
        t_out.start()
        t_err.start()
        deadline = time.time() + self.timeout
        while p.poll() is None:
            if time.time() > deadline:
                self.aborted = f"timeout after {self.timeout:.0f} s"
                log(f"loadgen: {self.aborted}; stopping it")
                os.killpg(p.pid, signal.SIGINT)  # partial report
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    stop(p)
                break
            if self.mem_guard:
                avail = meminfo()["MemAvailable"]
                self.min_avail_kb = avail if self.min_avail_kb is None else min(avail, self.min_avail_kb)
                if avail < MEM_FLOOR_KB:
                    self.aborted = f"MemAvailable fell to {avail // 1024} MiB"
                    log(f"loadgen: {self.aborted}; stopping it")
                    stop(p, grace=0.5)
                    break
            time.sleep(0.1)
        t_out.join(timeout=30)
        t_err.join(timeout=5)
        stop(p)
        self.cpu_share = stat_share(stat0, stat_fields())
        text = (out[0] if out else "").strip()
        try:
            self.report = json.loads(text) if text else None
        except json.JSONDecodeError:
            self.report = None
        if self.report is None and not self.aborted:
            self.aborted = "loadgen gave no report: " + " | ".join(self.stderr[-5:])
        return self.report

    def _read_err(self, p):
        for line in p.stderr:
            line = line.rstrip("\n")
            m = re.match(r"loadgen: phase (\w+) (.*)", line)
            if m:
                fields = dict(kv.split("=", 1) for kv in m.group(2).split())
                self.phases.append((m.group(1), fields, time.time()))
                if self.on_phase:
                    try:
                        self.on_phase(m.group(1), fields)
                    except Exception as e:  # noqa: BLE001 - report, keep reading
                        log(f"phase hook failed: {e!r}")
            else:
                self.stderr.append(line)
                if "warning" in line or "failed" in line or "error" in line:
                    log(line)


def fanout_figures(rep):
    """The figures every fan-out script keeps from a `loadgen fanout --json` report."""
    c, d, f = rep["connect"], rep["drops"], rep["fanout"]
    return {
        "connected": c["established"],
        "connect_failed": c["failed"],
        "connect_failed_by_reason": c["failed_by_reason"],
        "connect_rate_per_s": c["rate_per_s"],
        "connect_phase_s": c["phase_s"],
        "dropped": d["dropped"],
        "dropped_by_reason": d["by_reason"],
        **{k: f[k] for k in ("published", "publish_failed", "expected", "delivered", "lost",
                             "duplicated", "out_of_order", "latency_us", "first_arrival_us",
                             "last_arrival_us", "publish_reply_us", "deliveries_per_s")},
        **{k: f.get(k) for k in ("unexpected", "seq_errors", "gaps", "lost_on_dropped",
                                 "incomplete_subscribers")},
    }


# ---------------------------------------------------------------- hold

def hold(url, conns, pids, idle_rss_kb, conns_fn=None, transport=None, fmt=None,
         hold_s=4.0, settle_s=1.5, timeout=None, procs=None, extra=()):
    """Opens `conns` connections with `loadgen hold` and, once all are tried, measures:
    the RSS of `pids` (the server's processes) against `idle_rss_kb` (their RSS right
    after startup), /proc/meminfo Slab and /proc/slabinfo against their values before the
    run, TCP buffer pages, loadgen's own RSS, and `conns_fn()` (connections per server
    process). Returns a dict (the loadgen report under "loadgen")."""
    srcs, nsrc = sources_for(conns)
    args = ["hold", "--url", url, "--conns", str(conns), "--sources", srcs,
            "--duration", str(max(hold_s, settle_s + 2.5))]
    if transport:
        args += ["--transport", transport]
    if fmt:
        args += ["--format", fmt]
    if procs:
        args += ["--procs", str(procs)]
    args += list(extra)
    slab0 = slab_kb()
    slabs0 = slabinfo()
    tcp0 = tcp_mem_pages()
    avail0 = meminfo()["MemAvailable"]
    sample = {}

    def on_phase(name, fields):
        if name == "stopping" and sample and "cpu_end" not in sample:
            sample["cpu_end"] = (time.time(), sum(cpu_s(p) for p in pids),
                                 tree_cpu_s(run.proc.pid), stat_cpu())
            return
        if name != "holding" or sample:
            return
        time.sleep(settle_s)
        sample["t"] = time.time()
        sample["rss_kb"] = [rss_kb(p) for p in pids]
        sample["slab_kb"] = slab_kb()
        sample["slabinfo"] = slabinfo()
        sample["tcp_mem_pages"] = tcp_mem_pages()
        sample["mem_available_kb"] = meminfo()["MemAvailable"]
        sample["loadgen_rss_kb"] = tree_rss_kb(run.proc.pid)
        sample["server_conns"] = conns_fn() if conns_fn else None
        sample["open"] = int(fields.get("open", 0))
        sample["cpu_start"] = (time.time(), sum(cpu_s(p) for p in pids),
                               tree_cpu_s(run.proc.pid), stat_cpu())
        log(f"holding {sample['open']} open; free -g: {free_g()}")

    if timeout is None:
        timeout = 120 + conns / 2000
    run = LoadgenRun(args, timeout=timeout, on_phase=on_phase)
    rep = run.run()
    res = {"conns": conns, "sources": nsrc, "aborted": run.aborted,
           "machine_cpu": getattr(run, "cpu_share", None),
           "min_mem_available_kb": run.min_avail_kb, "loadgen": rep,
           "loadgen_stderr": run.stderr[-20:]}
    if not sample:
        res["measured"] = False
        return res
    held = sample["open"]
    n = max(held, 1)
    rss = sum(sample["rss_kb"])
    idle = sum(idle_rss_kb)
    res.update({
        "measured": True,
        "held": held,
        "server_rss_kb": rss,
        "server_idle_rss_kb": idle,
        "server_rss_per_conn_b": round(rss * 1024 / n, 1),
        "server_rss_delta_per_conn_b": round((rss - idle) * 1024 / n, 1),
        "slab_before_kb": slab0,
        "slab_after_kb": sample["slab_kb"],
        "slab_per_conn_b": round((sample["slab_kb"] - slab0) * 1024 / n, 1),
        "slab_proc_fd_artifact_per_conn_b": round(
            proc_fd_artifact_bytes(slabs0, sample["slabinfo"]) / n, 1),
        "slab_net_per_conn_b": round(
            ((sample["slab_kb"] - slab0) * 1024
             - proc_fd_artifact_bytes(slabs0, sample["slabinfo"])) / n, 1),
        "slab_top_per_conn_b": slab_delta(slabs0, sample["slabinfo"], n),
        "tcp_mem_pages_delta": sample["tcp_mem_pages"] - tcp0,
        "mem_available_drop_per_conn_b": round((avail0 - sample["mem_available_kb"]) * 1024 / n, 1),
        "loadgen_rss_kb": sample["loadgen_rss_kb"],
        "loadgen_rss_per_conn_b": round(sample["loadgen_rss_kb"] * 1024 / n, 1),
        "server_conns": sample["server_conns"],
    })
    if "cpu_end" in sample:
        t0, s0, l0, (b0, a0) = sample["cpu_start"]
        t1, s1, l1, (b1, a1) = sample["cpu_end"]
        if t1 > t0 and a1 > a0:
            res["hold_cpu"] = {
                "seconds": round(t1 - t0, 2),
                "server_cores": round((s1 - s0) / (t1 - t0), 3),
                "loadgen_cores": round((l1 - l0) / (t1 - t0), 3),
                "machine_busy": round((b1 - b0) / (a1 - a0), 3),
            }
    return res


# ---------------------------------------------------------------- output

def ms(us):
    return "-" if us is None else f"{us / 1000:.1f} ms"


def table(title, header, rows, left=1):
    """A plain-text table; the first `left` columns are left-aligned, the rest right."""
    cols = [header] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cols) for i in range(len(header))]
    lines = [title, "-" * len(title)] if title else []

    def fmt(r):
        return "  ".join(c.ljust(w[i]) if i < left else c.rjust(w[i])
                         for i, c in enumerate(r)).rstrip()
    lines.append(fmt(header))
    for r in cols[1:]:
        lines.append(fmt(r))
    return "\n".join(lines)


def write_json(name, obj):
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    log(f"wrote {os.path.relpath(path, ROOT)}")
    return path


def machine():
    return {
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
        "mem_total_kb": meminfo()["MemTotal"],
        "nofile": nofile(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "pushedge": sh(f"{PUSHEDGE} --version"),
        "pushedge_bin": PUSHEDGE,
        "pushedge_bin_mtime": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                            time.gmtime(os.path.getmtime(PUSHEDGE))),
        "git_head": sh(f"git -C {ROOT} rev-parse --short HEAD"),
        # When PUSHEDGE_BIN is a build of another tree, say which commit it was built from.
        "pushedge_commit": os.environ.get("PUSHEDGE_COMMIT")
        or sh(f"git -C {ROOT} rev-parse --short HEAD"),
    }


def check_binaries():
    for b in (PUSHEDGE, LOADGEN):
        if not os.access(b, os.X_OK):
            raise SystemExit(f"{b} is missing: cargo build --release -p pushedge -p loadgen")
