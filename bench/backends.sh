#!/usr/bin/env bash
# bench-backends: epoll and io_uring side by side (issue 5). See bench/backends.py.
# Usage: bash bench/backends.sh [--only epoll|uring|uring-recv|uring-nodirect ...]
set -euo pipefail
exec python3 "$(dirname "$0")/backends.py" "$@"
