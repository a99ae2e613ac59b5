#!/usr/bin/env python3
"""bench-backends: epoll and io_uring side by side (issue 5).

    bash bench/backends.sh            (= python3 bench/backends.py)
    python3 bench/backends.py [--only NAME ...] [--hold-conns 19000] [--subs 15000]

For each configuration of the reactor:
- `epoll`                          (mio, edge-triggered)
- `uring`                          (direct descriptors, multishot POLL_ADD: the defaults)
- `uring uring_arm=recv`           (multishot RECV with a provided-buffer ring)
- `uring uring_direct=false`       (plain descriptors, POLL_ADD)

it measures, each time on a fresh pushedge process (default workers = cores):
- memory per idle connection at 19,000 WebSocket connections in one process: server RSS
  over N (and minus its idle RSS), kernel slab over N (both ends; the client side is the
  same loadgen in every row, so differences between rows are the server's), net of the
  /proc inodes a process monitor on this sandbox creates, and the caches that grew most;
- one publish to 15,000 subscribers, 50 times at 4/s: last arrival p50/p99 per publish;
- publishes per second to a channel with one subscriber (1 connection, 128 pipelined);
- the server's CPU seconds per million deliveries during the fan-out.

The machine this was written on is a shared VM whose speed drifts by tens of percent over
minutes, so the configurations are run in turn `--repeat` times (default 2) and the table
gives the median with the range of the runs.

Prints one table and writes target/bench/backends.json.
"""

import argparse
import statistics
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import benchlib as B  # noqa: E402
import fanout as F  # noqa: E402

CONFIGS = [
    ("epoll", "epoll", []),
    ("uring", "uring", []),
    ("uring-recv", "uring", ["uring_arm=recv"]),
    ("uring-nodirect", "uring", ["uring_direct=false"]),
]


def run_one(name, backend, sets, a):
    out = {"name": name, "backend": backend, "sets": sets}
    srv = B.start_pushedge(1, backend=backend, sets=sets, tag=f"be-{name}")[0]
    try:
        B.log(f"{name}: hold {a.hold_conns}")
        out["hold"] = B.hold(f"ws://127.0.0.1:8100/ws?channel={{c}}", a.hold_conns, [srv.pid],
                             [srv.idle_rss_kb], hold_s=4)
        out["hold_log_warnings"] = B.server_errors([srv])
    finally:
        B.stop(srv.proc, grace=15)
    srv = B.start_pushedge(1, backend=backend, sets=["heartbeat_secs=600"] + sets,
                           tag=f"be-{name}")[0]
    try:
        url = "ws://127.0.0.1:8100/ws?channel={c}"
        pub = f"http://{srv.admin}/pub?channel={{c}}"
        B.log(f"{name}: fanout {a.subs} x {a.publishes}")
        out["fanout"] = F.fanout(url, pub, a.subs, 1, a.publishes, a.rate, [srv.pid])
        B.log(f"{name}: publish rate")
        out["pubrate"] = F.pubrate(url, pub, [srv.pid], a.pub_messages, 1, 128)
        out["log_warnings"] = B.server_errors([srv])
    finally:
        B.stop(srv.proc, grace=15)
    return out


def pick(runs, f):
    out = []
    for r in runs:
        try:
            out.append(f(r))
        except (KeyError, TypeError):
            pass
    return out


def med(values, fmt):
    """Median of the runs, with their range when there are several."""
    if not values:
        return "-"
    m = fmt(statistics.median(values))
    if len(values) == 1:
        return m
    return f"{m} ({fmt(min(values))}-{fmt(max(values))})"


def summarize(runs):
    """The figures of one configuration over its runs (medians and ranges)."""
    def b(v):
        return f"{v:,.0f} B"

    def msf(v):
        return f"{v / 1000:.0f} ms"
    complete = all(pick(runs, lambda r: r["pubrate"]["complete"]) or [False])
    delivered = pick(runs, lambda r: (r["fanout"]["delivered"], r["fanout"]["expected"]))
    top = pick(runs, lambda r: {k: v for k, v in r["hold"]["slab_top_per_conn_b"].items()
                                if k != "proc_inode_cache"})
    return {
        "rss": med(pick(runs, lambda r: r["hold"]["server_rss_per_conn_b"]), b),
        "rss_delta": med(pick(runs, lambda r: r["hold"]["server_rss_delta_per_conn_b"]), b),
        "slab": med(pick(runs, lambda r: r["hold"]["slab_net_per_conn_b"]), b),
        "last_p50": med(pick(runs, lambda r: r["fanout"]["last_arrival_us"]["p50"]), msf),
        "last_p99": med(pick(runs, lambda r: r["fanout"]["last_arrival_us"]["p99"]), msf),
        "delivered": " ".join(f"{d}/{e}" for d, e in delivered) if delivered else "-",
        "pubrate": med(pick(runs, lambda r: r["pubrate"]["publishes_per_s"]), lambda v: f"{v:,.0f}")
        + ("" if complete else " INCOMPLETE"),
        "cpu": med(pick(runs, lambda r: r["fanout"]["server_cpu_s_per_m_deliveries"]),
                   lambda v: f"{v:.2f}"),
        "top": ", ".join(f"{k} {v:.0f}" for k, v in list(top[0].items())[:5]) if top else "-",
    }


def row(name, sets, runs):
    s = summarize(runs)
    return [name + ("" if not sets else " (" + " ".join(sets) + ")"),
            f"{s['rss']}", f"{s['rss_delta']}", s["slab"], s["last_p50"], s["last_p99"],
            s["pubrate"], s["cpu"]]


def header(conns):
    return ["backend", f"RSS/conn at {conns}", "minus idle RSS", "kernel slab/conn (both ends)",
            "last arrival p50", "last arrival p99", "publishes/s", "CPU s / M deliveries"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", default=[],
                    help="run only these configurations: " + ", ".join(c[0] for c in CONFIGS))
    ap.add_argument("--hold-conns", type=int, default=19000)
    ap.add_argument("--subs", type=int, default=15000)
    ap.add_argument("--publishes", type=int, default=50)
    ap.add_argument("--rate", type=float, default=4.0)
    ap.add_argument("--pub-messages", type=int, default=300000)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    B.check_binaries()
    B.prepare_system(a.hold_conns)
    configs = [c for c in CONFIGS if not a.only or c[0] in a.only]
    runs = {name: [] for name, _, _ in configs}
    for k in range(max(1, a.repeat)):
        for name, backend, sets in configs:
            B.log(f"round {k + 1}/{a.repeat}: {name}")
            runs[name].append(run_one(name, backend, sets, a))
    summary = {name: summarize(runs[name]) for name in runs}
    B.write_json("backends.json", {"machine": B.machine(), "args": vars(a),
                                   "summary": summary, "runs": runs})
    title = (f"bench-backends: one pushedge process ({B.os.cpu_count()} workers); "
             f"{a.hold_conns} idle WS for memory, {a.subs} subscribers x {a.publishes} "
             f"publishes for fan-out; median (range) of {a.repeat} run(s)")
    print(B.table(title, header(a.hold_conns), [row(n, s, runs[n]) for n, _, s in configs]))
    print()
    print(B.table("kernel slab growth by cache, B/conn (both ends; the client side is the same "
                  "loadgen in every row)", ["backend", "caches"],
                  [[n, summary[n]["top"]] for n, _, _ in configs]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
