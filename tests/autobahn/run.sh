#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzingclient against pushedge's /echo and prints the tally.
#
#   tests/autobahn/run.sh quick|full [path/to/pushedge]
#
# quick: every case except groups 9 (performance), 12 and 13 (permessage-deflate).
# full:  every case. Exit status 0 only when every case is OK, except the cases that
#        Autobahn itself rates INFORMATIONAL (7.1.6, 7.13.x) and, for 12.* / 13.*,
#        UNIMPLEMENTED (pushedge does not negotiate permessage-deflate).
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
  quick) cases='["*"]'; exclude='["9.*", "12.*", "13.*"]' ;;
  full) cases='["*"]'; exclude='[]' ;;
  *) echo "usage: $0 quick|full [pushedge]" >&2; exit 2 ;;
esac

backend_args=()
[ -n "${PUSHEDGE_BACKEND:-}" ] && backend_args=(--backend "$PUSHEDGE_BACKEND")
log="$work/server-$profile.log"
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

reports="$work/reports-$profile${PUSHEDGE_BACKEND:+-$PUSHEDGE_BACKEND}"
rm -rf "$reports"
cat >"$work/spec-$profile.json" <<JSON
{"outdir": "$reports", "servers": [{"agent": "pushedge", "url": "ws://$addr/echo"}],
 "cases": $cases, "exclude-cases": $exclude, "exclude-agent-cases": {}}
JSON
echo "autobahn: $profile profile against ws://$addr/echo (${PUSHEDGE_BACKEND:-default} backend)"
(cd "$work" && timeout 1800 "$venv/bin/wstest" -m fuzzingclient -s "$work/spec-$profile.json" >"$work/wstest-$profile.log" 2>&1) || {
  echo "autobahn: wstest failed" >&2; tail -20 "$work/wstest-$profile.log" >&2; exit 1; }
if ! grep -q '"pushedge"' "$reports/index.json" 2>/dev/null; then
  echo "autobahn: wstest ran no case against pushedge; its log and the server's:" >&2
  tail -30 "$work/wstest-$profile.log" >&2; tail -20 "$log" >&2; exit 1
fi
python3 "$here/tally.py" "$reports/index.json"
