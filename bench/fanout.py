#!/usr/bin/env python3
"""bench-fanout: fan-out latency, CPU per delivery and publish rate of one pushedge process.

    python3 bench/fanout.py [--backend epoll|uring] [--set KEY=VALUE ...] [--subs 15000]
                            [--publishes 100] [--rate 4] [--transports ws[,socketio,wss,...]]
                            [--rounds R] [--scenarios one_channel,many_channels,...]
                            [--cert ec|rsa]

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
writes target/bench/fanout-<backend>[-sets][-transports].json.

`--transports ws,socketio` runs every scenario over each transport against the same
server, interleaved: for each scenario, round after round, the transports in turn (the
order reversed every other round, ABBA, so that the machine's drift weighs on both
alike); `--rounds` (default 3 with several transports, else 1). Socket.IO subscribers are
Socket.IO v4 over WebSocket on the main namespace, the channel as their room (the server
runs with `socketio=true` and `socketio_ping_interval_secs=600`, as `heartbeat_secs=600`
keeps WebSocket pings out of the window). A last table gives, per scenario, the median
over the rounds of each figure and its ratio to the first transport (e.g. socketio / ws):
latency p50 and p99, last arrival p50 and p99, server CPU per million deliveries, and
publishes per second, and loadgen's own CPU per million deliveries (the subscribers' side,
on the same two cores: what it takes shows in the latency).

TLS: `wss` is WebSocket over TLS, and `<transport>+tls` any other transport over TLS
(`sse+tls`: SSE over https://). The run's server then has a TLS listener too: with plain
and TLS transports in one run (`--transports ws,wss`), one pushedge process with two
`[[listener]]`s, plain on --port and TLS on --port + 1, so both are measured on the same
server, interleaved, and the last table gives the ratios wss / ws. The certificate is a
test one made with the openssl CLI under target/bench/tls/ (ECDSA P-256, `--cert rsa` for
RSA 2048); loadgen checks it against the test CA. `--scenarios one_channel,many_channels`
leaves out the publish-rate runs (one subscriber: they say little about TLS).
"""

import argparse
import statistics
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
            cpu[name] = (time.time(), sum(B.cpu_s(p) for p in pids), B.tree_cpu_s(run.proc.pid))

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
        # The subscribers' side (loadgen and its children) over the same window: on the
        # same two cores, what it takes shows in the latency.
        res["loadgen_cpu_s_per_m_deliveries"] = round(
            (cpu["stopping"][2] - cpu["settling"][2]) / (f["delivered"] / 1e6), 3)
    return res


def pubrate(url, publish, pids, messages=300000, publishers=1, pipeline=128, fmt=None,
            timeout=180, extra=()):
    """Publishes `messages` back to back to one channel with one subscriber attached;
    returns publishes/s and whether the subscriber got everything."""
    args = ["fanout", "--url", url, "--publish", publish, "--conns", "1",
            "--messages", str(messages), "--rate", "0", "--publishers", str(publishers),
            "--pipeline", str(pipeline), "--max-rows", "0", "--size", "64",
            "--drain", "20"]
    if fmt:
        args += ["--format", fmt]
    args += list(extra)
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


# The scenarios of a run, in order (--scenarios picks some).
SCENARIOS = ("one_channel", "many_channels", "pubrate_8x1", "pubrate_1x128")


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


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(x, base):
    return None if x is None or not base else round(x / base, 3)


def fanout_figures_of(r):
    """The figures compared across transports, from one fanout() result (None: missing)."""
    if "delivered" not in r:
        return {}
    return {
        "latency_p50_us": r["latency_us"]["p50"],
        "latency_p99_us": r["latency_us"]["p99"],
        "last_arrival_p50_us": r["last_arrival_us"]["p50"],
        "last_arrival_p99_us": r["last_arrival_us"]["p99"],
        "server_cpu_s_per_m_deliveries": r.get("server_cpu_s_per_m_deliveries"),
        "loadgen_cpu_s_per_m_deliveries": r.get("loadgen_cpu_s_per_m_deliveries"),
        "lost": r["lost"],
    }


def compare(runs, transports, keys):
    """Per scenario: each transport's medians over its rounds, and their ratios to the
    first transport's."""
    out = {}
    base_t = transports[0]
    for key in keys:
        med = {}
        for t in transports:
            rounds = runs[t][key]
            if key.startswith("pubrate"):
                med[t] = {"publishes_per_s": median([r.get("publishes_per_s") for r in rounds]),
                          "lost": sum(r.get("lost") or 0 for r in rounds)}
            else:
                figs = [fanout_figures_of(r) for r in rounds]
                names = ("latency_p50_us", "latency_p99_us", "last_arrival_p50_us",
                         "last_arrival_p99_us", "server_cpu_s_per_m_deliveries",
                         "loadgen_cpu_s_per_m_deliveries")
                med[t] = {n: median([f.get(n) for f in figs]) for n in names}
                med[t]["lost"] = sum(f.get("lost") or 0 for f in figs)
            med[t]["rounds"] = len(rounds)
        ratios = {t: {n: ratio(v, med[base_t].get(n)) for n, v in med[t].items()
                      if n not in ("lost", "rounds")}
                  for t in transports[1:]}
        out[key] = {"median": med, f"ratio_to_{base_t}": ratios}
    return out


def fig(v, r=None, unit="ms"):
    """A median with its ratio to the baseline's: `us` in ms, `/s` a rate, `s` seconds."""
    if v is None:
        return "-"
    text = B.ms(v) if unit == "ms" else (f"{v:,.0f}/s" if unit == "/s" else f"{v:.2f}")
    return text + (f" (x{r:.2f})" if r is not None else "")


def compare_rows(cmp, transports, labels):
    base_t = transports[0]
    rows = []
    for key, label in labels.items():
        c = cmp[key]
        for t in transports:
            m = c["median"][t]
            r = c[f"ratio_to_{base_t}"].get(t, {})
            if key.startswith("pubrate"):
                rows.append([label, t, fig(m["publishes_per_s"], r.get("publishes_per_s"), "/s"),
                             "", "", "", "", "", f"lost {m['lost']}, {m['rounds']} round(s)"])
                continue
            rows.append([
                label, t,
                fig(m["latency_p50_us"], r.get("latency_p50_us")),
                fig(m["latency_p99_us"], r.get("latency_p99_us")),
                fig(m["last_arrival_p50_us"], r.get("last_arrival_p50_us")),
                fig(m["last_arrival_p99_us"], r.get("last_arrival_p99_us")),
                fig(m["server_cpu_s_per_m_deliveries"], r.get("server_cpu_s_per_m_deliveries"), "s"),
                fig(m["loadgen_cpu_s_per_m_deliveries"], r.get("loadgen_cpu_s_per_m_deliveries"), "s"),
                f"lost {m['lost']}, {m['rounds']} round(s)",
            ])
    return rows


COMPARE_HEADER = ["scenario", "transport", "latency p50", "latency p99", "last arrival p50",
                  "last arrival p99", "server CPU s / M deliveries",
                  "loadgen CPU s / M deliveries", "note"]


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
    ap.add_argument("--transports", default="ws",
                    help="comma-separated subscriber transports, run interleaved and compared "
                         f"to the first ({', '.join(B.TRANSPORTS)}); e.g. ws,socketio")
    ap.add_argument("--rounds", type=int, default=0,
                    help="rounds of every scenario per transport (default: 3 with several "
                         "transports, else 1)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help=f"comma-separated, among {', '.join(SCENARIOS)} (default: all)")
    ap.add_argument("--cert", choices=list(B.CERT_KINDS), default="ec",
                    help="TLS transports: the test certificate's key (ECDSA P-256 or RSA 2048)")
    a = ap.parse_args()
    transports = [t.strip() for t in a.transports.split(",") if t.strip()]
    known = B.TRANSPORTS + B.TLS_TRANSPORTS
    bad = [t for t in transports if t not in known]
    if bad or not transports or len(set(transports)) != len(transports):
        ap.error(f"--transports: a list of distinct names among {', '.join(known)}")
    keys = tuple(k.strip() for k in a.scenarios.split(",") if k.strip())
    if not keys or any(k not in SCENARIOS for k in keys) or len(set(keys)) != len(keys):
        ap.error(f"--scenarios: a list of distinct names among {', '.join(SCENARIOS)}")
    rounds = a.rounds or (3 if len(transports) > 1 else 1)
    if not 1 <= rounds <= 20:
        ap.error("--rounds must be 1..20")
    B.check_binaries()
    B.prepare_system(a.subs)
    # No heartbeats during the run: 15,000 pings and pongs would be counted as the CPU
    # of the deliveries.
    sets = B.transport_sets(transports, ["heartbeat_secs=600"] + a.set, quiet=True)
    tls = [t for t in transports if B.split_tls(t)[1]]
    cert = B.make_cert(a.cert) if tls else None
    # One server for every transport: plain ones on --port, TLS ones on --port + 1 (both
    # listeners of the one process) when the run has both kinds.
    mixed = bool(tls) and len(tls) < len(transports)
    port_of = {t: a.port + (1 if mixed and B.split_tls(t)[1] else 0) for t in transports}
    srv = B.start_pushedge(1, port=a.port, admin_base=a.admin, backend=a.backend,
                           workers=a.workers or None, sets=sets, tag="fanout",
                           tls=None if mixed else cert,
                           listeners=[(a.port, None), (a.port + 1, cert)] if mixed else None)[0]
    pub = f"http://{srv.admin}/pub?channel={{c}}"

    def extra(t):
        return B.tls_args(cert) if B.split_tls(t)[1] else []

    scenario = {
        "one_channel": lambda url, t: fanout(url, pub, a.subs, 1, a.publishes, a.rate,
                                             [srv.pid], extra=extra(t)),
        "many_channels": lambda url, t: fanout(url, pub, a.subs, 100, 5, 25.0, [srv.pid],
                                               extra=extra(t)),
        "pubrate_8x1": lambda url, t: pubrate(url, pub, [srv.pid], a.pub_messages, 8, 1,
                                              extra=extra(t)),
        "pubrate_1x128": lambda url, t: pubrate(url, pub, [srv.pid], a.pub_messages, 1, 128,
                                                extra=extra(t)),
    }
    out = {"backend": a.backend, "sets": a.set, "server_sets": sets, "transports": transports,
           "ports": port_of, "cert": cert["kind"] if cert else None, "scenarios": keys,
           "rounds": rounds, "machine": B.machine()}
    runs = {t: {k: [] for k in keys} for t in transports}
    try:
        for key in keys:
            for rnd in range(rounds):
                order = transports if rnd % 2 == 0 else transports[::-1]
                for t in order:
                    B.log(f"{key} over {t}, round {rnd + 1}/{rounds}")
                    r = scenario[key](B.sub_url(t, port_of[t]), t)
                    r["transport"] = t
                    r["round"] = rnd + 1
                    runs[t][key].append(r)
        out["server_log_warnings"] = B.server_errors([srv])
    finally:
        B.stop(srv.proc, grace=15)
    out["runs"] = runs
    if len(transports) == 1 and rounds == 1:
        # The layout of the single-transport runs before --transports.
        for k in keys:
            out[k] = runs[transports[0]][k][0]
    if len(transports) > 1:
        out["compare"] = compare(runs, transports, keys)
    name = ("fanout-" + a.backend + "".join("-" + s.replace("=", "_") for s in a.set)
            + ("" if transports == ["ws"] else "-" + "_".join(transports).replace("+", "_"))
            + ("" if keys == SCENARIOS else "-" + "_".join(keys)) + ".json")
    B.write_json(name, out)
    label = a.backend + (" " + " ".join(a.set) if a.set else "")
    several = len(transports) > 1 or rounds > 1

    def tag(t, rnd):
        return f" [{t}{f' r{rnd}' if rounds > 1 else ''}]" if several else ""

    names = {"ws": "WebSocket", "socketio": "Socket.IO", "wss": "WebSocket over TLS"}
    what = ", ".join(names.get(t, t) for t in transports)
    rows = []
    for key, label_of in (
            ("one_channel", f"1 channel x {a.subs}, {a.publishes} publishes at {a.rate:g}/s"),
            ("many_channels", f"100 channels x {a.subs // 100}, 5 each at 25/s")):
        if key not in keys:
            continue
        for rnd in range(rounds):
            for t in transports:
                rows.append(fanout_row(label_of + tag(t, rnd + 1), runs[t][key][rnd]))
    if rows:
        print(B.table(f"bench-fanout ({label}): one pushedge process, {what} subscribers",
                      FANOUT_HEADER, rows))
        print()
    rows = []
    for key, label_of in (("pubrate_8x1", "8 connections x 1 in flight"),
                          ("pubrate_1x128", "1 connection x 128 pipelined")):
        if key not in keys:
            continue
        for rnd in range(rounds):
            for t in transports:
                rows.append(pubrate_row(label_of + tag(t, rnd + 1), runs[t][key][rnd]))
    if rows:
        print(B.table(f"publish rate to a channel with one subscriber ({a.pub_messages} publishes)",
                      PUBRATE_HEADER, rows))
    if len(transports) > 1:
        print()
        labels = {k: v for k, v in {"one_channel": f"1 channel x {a.subs}",
                                    "many_channels": f"100 channels x {a.subs // 100}",
                                    "pubrate_8x1": "publishes/s, 8 x 1",
                                    "pubrate_1x128": "publishes/s, 1 x 128"}.items()
                  if k in keys}
        print(B.table(f"{' vs '.join(transports[1:])} against {transports[0]}: medians over "
                      f"{rounds} round(s), (x ratio to {transports[0]})",
                      COMPARE_HEADER, compare_rows(out["compare"], transports, labels), left=2))
    aborted = any(r.get("aborted") for t in transports for k in keys for r in runs[t][k])
    return 1 if aborted else 0


if __name__ == "__main__":
    sys.exit(main())
