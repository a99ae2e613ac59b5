#!/usr/bin/env python3
"""bench-store: pipelined publishes with the disk history store against the memory one.

    make bench-store [BACKEND=epoll|uring] [BENCH_ARGS="--rounds 5 --messages 500000"]
    python3 bench/store.py [--rounds 5] [--messages 500000] [--pipeline 128] [--fsync]

Each round starts a fresh pushedge with `history_store = "memory"` and then a fresh one
with `history_store = "disk"` (a new empty `history_path` under target/bench/), in turn,
and publishes `--messages` back to back to one channel with one WebSocket subscriber
(one publisher connection, `--pipeline` requests in flight: `loadgen fanout --rate 0`).
Every publish must be answered 200 and reach the subscriber in order; a round that loses
one is reported INCOMPLETE.

The load generator shares the machine's cores with the server, and this VM's speed
drifts between runs, so the modes are interleaved and the table gives the median
publishes/s with the range, and the ratio disk / memory of the medians. The target is a
disk-store median of at least 200,000 publishes/s on a 2-core box.

Prints one table and writes target/bench/store.json.
"""

import argparse
import os
import shutil
import statistics
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import benchlib as B  # noqa: E402
import fanout as F  # noqa: E402

TARGET = 200_000


def run_one(mode, k, a):
    sets = ["heartbeat_secs=600"]
    path = None
    if mode == "disk":
        path = os.path.join(B.RUN, f"store-{os.getpid()}-{k}")
        shutil.rmtree(path, ignore_errors=True)
        sets += ["history_store=disk", f"history_path={path}"]
        if a.fsync:
            sets.append("history_fsync=true")
    srv = B.start_pushedge(1, backend=a.backend, sets=sets, tag=f"store-{mode}")[0]
    try:
        url = "ws://127.0.0.1:8100/ws?channel={c}"
        pub = f"http://{srv.admin}/pub?channel={{c}}"
        r = F.pubrate(url, pub, [srv.pid], a.messages, 1, a.pipeline)
        r["log_warnings"] = B.server_errors([srv])
        return r
    finally:
        B.stop(srv.proc, grace=15)
        if path:
            shutil.rmtree(path, ignore_errors=True)


def summarize(runs):
    rates = [r["publishes_per_s"] for r in runs if r.get("publishes_per_s")]
    return {
        "median": statistics.median(rates) if rates else None,
        "min": min(rates) if rates else None,
        "max": max(rates) if rates else None,
        "complete": all(r.get("complete") for r in runs),
        "rates": rates,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default="epoll")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--messages", type=int, default=500_000)
    ap.add_argument("--pipeline", type=int, default=128)
    ap.add_argument("--fsync", action="store_true", help="disk mode with history_fsync = true")
    a = ap.parse_args()
    B.check_binaries()
    os.makedirs(B.RUN, exist_ok=True)
    runs = {"memory": [], "disk": []}
    for k in range(max(1, a.rounds)):
        for mode in runs:
            B.log(f"round {k + 1}/{a.rounds}: {mode}")
            runs[mode].append(run_one(mode, k, a))
    summary = {m: summarize(runs[m]) for m in runs}
    B.write_json("store.json", {"machine": B.machine(), "args": vars(a),
                                "summary": summary, "runs": runs})
    rows = []
    for m, s in summary.items():
        if s["median"] is None:
            rows.append([m, "-", "-", "no report", "-"])
            continue
        rows.append([
            m, f"{s['median']:,.0f}", f"{s['min']:,.0f}-{s['max']:,.0f}",
            "complete" if s["complete"] else "INCOMPLETE",
            " ".join(f"{r / 1000:.0f}k" for r in s["rates"]),
        ])
    title = (f"bench-store: {a.messages} pipelined publishes ({a.pipeline} in flight, one "
             f"connection) to one subscriber, {a.backend}, {a.rounds} interleaved round(s)")
    print(B.table(title, ["history_store", "publishes/s (median)", "range", "delivery",
                          "rounds"], rows))
    mem, disk = summary["memory"]["median"], summary["disk"]["median"]
    if mem and disk:
        verdict = "meets" if disk >= TARGET else "BELOW"
        print(f"disk / memory: {disk / mem:.2f}; disk median {disk:,.0f}/s {verdict} the "
              f"{TARGET:,}/s target")
    return 0 if summary["memory"]["complete"] and summary["disk"]["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
