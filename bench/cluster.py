#!/usr/bin/env python3
"""bench-cluster: fan-out through Redis to N subscribers spread over K pushedge nodes.

    python3 bench/cluster.py --conns N [--nodes K] [--backend epoll|uring] [--set KEY=VALUE ...]
                             [--workers W] [--channels C] [--publishes M] [--rate R]
                             [--publish-node I] [--connect-rate R] [--deadline S]

1. Starts its own redis-server (127.0.0.1:18400, directory target/bench/cluster-redis/,
   emptied first; `appendonly yes`, `appendfsync everysec`, no RDB snapshots) and K
   pushedge nodes on ONE subscriber port (127.0.0.1:8100, SO_REUSEPORT), node i with admin
   port 18000+i, control socket target/bench/run/cluster-i.sock, and
   `--set cluster.redis_url=redis://127.0.0.1:18400 --set cluster.node_id=node-i`. The
   nodes run with `heartbeat_secs=600` (as bench-fanout: no pings in the measured window;
   `--set heartbeat_secs=60` puts them back).
2. Sizes the nodes so that no process passes the 20,000 open files it may have: epoll (or
   uring with `uring_direct=false`) holds one descriptor per connection, so K >=
   ceil(N / 15,000); uring with direct descriptors holds them in each worker ring's table
   (capped at 20,000 per ring), so W >= ceil(N / (K x 15,000)) workers per node. Without
   --nodes: K = max(2, what the limit needs), W = cores (uring direct: 8 once N needs more
   than 2 rings per node, as bench-scale).
3. Waits until every node's `/info` says `"redis":"up"`.
4. Runs `loadgen fanout` with N WebSocket subscribers on C channels (default 1; the kernel
   spreads them over the nodes' listeners) and M publishes paced at R/s, every publish
   sent through ONE node's admin port (node 0 unless --publish-node; loadgen takes one
   publish address), so every delivery crosses Redis: admin -> Lua script (INCR, RPUSH,
   LTRIM, PUBLISH) -> the feed of every node -> its workers -> its subscribers.
5. Prints: per node its connections, the subscribers of the first channel local to it
   and cluster-wide (`/info?channel=ch0`, taken 1.5 s after all connected: the nodes
   write their counts to Redis every second), messages it read from the feed, deliveries,
   RSS, and the CPU seconds of every process (nodes, redis-server, loadgen) from "all
   connected" to "all delivered"; then latency percentiles over every delivery, the last
   (and first) arrival per publish p50/p99/max, deliveries per second, lost / duplicated
   / out of order, publish reply latency, the nodes' CPU per million deliveries.

Writes target/bench/cluster-<backend>-<N>x<K>[-<sets>].json. Every process it starts
(redis-server included) is stopped at the end, on Ctrl-C / SIGTERM / SIGHUP, and when the
whole run passes --deadline (default: generous for N and the pacing).
"""

import argparse
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import benchlib as B  # noqa: E402

REDIS_PORT = 18400  # inside the reserved 18000-18499 (no client socket takes it)
PER_PROC = 15000


# ---------------------------------------------------------------- redis

def resp(port, *args, timeout=5):
    """One Redis command over RESP; returns the reply (str, int, list or None)."""
    req = f"*{len(args)}\r\n" + "".join(f"${len(str(a).encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(req.encode())
        f = s.makefile("rb")
        return _resp_read(f)


def _resp_read(f):
    line = f.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data.decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise RuntimeError(f"bad RESP line {line!r}")


def redis_info(port):
    out = {}
    try:
        text = resp(port, "INFO")
    except Exception:  # noqa: BLE001 - a Redis that does not answer gives nothing
        return out
    for line in (text or "").splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            out[k] = v
    return out


class Redis:
    def __init__(self, port):
        exe = shutil.which("redis-server")
        if not exe:
            raise SystemExit("redis-server is missing: make deps-redis")
        self.port = port
        self.dir = os.path.join(B.OUT, "cluster-redis")
        shutil.rmtree(self.dir, ignore_errors=True)  # a fresh, empty Redis every run
        os.makedirs(self.dir)
        self.log = os.path.join(self.dir, "redis.log")
        lf = open(self.log, "w")
        self.proc = B.spawn([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", self.dir,
                             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                             "--daemonize", "no", "--maxclients", "10000"],
                            stdin=subprocess.DEVNULL, stdout=lf, stderr=lf)
        lf.close()
        self.pid = self.proc.pid
        deadline = time.time() + 10
        while True:
            if self.proc.poll() is not None:
                raise SystemExit("redis-server exited at startup:\n" + B.read(self.log))
            try:
                if resp(port, "PING", timeout=0.5) == "PONG":
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise SystemExit("redis-server did not answer PING:\n" + B.read(self.log))
            time.sleep(0.05)
        self.version = redis_info(port).get("redis_version", "?")

    def stop(self):
        B.stop(self.proc, grace=10)


# ---------------------------------------------------------------- sizing

def plan_nodes(conns, backend, direct, nodes, workers, per_proc):
    """(nodes, workers per node) so that no process passes the open-file limit."""
    cores = os.cpu_count() or 2
    if backend == "uring" and direct:
        if not nodes:
            # As bench-scale: 8 rings per process once 2 processes x cores rings are not enough.
            w = workers or (cores if conns <= 2 * cores * per_proc else 8)
            nodes = max(2, math.ceil(conns / (w * per_proc)))
        w = workers or max(cores, math.ceil(conns / (nodes * per_proc)))
        if conns / (nodes * w) > per_proc:
            raise SystemExit(f"{conns} connections over {nodes} node(s) x {w} ring(s) is more than "
                             f"{per_proc} per ring: raise --workers or --nodes")
        return nodes, w
    need = math.ceil(conns / per_proc)
    if nodes and nodes < need:
        raise SystemExit(f"{conns} connections need at least {need} nodes with one descriptor per "
                         f"connection ({per_proc} per process under the 20,000-file limit): "
                         f"NODES={need} or BACKEND=uring")
    return nodes or max(2, need), workers or cores


def default_pacing(conns):
    """(publishes, rate/s, drain s): each publish reaches all N before the next is sent."""
    if conns <= 20000:
        return 100, 4.0, 10.0
    if conns <= 200000:
        return 30, 0.5, 20.0
    return 5, 0.05, 60.0


# ---------------------------------------------------------------- per-node figures

def node_channel_info(srv, channel):
    try:
        return json.loads(B.http_get(f"http://{srv.admin}/info?channel={channel}", timeout=10))
    except Exception as e:  # noqa: BLE001 - reported as is
        return {"error": repr(e)}


def node_info(srv):
    try:
        return B.info(srv.admin)
    except Exception as e:  # noqa: BLE001 - reported as is
        return {"error": repr(e)}


def wait_redis_up(servers, timeout=30):
    deadline = time.time() + timeout
    while True:
        states = []
        for s in servers:
            i = node_info(s)
            states.append(((i.get("cluster") or {}).get("redis")) if "error" not in i else None)
        if all(st == "up" for st in states):
            return
        for s in servers:
            if s.proc.poll() is not None:
                raise SystemExit(f"a node exited:\n{B.read(s.log)[-2000:]}")
        if time.time() > deadline:
            raise SystemExit(f"nodes not connected to redis after {timeout} s: {states}")
        time.sleep(0.1)


def cpu_snapshot(servers, redis, loadgen_pid):
    return {
        "t": time.time(),
        "nodes": [B.cpu_s(s.pid) for s in servers],
        "redis": B.cpu_s(redis.pid),
        "loadgen": B.tree_cpu_s(loadgen_pid) if loadgen_pid else 0.0,
        "stat": B.stat_fields(),
    }


# ---------------------------------------------------------------- the run

def run_cluster(a):
    sets = ["heartbeat_secs=600"] + list(a.set)
    direct = a.backend == "uring" and "uring_direct=false" not in [s.replace(" ", "") for s in sets]
    nodes, workers = plan_nodes(a.conns, a.backend, direct, a.nodes, a.workers, a.per_proc)
    pubs, rate, drain = default_pacing(a.conns)
    pubs = a.publishes or pubs
    rate = a.rate if a.rate is not None else rate
    drain = a.drain or drain
    if not 0 <= a.publish_node < nodes:
        raise SystemExit(f"--publish-node must be 0..{nodes - 1}")
    B.prepare_system(a.conns)
    B.log(f"{a.conns} subscribers on {a.channels} channel(s): {nodes} node(s) x {workers} workers, "
          f"backend {a.backend}{' (direct descriptors)' if direct else ''} {' '.join(sets)}; "
          f"{pubs} publishes per channel at {rate:g}/s through node-{a.publish_node}")
    out = {"conns": a.conns, "nodes": nodes, "workers_per_node": workers, "backend": a.backend,
           "direct": direct, "sets": sets, "user_sets": list(a.set), "channels": a.channels,
           "publishes": pubs, "rate": rate, "drain_s": drain, "publish_node": a.publish_node,
           "publish_via": f"node-{a.publish_node} only (loadgen takes one publish address)"}
    redis = Redis(a.redis_port)
    out["redis_version"] = redis.version
    servers = []
    try:
        url = f"redis://127.0.0.1:{a.redis_port}"
        servers = B.start_pushedge(
            nodes, port=a.port, admin_base=a.admin, backend=a.backend, workers=workers,
            sets=sets, tag="cluster", ready_timeout=30,
            node_sets=lambda i: [f"cluster.redis_url={url}", f"cluster.node_id=node-{i}"])
        wait_redis_up(servers)
        B.log(f"redis-server {redis.version} on :{a.redis_port} and {nodes} node(s) up")
        out["idle_rss_kb"] = {"nodes": [s.idle_rss_kb for s in servers],
                              "redis": B.rss_kb(redis.pid)}
        out["fanout"] = fanout(a, servers, redis, pubs, rate, drain)
        out["node_info_end"] = [node_info(s) for s in servers]
        out["server_metrics"] = [B.server_metrics([s]) for s in servers]
        out["server_log_warnings"] = B.server_errors(servers)
        out["nodes_alive_at_end"] = [s.proc.poll() is None for s in servers]
        ri = redis_info(a.redis_port)
        out["redis_info_end"] = {k: ri.get(k) for k in (
            "used_memory_human", "total_commands_processed", "total_connections_received",
            "connected_clients", "aof_enabled", "aof_last_write_status", "pubsub_channels",
            "instantaneous_ops_per_sec")}
        out["redis_alive_at_end"] = redis.proc.poll() is None
    finally:
        for s in servers:
            B.stop(s.proc, grace=15)
        redis.stop()
    return out


def fanout(a, servers, redis, pubs, rate, drain):
    conns = a.conns
    srcs, _ = B.sources_for(conns)
    pub_admin = servers[a.publish_node].admin
    args = ["fanout", "--url", f"ws://127.0.0.1:{a.port}/ws?channel={{c}}",
            "--publish", f"http://{pub_admin}/pub?channel={{c}}",
            "--conns", str(conns), "--channels", str(a.channels), "--messages", str(pubs),
            "--rate", str(rate), "--size", str(a.size), "--settle-ms", str(a.settle_ms),
            "--drain", str(drain), "--sources", srcs, "--timeout", str(a.connect_timeout),
            "--connect-rate", str(a.connect_rate)]
    cpu = {}
    sample = {}

    def take_counts():
        # The nodes write their counts to Redis every second: wait for one round.
        time.sleep(1.5)
        sample["t"] = time.time()
        sample["info"] = [node_info(s) for s in servers]
        sample["channel"] = [node_channel_info(s, "ch0") for s in servers]
        sample["rss_kb"] = {"nodes": [B.rss_kb(s.pid) for s in servers],
                            "redis": B.rss_kb(redis.pid),
                            "loadgen": B.tree_rss_kb(run.proc.pid)}
        sample["slab_kb"] = B.slab_kb()
        sample["mem_available_kb"] = B.meminfo()["MemAvailable"]
        B.log(f"all connected; ch0 local: {[c.get('local_subscribers') for c in sample['channel']]}, "
              f"cluster-wide: {[c.get('subscribers') for c in sample['channel']]}; "
              f"free -g: {B.free_g()}")

    def on_phase(name, _fields):
        if name in ("settling", "stopping") and name not in cpu:
            cpu[name] = cpu_snapshot(servers, redis, run.proc.pid)
        if name == "settling":
            threading.Thread(target=take_counts, daemon=True).start()

    slab0 = B.slab_kb()
    timeout = 120 + conns / 2000 + pubs * a.channels / max(rate, 0.001) + drain + a.settle_ms / 1000
    run = B.LoadgenRun(args, timeout=timeout, on_phase=on_phase)
    rep = run.run()
    res = {"aborted": run.aborted, "machine_cpu": run.cpu_share,
           "min_mem_available_kb": run.min_avail_kb, "loadgen": rep,
           "loadgen_stderr": run.stderr[-20:], "phases": run.phases, "counts": sample,
           "slab_before_kb": slab0}
    if "slab_kb" in sample:
        res["slab_per_conn_b"] = round((sample["slab_kb"] - slab0) * 1024 / conns, 1)
    if not rep or not rep.get("fanout"):
        return res
    f = rep["fanout"]
    rows = f.get("publishes") or []
    # Within one publish: how fast the nodes together reach its subscribers.
    per_pub_rate = [r["receivers"] / (r["last_us"] / 1e6) for r in rows
                    if r.get("receivers") and r.get("last_us")]
    res.update(B.fanout_figures(rep))
    res.update({
        "per_publish_delivery_rate": {
            "p50": round(statistics.median(per_pub_rate)) if per_pub_rate else None,
            "min": round(min(per_pub_rate)) if per_pub_rate else None,
            "max": round(max(per_pub_rate)) if per_pub_rate else None,
        },
        "per_publish": [{k: r.get(k) for k in ("i", "seq", "reply_us", "receivers", "missing",
                                                "first_us", "last_us")} for r in rows[:200]],
    })
    if "settling" in cpu and "stopping" in cpu:
        c0, c1 = cpu["settling"], cpu["stopping"]
        secs = c1["t"] - c0["t"]
        nodes_cpu = [round(y - x, 2) for x, y in zip(c0["nodes"], c1["nodes"])]
        res["cpu_window"] = {
            "wall_s": round(secs, 2),
            "nodes_s": nodes_cpu,
            "redis_s": round(c1["redis"] - c0["redis"], 2),
            "loadgen_s": round(c1["loadgen"] - c0["loadgen"], 2),
            "machine": B.stat_share(c0["stat"], c1["stat"]),
        }
        if f["delivered"]:
            res["nodes_cpu_s_per_m_deliveries"] = round(sum(nodes_cpu) / (f["delivered"] / 1e6), 3)
            res["loadgen_cpu_s_per_m_deliveries"] = round(
                (c1["loadgen"] - c0["loadgen"]) / (f["delivered"] / 1e6), 3)
    return res


# ---------------------------------------------------------------- output

def node_rows(r):
    f = r.get("fanout") or {}
    cnt = f.get("counts") or {}
    infos, chans = cnt.get("info") or [], cnt.get("channel") or []
    rss = (cnt.get("rss_kb") or {}).get("nodes") or []
    end = r.get("node_info_end") or []
    cw = (f.get("cpu_window") or {}).get("nodes_s") or []
    rows = []
    for i in range(r["nodes"]):
        def g(lst, key=None, d="-"):
            try:
                return lst[i] if key is None else lst[i].get(key, d)
            except (IndexError, AttributeError):
                return d
        deliv = g(end, "delivered")
        rows.append([
            f"node-{i}" + (" (publishes)" if i == r["publish_node"] else ""),
            g(infos, "connections"),
            g(chans, "local_subscribers"),
            g(chans, "subscribers"),
            (g(end, "cluster") or {}).get("received", "-") if isinstance(g(end, "cluster"), dict) else "-",
            deliv,
            f"{g(rss) / 1024:.0f}" if isinstance(g(rss), int) else "-",
            g(cw),
        ])
    return rows


NODE_HEADER = ["process", "connections", "ch0 local subs", "ch0 cluster-wide subs",
               "feed msgs read", "delivered", "RSS MiB", "CPU s (fan-out window)"]


def summary_rows(r):
    f = r.get("fanout") or {}
    if "delivered" not in f:
        return [("ABORTED", f.get("aborted") or "no report")]

    def s3(d):
        return f"{B.ms(d['p50'])} / {B.ms(d['p99'])} / {B.ms(d['max'])}"
    cw = f.get("cpu_window") or {}
    rows = [
        ("subscribers connected / failed",
         f"{f['connected']} / {f['connect_failed']} {f['connect_failed_by_reason'] or ''}".strip()),
        ("connect rate", f"{f['connect_rate_per_s']:,.0f}/s ({f['connect_phase_s']:.1f} s)"),
        ("dropped by the servers", f"{f['dropped']} {f['dropped_by_reason'] or ''}".strip()),
        ("publishes ok / failed", f"{f['published']} / {f['publish_failed']} "
                                  f"(through node-{r['publish_node']}, {r['rate']:g}/s)"),
        ("delivered / expected", f"{f['delivered']} / {f['expected']}"),
        ("lost / duplicated / out of order",
         f"{f['lost']} / {f['duplicated']} / {f['out_of_order']}"
         f" (unexpected {f['unexpected']}, seq errors {f['seq_errors']}, gaps {f['gaps']})"),
        ("latency p50 / p99 / max (every delivery)", s3(f["latency_us"])),
        ("first arrival per publish p50 / p99 / max", s3(f["first_arrival_us"])),
        ("last arrival per publish p50 / p99 / max", s3(f["last_arrival_us"])),
        ("deliveries/s within a publish (N / last arrival, median)",
         f"{f['per_publish_delivery_rate']['p50']:,}" if f["per_publish_delivery_rate"]["p50"] else "-"),
        ("deliveries/s over the run (loadgen, paced)", f"{f['deliveries_per_s']:,.0f}"),
        ("publish reply p50 / p99 / max", s3(f["publish_reply_us"])),
    ]
    if cw:
        rows += [
            ("CPU s, all connected -> all delivered",
             f"nodes {sum(cw['nodes_s']):.2f}, redis-server {cw['redis_s']:.2f}, "
             f"loadgen {cw['loadgen_s']:.2f} (over {cw['wall_s']:.1f} s)"),
            ("nodes' CPU s per million deliveries", f.get("nodes_cpu_s_per_m_deliveries", "-")),
            ("machine busy / steal in that window",
             f"{cw['machine']['busy'] * 100:.0f}% / {cw['machine']['steal'] * 100:.0f}%"),
        ]
    if f.get("slab_per_conn_b") is not None:
        cnt = f.get("counts") or {}
        rows.append(("kernel slab per connection (both ends)", f"{f['slab_per_conn_b']:,.0f} B"))
        rss = cnt.get("rss_kb") or {}
        rows.append(("RSS: nodes total / redis / loadgen",
                     f"{sum(rss.get('nodes', [])) / 1024:.0f} / {rss.get('redis', 0) / 1024:.0f} / "
                     f"{rss.get('loadgen', 0) / 1024:.0f} MiB"))
    if f.get("min_mem_available_kb"):
        rows.append(("lowest MemAvailable", f"{f['min_mem_available_kb'] / 1048576:.1f} GiB"))
    if f.get("aborted"):
        rows.append(("ABORTED", f["aborted"]))
    for w in (r.get("server_log_warnings") or [])[:3]:
        rows.append(("server warning", w[:110]))
    if not all(r.get("nodes_alive_at_end", [True])) or not r.get("redis_alive_at_end", True):
        rows.append(("DIED", f"nodes alive {r.get('nodes_alive_at_end')}, redis {r.get('redis_alive_at_end')}"))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conns", type=int, default=15000)
    ap.add_argument("--nodes", type=int, default=0, help="pushedge nodes (default: from the fd limit, at least 2)")
    ap.add_argument("--backend", choices=["epoll", "uring"], default="epoll")
    ap.add_argument("--set", action="append", default=[], help="pushedge --set KEY=VALUE (every node)")
    ap.add_argument("--workers", type=int, default=0, help="per node (default: cores; see the sizing above)")
    ap.add_argument("--per-proc", type=int, default=PER_PROC,
                    help="most connections per process (uring direct: per worker ring)")
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--publishes", type=int, default=0,
                    help="messages per channel (default 100 up to 20k subscribers, 30 up to 200k, else 5)")
    ap.add_argument("--rate", type=float, default=None,
                    help="publishes per second (default 4, 0.5 above 20k, 0.05 above 200k)")
    ap.add_argument("--drain", type=float, default=0.0, help="seconds to wait after the last publish")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--settle-ms", type=int, default=2500)
    ap.add_argument("--connect-rate", type=float, default=0.0, help="loadgen --connect-rate (0: no limit)")
    ap.add_argument("--connect-timeout", type=float, default=30.0, help="loadgen --timeout")
    ap.add_argument("--publish-node", type=int, default=0)
    ap.add_argument("--port", type=int, default=8100)
    ap.add_argument("--admin", type=int, default=18000)
    ap.add_argument("--redis-port", type=int, default=REDIS_PORT)
    ap.add_argument("--deadline", type=float, default=0.0,
                    help="seconds for the whole run (default: from N and the pacing)")
    ap.add_argument("--tag", default="", help="extra name part of the JSON file")
    a = ap.parse_args()
    B.check_binaries()
    _, rate, _ = default_pacing(a.conns)
    pubs = a.publishes or default_pacing(a.conns)[0]
    deadline = a.deadline or (300 + a.conns / 1000 + pubs * a.channels / max(a.rate or rate, 0.001))

    def on_alarm(_s, _f):
        B.log(f"the run passed its deadline of {deadline:.0f} s: stopping everything")
        B.cleanup()
        os._exit(124)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(deadline))
    t0 = time.time()
    r = run_cluster(a)
    signal.alarm(0)
    r["machine"] = B.machine()
    r["wall_s"] = round(time.time() - t0, 1)
    extra = "-".join(s.replace("=", "_") for s in a.set)
    name = (f"cluster-{a.backend}-{a.conns}x{r['nodes']}"
            f"{'-c' + str(a.channels) if a.channels > 1 else ''}{'-' + extra if extra else ''}"
            f"{'-' + a.tag if a.tag else ''}.json")
    B.write_json(name, r)
    title = (f"bench-cluster: {a.conns} WS subscribers on {a.channels} channel(s), {r['nodes']} nodes x "
             f"{r['workers_per_node']} workers ({a.backend}{' ' + ' '.join(a.set) if a.set else ''}), "
             f"redis-server {r.get('redis_version')} (AOF), {r['publishes']} publishes/channel "
             f"at {r['rate']:g}/s through node-{a.publish_node}")
    print(B.table(title, NODE_HEADER, node_rows(r)))
    f = r.get("fanout") or {}
    cw = f.get("cpu_window") or {}
    if cw:
        print(f"redis-server CPU {cw['redis_s']:.2f} s, loadgen CPU {cw['loadgen_s']:.2f} s "
              f"(same window, {cw['wall_s']:.1f} s)")
    print()
    print(B.table("", ["", "value"], summary_rows(r), left=2))
    ok = f.get("delivered") is not None and not f.get("aborted")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
