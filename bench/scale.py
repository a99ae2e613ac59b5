#!/usr/bin/env python3
"""bench-scale: hold N idle subscriber connections on one box and measure what they cost.

    python3 bench/scale.py --conns 100000 [--backend epoll|uring]
                           [--transport ws|sse|stream|poll|socketio]
                           [--workers W] [--per-proc K] [--set KEY=VALUE ...] [--hold S]
                           [--tls [--tls-only] [--cert ec|rsa]]

Starts enough `pushedge` processes on ONE subscriber port (SO_REUSEPORT; each with its own
admin port and control socket) to stay under the 20,000 open files a process may have:

- epoll, or uring with `uring_direct=false`: every connection is a descriptor of its
  process; the kernel spreads connections over the listeners at random (4-tuple hash), so
  processes = ceil(N / K) with K = 15,000 (--per-proc) leaves room for the unevenness,
  which is measured and printed;
- uring with direct descriptors (the default for uring): accepted sockets live in each
  worker ring's table (capped at 20,000 per ring) and take no process descriptor, so a
  process holds up to workers x ~20,000; processes = ceil(N / (W x K)), W = 8 workers.

With `--transport socketio` the servers run with `socketio=true` and loadgen holds N
Socket.IO v4 connections over WebSocket (`/socket.io/?EIO=4&transport=websocket`, each
connected to the main namespace with the channel as its room); a connection counts as held
once its namespace CONNECT is answered.

Then `loadgen hold` opens N connections from enough source addresses (127.0.0.2..) and,
once every connection has been tried, the script measures: connections held, failures by
reason, time to connect them all, server RSS per connection (and minus the processes'
idle RSS right after startup), kernel memory per connection (/proc/meminfo Slab before
and after, over N: this includes the client ends, loopback pays for both), loadgen's RSS,
and connections per server process. Prints a table and writes
target/bench/scale-<backend>-<N>.json. Every process it starts is stopped at the end.

With `--tls`, the same hold runs twice, plain then over TLS (`--tls-only`: TLS alone): a
test CA and server certificate are made with the openssl CLI under target/bench/tls/<cert>/
(ECDSA P-256 by default, `--cert rsa` for RSA 2048), pushedge runs with
`--set tls_cert=... --set tls_key=...`, and loadgen connects with `wss://` (or `https://`
for the HTTP transports) checking the test CA (`--cacert`). The table has a column per
run, then what TLS adds per idle connection (server RSS, kernel slab, loadgen RSS): the
difference and the ratio. The JSON (`...-tls-<N>.json`) holds both runs.
"""

import argparse
import math
import statistics
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import benchlib as B  # noqa: E402


def plan_processes(conns, backend, direct, workers, per_proc):
    if backend == "uring" and direct:
        workers = workers or 8
        cap = workers * per_proc
    else:
        workers = workers or (B.os.cpu_count() or 2)
        cap = per_proc
    return max(1, math.ceil(conns / cap)), workers


def url_for(transport, port, channel="{c}"):
    return B.sub_url(transport, port, channel)


def spread(counts):
    if not counts:
        return {}
    mean = statistics.mean(counts)
    return {
        "min": min(counts),
        "max": max(counts),
        "mean": round(mean, 1),
        "stdev": round(statistics.pstdev(counts), 1),
        "max_over_mean": round(max(counts) / mean, 4) if mean else None,
    }


def run_scale(conns, backend="epoll", transport="ws", workers=None, per_proc=15000,
              sets=(), hold_s=5.0, port=8100, admin_base=18000, channels=1, tag=None,
              connect_rate=0.0, tls=None):
    """One hold of `conns` idle subscribers; `tls` (a make_cert() dict) makes the
    subscriber listener TLS and loadgen connect over TLS (checking the test CA)."""
    sets = B.transport_sets([transport], sets)
    url = url_for(transport + ("+tls" if tls else ""), port)
    extra = ["--channels", str(channels), "--rate", str(connect_rate)]
    if tls:
        extra += B.tls_args(tls)
    direct = backend == "uring" and "uring_direct=false" not in [s.replace(" ", "") for s in sets]
    nproc, workers = plan_processes(conns, backend, direct, workers, per_proc)
    B.prepare_system(conns)
    B.log(f"{conns} {transport}{' over TLS' if tls else ''} connections: {nproc} pushedge "
          f"process(es) x {workers} workers, "
          f"backend {backend}{' (direct descriptors)' if direct else ''} {' '.join(sets)}")
    slab_idle0 = B.slab_kb()
    servers = B.start_pushedge(nproc, port=port, admin_base=admin_base, backend=backend,
                               workers=workers, sets=sets, tag=tag or f"scale-{backend}",
                               tls=tls)
    try:
        res = B.hold(
            url,
            conns,
            pids=[s.pid for s in servers],
            idle_rss_kb=[s.idle_rss_kb for s in servers],
            conns_fn=lambda: B.server_conns(servers),
            hold_s=hold_s,
            extra=extra,
        )
        res["server_log_warnings"] = B.server_errors(servers)
        res["server_metrics"] = B.server_metrics(servers)
        res["server_alive_at_end"] = [s.proc.poll() is None for s in servers]
    finally:
        for s in servers:
            B.stop(s.proc, grace=15)
    res.update({
        "backend": backend,
        "direct": direct,
        "sets": sets,
        "transport": transport,
        "tls": bool(tls),
        "cert": tls["kind"] if tls else None,
        "channels": channels,
        "connect_rate_limit": connect_rate,
        "server_processes": nproc,
        "workers_per_process": workers,
        "per_proc_target": per_proc,
        "servers_idle_slab_kb": B.slab_kb() - slab_idle0,
        "spread": spread(res.get("server_conns") or []),
    })
    return res


def summary_rows(r):
    lg = r.get("loadgen") or {}
    c = lg.get("connect", {})
    d = lg.get("drops", {})
    fails = c.get("failed_by_reason") or {}
    rows = [
        ("connections asked", r["conns"]),
        ("connections held (all tried)", r.get("held", "-")),
        ("open at the end of the hold", d.get("open_at_end", "-")),
        ("failed (by reason)", f"{c.get('failed', '-')} {fails if fails else ''}".strip()),
        ("dropped by the server", f"{d.get('dropped', '-')} {d.get('by_reason') or ''}".strip()),
        ("time to connect all", f"{c.get('phase_s', 0):.2f} s ({c.get('rate_per_s', 0):,.0f}/s)"),
        ("connect latency p50 / p99 / max",
         f"{B.ms(c.get('latency_us', {}).get('p50'))} / {B.ms(c.get('latency_us', {}).get('p99'))}"
         f" / {B.ms(c.get('latency_us', {}).get('max'))}"),
        ("server processes x workers", f"{r['server_processes']} x {r['workers_per_process']}"),
    ]
    if r.get("measured"):
        sp = r["spread"]
        rows += [
            ("conns per process min / mean / max",
             f"{sp.get('min')} / {sp.get('mean')} / {sp.get('max')} (stdev {sp.get('stdev')},"
             f" max/mean {sp.get('max_over_mean')})"),
            ("server RSS total (idle at start)",
             f"{r['server_rss_kb'] / 1024:.1f} MiB ({r['server_idle_rss_kb'] / 1024:.1f} MiB)"),
            ("server RSS per connection", f"{r['server_rss_per_conn_b']:.0f} B"),
            ("  minus idle RSS", f"{r['server_rss_delta_per_conn_b']:.0f} B"),
            ("kernel slab per connection (both ends)", f"{r['slab_per_conn_b']:.0f} B"),
            ("  minus /proc fd inodes (sandbox monitor)",
             f"{r['slab_net_per_conn_b']:.0f} B (artifact {r['slab_proc_fd_artifact_per_conn_b']:.0f} B)"),
            ("  top caches (B/conn)",
             ", ".join(f"{k} {v:.0f}" for k, v in list(r["slab_top_per_conn_b"].items())[:6])),
            ("TCP buffer pages (delta)", r["tcp_mem_pages_delta"]),
            ("loadgen RSS (per connection)",
             f"{r['loadgen_rss_kb'] / 1024:.1f} MiB ({r['loadgen_rss_per_conn_b']:.0f} B)"),
            ("MemAvailable drop per connection", f"{r['mem_available_drop_per_conn_b']:.0f} B"),
        ]
        if r.get("hold_cpu"):
            hc = r["hold_cpu"]
            rows.append(("CPU while holding (cores of 2)",
                         f"server {hc['server_cores']:.2f}, loadgen {hc['loadgen_cores']:.2f}, "
                         f"machine busy {hc['machine_busy'] * 100:.0f}% (over {hc['seconds']:.0f} s)"))
    if r.get("machine_cpu"):
        rows.append(("machine CPU over the run (busy, steal)",
                     f"{r['machine_cpu']['busy'] * 100:.0f}%, {r['machine_cpu']['steal'] * 100:.0f}%"))
    t = (lg.get("tls") or {})
    if t:
        rows.append(("TLS handshakes full / resumed (versions)",
                     f"{t.get('full')} / {t.get('resumed')} {t.get('by_version') or ''}".strip()))
    if r.get("min_mem_available_kb"):
        rows.append(("lowest MemAvailable during run", f"{r['min_mem_available_kb'] / 1048576:.1f} GiB"))
    m = r.get("server_metrics") or {}
    if m:
        rows.append(("server: accepted, heartbeat / handshake timeouts",
                     f"{m.get('pushedge_connections_accepted_total', '-')}, "
                     f"{m.get('pushedge_heartbeat_timeouts_total', '-')} / "
                     f"{m.get('pushedge_handshake_timeouts_total', '-')}"))
    if r.get("aborted"):
        rows.append(("ABORTED", r["aborted"]))
    if r.get("server_log_warnings"):
        rows.append(("server warnings", r["server_log_warnings"][0][:100]))
    return rows


def tls_compare_rows(plain, tls):
    """What TLS adds per idle connection: the differences and ratios of the two runs."""
    def fig(r, k):
        return r.get(k) if r.get("measured") else None

    rows = []
    for label, k in (("server RSS per connection", "server_rss_per_conn_b"),
                     ("  minus idle RSS", "server_rss_delta_per_conn_b"),
                     ("kernel slab per connection (both ends)", "slab_per_conn_b"),
                     ("loadgen RSS per connection", "loadgen_rss_per_conn_b")):
        a, b = fig(plain, k), fig(tls, k)
        if a is None or b is None:
            rows.append((label, "-", "-"))
            continue
        rows.append((label, f"{b - a:+,.0f} B", f"x{b / a:.2f}" if a else "-"))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conns", type=int, default=100000)
    ap.add_argument("--backend", choices=["epoll", "uring"], default="epoll")
    ap.add_argument("--transport", choices=list(B.TRANSPORTS), default="ws")
    ap.add_argument("--workers", type=int, default=0, help="per process (default: cores; uring direct: 8)")
    ap.add_argument("--per-proc", type=int, default=15000,
                    help="target connections per process (uring direct: per worker ring)")
    ap.add_argument("--set", action="append", default=[], help="pushedge --set KEY=VALUE")
    ap.add_argument("--hold", type=float, default=5.0, help="seconds to hold once connected")
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--connect-rate", type=float, default=0.0,
                    help="loadgen --rate: new connections per second (0: no limit)")
    ap.add_argument("--port", type=int, default=8100)
    ap.add_argument("--tls", action="store_true",
                    help="TLS: a plain run, then the same over TLS (a test certificate from "
                         "the openssl CLI under target/bench/tls/), side by side")
    ap.add_argument("--tls-only", action="store_true", help="with --tls: no plain run")
    ap.add_argument("--cert", choices=list(B.CERT_KINDS), default="ec",
                    help="TLS certificate key: ec (ECDSA P-256, default) or rsa (2048)")
    a = ap.parse_args()
    if a.tls_only and not a.tls:
        ap.error("--tls-only goes with --tls")
    B.check_binaries()
    t0 = time.time()
    runs = []
    if not a.tls_only:
        runs.append(("plain", None))
    if a.tls:
        runs.append(("TLS", B.make_cert(a.cert)))
    results = []
    for name, cert in runs:
        r = run_scale(a.conns, a.backend, a.transport, a.workers or None, a.per_proc, a.set,
                      a.hold, a.port, channels=a.channels, connect_rate=a.connect_rate,
                      tls=cert)
        r["machine"] = B.machine()
        results.append((name, r))
    wall = round(time.time() - t0, 1)
    extra = "-".join(s.replace("=", "_") for s in a.set)
    name = (f"scale-{a.backend}{'-' + extra if extra else ''}-{a.transport}"
            f"{'-tls' if a.tls else ''}-{a.conns}.json")
    if a.connect_rate:
        name = name.replace(".json", f"-rate{a.connect_rate:g}.json")
    if len(results) == 1:
        r = results[0][1]
        r["wall_s"] = wall
        B.write_json(name, r)
    else:
        B.write_json(name, {"wall_s": wall, "runs": {n: r for n, r in results},
                            "tls_minus_plain": {
                                k: (results[1][1].get(k) or 0) - (results[0][1].get(k) or 0)
                                for k in ("server_rss_per_conn_b", "server_rss_delta_per_conn_b",
                                          "slab_per_conn_b", "loadgen_rss_per_conn_b")
                                if results[0][1].get("measured") and results[1][1].get("measured")}})
    what = a.transport + (" (and over TLS, " + a.cert + " certificate)" if a.tls and not a.tls_only
                          else " over TLS (" + a.cert + " certificate)" if a.tls else "")
    title = (f"bench-scale: {a.conns} {what} connections, backend {a.backend}"
             f"{' ' + ' '.join(a.set) if a.set else ''}"
             f"{f', connect rate <= {a.connect_rate:g}/s' if a.connect_rate else ''}, held {a.hold:g} s")
    cols = [dict(summary_rows(r)) for _, r in results]
    labels = list(dict.fromkeys(label for c in cols for label in c))
    rows = [[label] + [c.get(label, "-") for c in cols] for label in labels]
    print(B.table(title, [""] + [n for n, _ in results], rows, left=1))
    if len(results) == 2:
        print()
        print(B.table("what TLS adds per idle connection (TLS - plain, TLS / plain)",
                      ["", "difference", "ratio"],
                      tls_compare_rows(results[0][1], results[1][1]), left=1))
    ok = all(r.get("measured") and not r.get("aborted") for _, r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
