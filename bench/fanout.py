#!/usr/bin/env python3
"""bench-fanout: fan-out latency, CPU per delivery and publish rate of one pushedge process.

    python3 bench/fanout.py [--backend epoll|uring] [--set KEY=VALUE ...] [--subs 15000]
                            [--publishes 100] [--rate 4]

1. One channel, 15,000 WebSocket subscribers, 100 publishes paced at 4/s (each one is
   measured alone): publish-to-arrival latency p50/p99/max over every delivery, and the
   last arrival of each publish (p50/p99/max over the publishes).
2. 100 channels x 150 subscribers (the same 15,000 connections), 5 messages per channel
   paced at 25/s: the same figures.
3. For both: the server's CPU seconds per million deliveries (utime + stime from
   /proc/<pid>/stat from "all subscribed" to "all delivered", over the deliveries). The
   server runs with `heartbeat_secs=600` so that no WebSocket pings fall in the window.
4. Publishes per second on the admin port to a channel with one subscriber attached and
   reading: 8 keep-alive connections with one request in flight each (the shape of
   `wrk -t1 -c8`), and one connection with 128 pipelined requests; the subscriber checks
   that it received every message (lost / delivered).

The subscribers and publisher are loadgen on the same two cores: every figure includes
the client's share of the CPU and loopback's receive-side softirq work. Prints tables and
writes target/bench/fanout-<backend>.json.
"""

import argparse
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import benchlib as B  # noqa: E402


def fanout(url, publish, conns, channels, messages, rate, pids, fmt=None, size=64,
           settle_ms=1000, drain_s=10, timeout=None, extra=()):
    """Runs `loadgen fanout`; returns its figures and the CPU seconds `pids` spent from
    "all connected" to "all delivered"."""
    srcs, _ = B.sources_for(conns)
    args = ["fanout", "--url", url, "--publish", publish, "--conns", str(conns),
            "--channels", str(channels), "--messages", str(messages), "--rate", str(rate),
            "--size", str(size), "--settle-ms", str(settle_ms), "--drain", str(drain_s),
            "--sources", srcs]
    if fmt:
        args += ["--format", fmt]
    args += list(extra)
    cpu = {}

    def on_phase(name, _fields):
        if name in ("settling", "stopping") and name not in cpu:
            cpu[name] = (time.time(), sum(B.cpu_s(p) for p in pids))

    if timeout is None:
        timeout = 90 + conns / 2000 + messages * channels / max(rate, 1) + drain_s
    run = B.LoadgenRun(args, timeout=timeout, on_phase=on_phase)
    rep = run.run()
    res = {"conns": conns, "channels": channels, "messages": messages, "rate": rate,
           "aborted": run.aborted, "machine_cpu": run.cpu_share, "loadgen": rep}
    if not rep or not rep.get("fanout"):
        return res
    f = rep["fanout"]
    res.update(B.fanout_figures(rep))
    if "settling" in cpu and "stopping" in cpu and f["delivered"]:
        secs = cpu["stopping"][1] - cpu["settling"][1]
        res["server_cpu_s"] = round(secs, 2)
        res["server_cpu_s_per_m_deliveries"] = round(secs / (f["delivered"] / 1e6), 3)
        res["measured_wall_s"] = round(cpu["stopping"][0] - cpu["settling"][0], 2)
    return res


def pubrate(url, publish, pids, messages=300000, publishers=1, pipeline=128, fmt=None,
            timeout=180):
    """Publishes `messages` back to back to one channel with one subscriber attached;
    returns publishes/s and whether the subscriber got everything."""
    args = ["fanout", "--url", url, "--publish", publish, "--conns", "1",
            "--messages", str(messages), "--rate", "0", "--publishers", str(publishers),
            "--pipeline", str(pipeline), "--max-rows", "0", "--size", "64",
            "--drain", "20"]
    if fmt:
        args += ["--format", fmt]
    cpu = {}

    def on_phase(name, _fields):
        if name in ("settling", "stopping") and name not in cpu:
            cpu[name] = sum(B.cpu_s(p) for p in pids)

    run = B.LoadgenRun(args, timeout=timeout, on_phase=on_phase)
    rep = run.run()
    res = {"messages": messages, "publishers": publishers, "pipeline": pipeline,
           "aborted": run.aborted, "machine_cpu": run.cpu_share, "loadgen": None}
    if not rep or not rep.get("fanout"):
        res["loadgen"] = rep
        return res
    f = rep["fanout"]
    res.update({
        "published": f["published"],
        "publish_failed": f["publish_failed"],
        "publishes_per_s": f["publishes_per_s"],
        "publish_phase_s": f["publish_phase_s"],
        "publish_reply_us": f["publish_reply_us"],
        "expected": f["expected"],
        "delivered": f["delivered"],
        "lost": f["lost"],
        "out_of_order": f["out_of_order"],
        "complete": f["lost"] == 0 and f["delivered"] == f["expected"] and f["published"] == messages,
        "latency_us": f["latency_us"],
    })
    if "settling" in cpu and "stopping" in cpu:
        res["server_cpu_s"] = round(cpu["stopping"] - cpu["settling"], 2)
    return res


def fanout_row(name, r):
    if "delivered" not in r:
        return [name, "-", "-", "-", "-", "-", "-", "-", r.get("aborted") or "no report"]
    lat, last = r["latency_us"], r["last_arrival_us"]
    return [
        name,
        f"{r['connected']}",
        f"{r['published']}",
        f"{r['delivered']}/{r['expected']}",
        f"{r['lost']}",
        f"{B.ms(lat['p50'])} / {B.ms(lat['p99'])} / {B.ms(lat['max'])}",
        f"{B.ms(last['p50'])} / {B.ms(last['p99'])} / {B.ms(last['max'])}",
        f"{r.get('server_cpu_s_per_m_deliveries', '-')}",
        f"steal {r['machine_cpu']['steal'] * 100:.0f}%" + (" " + r["aborted"] if r.get("aborted") else ""),
    ]


FANOUT_HEADER = ["scenario", "subs", "publishes", "delivered", "lost",
                 "latency p50 / p99 / max", "last arrival p50 / p99 / max",
                 "server CPU s / M deliveries", "note"]


def pubrate_row(name, r):
    if "publishes_per_s" not in r:
        return [name, "-", "-", "-", r.get("aborted") or "no report"]
    return [
        name,
        f"{r['publishes_per_s']:,.0f}",
        f"{r['published']}/{r['messages']}",
        f"{r['delivered']}/{r['expected']} lost {r['lost']}"
        + (" (complete)" if r["complete"] else " (INCOMPLETE)"),
        f"steal {r['machine_cpu']['steal'] * 100:.0f}%" + (" " + r["aborted"] if r.get("aborted") else ""),
    ]


PUBRATE_HEADER = ["publishers", "publishes/s", "ok", "subscriber received", "note"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=["epoll", "uring"], default="epoll")
    ap.add_argument("--set", action="append", default=[], help="pushedge --set KEY=VALUE")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--subs", type=int, default=15000)
    ap.add_argument("--publishes", type=int, default=100)
    ap.add_argument("--rate", type=float, default=4.0)
    ap.add_argument("--pub-messages", type=int, default=300000)
    ap.add_argument("--port", type=int, default=8100)
    ap.add_argument("--admin", type=int, default=18000)
    a = ap.parse_args()
    B.check_binaries()
    B.prepare_system(a.subs)
    # No heartbeats during the run: 15,000 pings and pongs would be counted as the CPU
    # of the deliveries.
    sets = ["heartbeat_secs=600"] + a.set
    srv = B.start_pushedge(1, port=a.port, admin_base=a.admin, backend=a.backend,
                           workers=a.workers or None, sets=sets, tag="fanout")[0]
    url = f"ws://127.0.0.1:{a.port}/ws?channel={{c}}"
    pub = f"http://{srv.admin}/pub?channel={{c}}"
    out = {"backend": a.backend, "sets": a.set, "machine": B.machine()}
    try:
        out["one_channel"] = fanout(url, pub, a.subs, 1, a.publishes, a.rate, [srv.pid])
        out["many_channels"] = fanout(url, pub, a.subs, 100, 5, 25.0, [srv.pid])
        out["pubrate_8x1"] = pubrate(url, pub, [srv.pid], a.pub_messages, 8, 1)
        out["pubrate_1x128"] = pubrate(url, pub, [srv.pid], a.pub_messages, 1, 128)
        out["server_log_warnings"] = B.server_errors([srv])
    finally:
        B.stop(srv.proc, grace=15)
    name = "fanout-" + a.backend + "".join("-" + s.replace("=", "_") for s in a.set) + ".json"
    B.write_json(name, out)
    label = a.backend + (" " + " ".join(a.set) if a.set else "")
    print(B.table(f"bench-fanout ({label}): one pushedge process, WebSocket subscribers",
                  FANOUT_HEADER, [
                      fanout_row(f"1 channel x {a.subs}, {a.publishes} publishes at {a.rate:g}/s",
                                 out["one_channel"]),
                      fanout_row(f"100 channels x {a.subs // 100}, 5 each at 25/s",
                                 out["many_channels"]),
                  ]))
    print()
    print(B.table(f"publish rate to a channel with one subscriber ({a.pub_messages} publishes)",
                  PUBRATE_HEADER, [
                      pubrate_row("8 connections x 1 in flight", out["pubrate_8x1"]),
                      pubrate_row("1 connection x 128 pipelined", out["pubrate_1x128"]),
                  ]))
    bad = any(out[k].get("aborted") for k in ("one_channel", "many_channels", "pubrate_8x1", "pubrate_1x128"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
