#!/usr/bin/env bash
# A local cluster for trying pushedge out: redis-server on REDIS_PORT (default 6379) and
# two pushedge nodes sharing the subscriber port 8100 (SO_REUSEPORT), with admin ports
# 8000 and 8001 and control sockets ./pushedge-1.sock and ./pushedge-2.sock.
# Ctrl-C stops everything.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
port="${1:-6379}"
backend="${2:-epoll}"
bin="$root/target/release/pushedge"
work="$root/target/run-cluster"
mkdir -p "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM
if redis-cli -p "$port" ping >/dev/null 2>&1; then
  echo "using the redis-server already on port $port"
else
  redis-server --port "$port" --bind 127.0.0.1 --dir "$work" --appendonly yes \
    --save "" --daemonize no >"$work/redis.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  echo "redis-server on 127.0.0.1:$port (AOF in $work)"
fi
for n in 1 2; do
  "$bin" serve --backend "$backend" --listen 0.0.0.0:8100 --admin "127.0.0.1:800$((n - 1))" \
    --control "./pushedge-$n.sock" --set "cluster.redis_url=redis://127.0.0.1:$port" \
    --set "cluster.node_id=node-$n" &
  pids+=($!)
done
cat <<MSG
two nodes on :8100 (admin :8000 and :8001). Try:
  curl -N 'http://127.0.0.1:8100/sse?channel=news'            # lands on either node
  curl -X POST 'http://127.0.0.1:8001/pub?channel=news' -d hi  # publish through node 2
  curl 'http://127.0.0.1:8000/info?channel=news'               # subscribers across the cluster
MSG
wait -n "${pids[@]}"
