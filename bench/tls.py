#!/usr/bin/env python3
"""bench-tls: handshakes per second, TLS full and resumed, against plain TCP + WebSocket.

    python3 bench/tls.py [--conns 64] [--duration 5] [--rounds 3] [--procs 2]
                         [--versions 1.3,1.2] [--cert ec|rsa] [--nginx]
                         [--backend epoll|uring] [--set KEY=VALUE ...]

One pushedge process with two subscriber listeners (`[[listener]]`): plain on 8100 and TLS
on 8101 (a test CA and server certificate made with the openssl CLI under
target/bench/tls/<cert>/, ECDSA P-256 by default). `loadgen handshake` keeps `--conns`
connections in their handshake at once (over `--procs` child processes) for `--duration`
seconds: each connection is opened, completes its handshake and the WebSocket upgrade
(`/ws?channel=hs`, answered 101), and is closed at once (a WebSocket close frame, and a
TLS close_notify), then the next one is opened. The cases:

- `plain`: TCP + WebSocket upgrade;
- `tls1.3 full`: TLS 1.3 with `--no-resume` (every handshake full: ECDHE X25519 and the
  server's signature);
- `tls1.3 resumed`: TLS 1.3 with the child's session store: after the first handshakes,
  each connection offers a ticket the server sent earlier (PSK with ECDHE: no signature,
  no certificate);
- the same for TLS 1.2 when `--versions` has 1.2 (its resumption skips the key exchange
  too).

loadgen checks the handshake signature but not the certificate chain (`--insecure`): the
client shares the two cores with the server, and the chain walk would only add client
work. Every case runs `--rounds` times, the cases in turn (the order reversed every other
round, so that the machine's drift weighs on all alike); the table gives the median of the
rounds: handshakes per second, connect-to-101 latency p50 / p99, the share resumed, the
server's CPU per handshake (utime + stime of its process over the run, over the
handshakes) and loadgen's, and the ratios to plain. With `--nginx`, nginx (one worker,
`listen ... ssl` with a shared session cache and tickets, nchan's WebSocket subscriber
location) is measured the same way after pushedge, for reference.

Writes target/bench/tls-<backend>.json. Every process it starts is stopped at the end.
"""

import argparse
import statistics
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import benchlib as B  # noqa: E402
import peers as P  # noqa: E402

PLAIN_PORT = 8100
TLS_PORT = 8101


def cases(versions):
    out = [("plain", False, None, True)]
    for v in versions:
        out += [(f"tls{v} full", True, v, False), (f"tls{v} resumed", True, v, True)]
    return out


def handshakes(url, case, a, pids, fmt=None):
    """One `loadgen handshake` run; returns its figures."""
    name, tls, version, resume = case
    srcs, _ = B.sources_for(a.conns * 4000)
    args = ["handshake", "--url", url, "--conns", str(a.conns), "--duration", str(a.duration),
            "--procs", str(a.procs), "--sources", srcs, "--timeout", "10"]
    if fmt:
        args += ["--format", fmt]
    if tls:
        args += B.tls_args(None, insecure=True, resume=resume) + ["--tls-version", version]
    cpu = {}

    def on_phase(phase, _fields):
        if phase == "stopping" and "end" not in cpu:
            cpu["end"] = (time.time(), sum(B.cpu_s(p) for p in pids), B.tree_cpu_s(run.proc.pid))

    run = B.LoadgenRun(args, timeout=60 + a.duration * 2, on_phase=on_phase)
    t0, s0 = time.time(), sum(B.cpu_s(p) for p in pids)
    rep = run.run()
    res = {"case": name, "aborted": run.aborted, "machine_cpu": run.cpu_share, "loadgen": rep}
    if not rep or not rep.get("handshake"):
        return res
    h = rep["handshake"]
    t = rep.get("tls") or {}
    done = h["completed"]
    res.update({
        "per_s": h["per_s"],
        "completed": done,
        "failed": h["failed"],
        "failed_by_reason": rep["connect"]["failed_by_reason"],
        "latency_us": h["latency_us"],
        "full": t.get("full"),
        "resumed": t.get("resumed"),
        "resumed_share": round(t["resumed"] / t["handshakes"], 4) if t.get("handshakes") else None,
        "by_version": t.get("by_version"),
    })
    if "end" in cpu and done:
        t1, s1, l1 = cpu["end"]
        res["server_cpu_us_per_handshake"] = round((s1 - s0) * 1e6 / done, 1)
        res["loadgen_cpu_us_per_handshake"] = round(l1 * 1e6 / done, 1)
        res["measured_wall_s"] = round(t1 - t0, 2)
    return res


def median(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def summarize(runs):
    """Per case: the medians over its rounds."""
    out = {}
    for name, rounds in runs.items():
        out[name] = {
            "rounds": len(rounds),
            "per_s": median([r.get("per_s") for r in rounds]),
            "latency_p50_us": median([(r.get("latency_us") or {}).get("p50") for r in rounds]),
            "latency_p99_us": median([(r.get("latency_us") or {}).get("p99") for r in rounds]),
            "resumed_share": median([r.get("resumed_share") for r in rounds]),
            "server_cpu_us_per_handshake": median(
                [r.get("server_cpu_us_per_handshake") for r in rounds]),
            "loadgen_cpu_us_per_handshake": median(
                [r.get("loadgen_cpu_us_per_handshake") for r in rounds]),
            "failed": sum(r.get("failed") or 0 for r in rounds),
        }
    return out


def rows(server, summary):
    base = summary.get("plain") or {}

    def ratio(v, b):
        return f" (x{v / b:.2f})" if v is not None and b else ""

    out = []
    for name, m in summary.items():
        rate, cpu = m["per_s"], m["server_cpu_us_per_handshake"]
        out.append([
            server, name,
            "-" if rate is None else f"{rate:,.0f}/s" + ratio(rate, base.get("per_s")),
            f"{B.ms(m['latency_p50_us'])} / {B.ms(m['latency_p99_us'])}",
            "-" if m["resumed_share"] is None else f"{m['resumed_share'] * 100:.1f}%",
            "-" if cpu is None else f"{cpu:,.0f} us" + ratio(cpu, base.get("server_cpu_us_per_handshake")),
            "-" if m["loadgen_cpu_us_per_handshake"] is None
            else f"{m['loadgen_cpu_us_per_handshake']:,.0f} us",
            f"failed {m['failed']}, {m['rounds']} round(s)",
        ])
    return out


HEADER = ["server", "case", "handshakes/s (x plain)", "latency p50 / p99", "resumed",
          "server CPU / handshake (x plain)", "loadgen CPU / handshake", "note"]


def run_rounds(label, urls, a, pids, fmt=None):
    runs = {c[0]: [] for c in cases(a.versions)}
    all_cases = cases(a.versions)
    for rnd in range(a.rounds):
        order = all_cases if rnd % 2 == 0 else all_cases[::-1]
        for case in order:
            B.log(f"{label}: {case[0]}, round {rnd + 1}/{a.rounds}")
            r = handshakes(urls[case[1]], case, a, pids, fmt)
            r["round"] = rnd + 1
            runs[case[0]].append(r)
            time.sleep(1.0)  # the server finishes closing the last ones
    return runs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conns", type=int, default=64,
                    help="handshakes in flight at once (all loadgen processes together)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--procs", type=int, default=2, help="loadgen child processes")
    ap.add_argument("--versions", default="1.3,1.2", help="TLS versions measured: 1.3, 1.2")
    ap.add_argument("--cert", choices=list(B.CERT_KINDS), default="ec")
    ap.add_argument("--nginx", action="store_true", help="also nginx + nchan, for reference")
    ap.add_argument("--backend", choices=["epoll", "uring"], default="epoll")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="pushedge --set KEY=VALUE")
    a = ap.parse_args()
    a.versions = [v.strip() for v in a.versions.split(",") if v.strip()]
    if any(v not in ("1.2", "1.3") for v in a.versions) or len(set(a.versions)) != len(a.versions):
        ap.error("--versions: 1.3, 1.2 or both")
    if not 1 <= a.conns <= 10000 or not 1 <= a.procs <= min(a.conns, 16):
        ap.error("--conns 1..10000, --procs 1..min(conns, 16)")
    if not 0 < a.duration <= 120 or not 1 <= a.rounds <= 20:
        ap.error("--duration 0..120 s, --rounds 1..20")
    B.check_binaries()
    B.prepare_system(a.conns * 4000)
    cert = B.make_cert(a.cert)
    out = {"args": vars(a), "cert": a.cert, "machine": B.machine(), "results": {}}
    table = []
    sets = ["heartbeat_secs=600"] + a.set
    srv = B.start_pushedge(1, backend=a.backend, workers=a.workers or None, sets=sets,
                           tag="tls", listeners=[(PLAIN_PORT, None), (TLS_PORT, cert)])[0]
    try:
        urls = {False: f"ws://127.0.0.1:{PLAIN_PORT}/ws?channel=hs",
                True: f"wss://127.0.0.1:{TLS_PORT}/ws?channel=hs"}
        runs = run_rounds("pushedge", urls, a, [srv.pid])
        summary = summarize(runs)
        out["results"]["pushedge"] = {"runs": runs, "median": summary,
                                      "server_log_warnings": B.server_errors([srv])}
        table += rows(f"pushedge ({a.backend})", summary)
    finally:
        B.stop(srv.proc, grace=15)
    if a.nginx:
        P.ensure_nchan()
        ng = P.Nginx(tls=cert)
        try:
            urls = {False: f"ws://127.0.0.1:{P.NCHAN_PORT}/sub?id=hs",
                    True: f"wss://127.0.0.1:{P.NCHAN_TLS_PORT}/sub?id=hs"}
            runs = run_rounds("nginx", urls, a, ng.pids, fmt="raw")
            summary = summarize(runs)
            out["results"]["nginx"] = {"runs": runs, "median": summary}
            table += rows("nchan (nginx, 1 worker)", summary)
        finally:
            ng.stop()
    B.write_json(f"tls-{a.backend}.json", out)
    print(B.table(f"bench-tls: handshakes/s, {a.conns} in flight, {a.duration:g} s x "
                  f"{a.rounds} round(s), {a.cert} certificate; medians (x ratio to plain)",
                  HEADER, table, left=2))
    aborted = any(r.get("aborted") for res in out["results"].values()
                  for rounds in res["runs"].values() for r in rounds)
    return 1 if aborted else 0


if __name__ == "__main__":
    sys.exit(main())
