#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzingclient against pushedge's /echo and prints the tally.
#
#   tests/autobahn/run.sh quick|full|deflate|core [path/to/pushedge]
#
# quick: every case except group 9 (performance) and, of the permessage-deflate groups
#        12 (the default offer on five kinds of data) and 13 (every parameter combination:
#        no context takeover, server_max_window_bits=9 and 15, several offers), each
#        subgroup's cases 1-6 (1,000 messages of 16 B to 8 KiB) and 11 (8 KiB messages
#        fragmented into 256-byte frames): 84 of the 216 deflate cases, every offer and
#        data kind, whole and fragmented compressed messages, windows of 9 and 15 bits.
#        Cases 7-10 and 12-18 (16-128 KiB messages, 1,000 each) take most of the time,
#        nearly all of it in wstest itself (Python 2 compressing and masking): the full
#        profile took 21 minutes on 2 cores (release build, both backends at once).
#        quick runs 331 cases in about 2.5 minutes per backend on 2 cores against the debug
#        build (2m36s measured, with a build running alongside; 10 s before deflate), so
#        `make test`, which runs it on both backends, grows by about 5 minutes.
# deflate: groups 12 and 13 alone.
# core:  every case of groups 1-7, 9 (performance: up to 16 MB messages) and 10, without
#        permessage-deflate.
# full:  every case. Exit status 0 only when every case is OK, except the cases that
#        Autobahn itself rates INFORMATIONAL (7.1.6, 7.13.x).
# PUSHEDGE_BACKEND=epoll|uring selects the server's backend.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
profile="${1:-quick}"
bin="${2:-$root/target/debug/pushedge}"
work="$root/target/autobahn"
venv="$work/venv"
mkdir -p "$work"

python2=""
for cand in "$(pyenv root 2>/dev/null)/versions/2.7.18/bin/python" "$(command -v python2.7 || true)"; do
  if [ -n "$cand" ] && [ -x "$cand" ]; then python2="$cand"; break; fi
done
if [ ! -x "$venv/bin/wstest" ]; then
  [ -n "$python2" ] || { echo "autobahn: Python 2.7 not found (pyenv 2.7.18 or python2.7)" >&2; exit 1; }
  echo "autobahn: installing autobahntestsuite==25.10.1 into $venv"
  rm -rf "$venv" "$work/virtualenv"
  "$python2" -m pip install -q --disable-pip-version-check --target "$work/virtualenv" "virtualenv<20.22" 2>&1 | grep -v DEPRECATION || true
  PYTHONPATH="$work/virtualenv" "$python2" -m virtualenv -q "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check autobahntestsuite==25.10.1 2>&1 | grep -v DEPRECATION || true
fi
[ -x "$bin" ] || { echo "autobahn: $bin not built" >&2; exit 1; }

case "$profile" in
  quick) cases='["*"]'
    # (Autobahn's patterns know only `*`, matched as a prefix: the cases are listed.)
    exclude='["9.*"'
    for g in 12.1 12.2 12.3 12.4 12.5 13.1 13.2 13.3 13.4 13.5 13.6 13.7; do
      for i in 7 8 9 10 12 13 14 15 16 17 18; do exclude+=", \"$g.$i\""; done
    done
    exclude+=']' ;;
  deflate) cases='["12.*", "13.*"]'; exclude='[]' ;;
  core) cases='["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"]'; exclude='[]' ;;
  full) cases='["*"]'; exclude='[]' ;;
  *) echo "usage: $0 quick|full|deflate|core [pushedge]" >&2; exit 2 ;;
esac

backend_args=()
[ -n "${PUSHEDGE_BACKEND:-}" ] && backend_args=(--backend "$PUSHEDGE_BACKEND")
# Files per profile and backend, so that the two backends can run at once.
run="$profile${PUSHEDGE_BACKEND:+-$PUSHEDGE_BACKEND}"
log="$work/server-$run.log"
sock="$work/autobahn-$$.sock"
"$bin" serve --listen 127.0.0.1:0 --admin 127.0.0.1:0 --control "$sock" "${backend_args[@]}" \
  --set ws_echo=true --set max_message_bytes=20000000 --set slow_consumer_bytes=200000000 \
  >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
addr=""
for _ in $(seq 100); do
  addr="$(sed -n 's/.*ready: .* subscriber=\([^ ]*\) .*/\1/p' "$log" | head -n1)"
  [ -n "$addr" ] && break
  kill -0 $server 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { echo "autobahn: server did not start" >&2; cat "$log" >&2; exit 1; }

reports="$work/reports-$run"
rm -rf "$reports"
cat >"$work/spec-$run.json" <<JSON
{"outdir": "$reports", "servers": [{"agent": "pushedge", "url": "ws://$addr/echo"}],
 "cases": $cases, "exclude-cases": $exclude, "exclude-agent-cases": {}}
JSON
echo "autobahn: $profile profile against ws://$addr/echo (${PUSHEDGE_BACKEND:-default} backend)"
(cd "$work" && timeout 5400 "$venv/bin/wstest" -m fuzzingclient -s "$work/spec-$run.json" >"$work/wstest-$run.log" 2>&1) || {
  echo "autobahn: wstest failed" >&2; tail -20 "$work/wstest-$run.log" >&2; exit 1; }
if ! grep -q '"pushedge"' "$reports/index.json" 2>/dev/null; then
  echo "autobahn: wstest ran no case against pushedge; its log and the server's:" >&2
  tail -30 "$work/wstest-$run.log" >&2; tail -20 "$log" >&2; exit 1
fi
python3 "$here/tally.py" "$reports/index.json"
