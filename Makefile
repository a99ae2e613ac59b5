# pushedge — see README.md. Every target works from a clean checkout.
SHELL := /bin/bash
CARGO ?= cargo
FUZZ_SECS ?= 60
ARGS ?=
BACKEND ?= epoll
REDIS_PORT ?= 6379

.PHONY: run run-cluster test build release lint fmt bench fuzz fuzz-build fuzz-deps deps-test deps-redis conformance
.PHONY: test-socketio deps-socketio test-web deps-tools
.PHONY: bench-build bench-scale bench-fanout bench-peers bench-backends bench-cluster bench-floor bench-tls bench-store

## run: build (release) and start the server on embedded defaults (BACKEND=uring for io_uring)
run: release
	./target/release/pushedge serve --backend $(BACKEND) $(ARGS)

## demo: build (release) and start the server with the demo chat at http://127.0.0.1:8100/demo
## (clients publish to, and list who is on, the chat.* rooms; no auth: a local demo, not a production setup)
.PHONY: demo
demo: release
	@echo "demo chat: http://127.0.0.1:8100/demo"
	./target/release/pushedge serve --set demo=true --set 'client_publish=["chat.*"]' --set 'presence=["chat.*"]' --set presence_public=true $(ARGS)

## run-cluster: a local redis-server and two nodes sharing the subscriber port 8100
## (admin ports 8000 and 8001, control sockets pushedge-1.sock and pushedge-2.sock)
run-cluster: release deps-redis
	bash tests/cluster/run-cluster.sh $(REDIS_PORT) $(BACKEND)

build:
	$(CARGO) build --workspace --all-targets

release:
	$(CARGO) build --release -p pushedge

## install-check: `cargo install --path engine` and `--path loadgen` into a scratch folder,
## then run the installed binaries (not in `make test`: the release profile's fat-LTO link
## takes minutes). INSTALL_FLAGS="--locked --offline" when the crates are already fetched.
INSTALL_FLAGS ?= --locked
.PHONY: install-check
install-check:
	@root=$$(mktemp -d); trap 'rm -rf "$$root"' EXIT; set -e; \
	$(CARGO) install --path engine --root "$$root" $(INSTALL_FLAGS); \
	$(CARGO) install --path loadgen --root "$$root" $(INSTALL_FLAGS); \
	"$$root/bin/pushedge" --version; "$$root/bin/loadgen" --version; \
	"$$root/bin/pushedge" completions bash > /dev/null; \
	echo "install-check: pushedge and loadgen install and run"

## test: install what the tests need, then run every test (unit, property, integration,
## cluster with a real redis-server, the quick Autobahn profile, the Socket.IO clients),
## against both reactor backends (epoll and io_uring), and the browser tests (Chromium).
## The client tests use the binary the workspace build made (no second build).
test: deps-test
	$(CARGO) build --workspace --all-targets
	$(CARGO) test --workspace
	PUSHEDGE_BACKEND=uring $(CARGO) test -p pushedge-tests
	bash tests/autobahn/run.sh quick target/debug/pushedge
	PUSHEDGE_BACKEND=uring bash tests/autobahn/run.sh quick target/debug/pushedge
	$(MAKE) test-socketio PUSHEDGE_BIN=$(CURDIR)/target/debug/pushedge
	PUSHEDGE_BACKEND=uring $(MAKE) test-socketio SOCKETIO_PYTHON= PUSHEDGE_BIN=$(CURDIR)/target/debug/pushedge
	$(MAKE) test-web PUSHEDGE_BIN=$(CURDIR)/target/debug/pushedge

## deps-test: what the tests need beyond cargo (redis-server for the cluster tests;
## node packages, python-socketio and chromium for the Socket.IO tests)
deps-test: deps-redis deps-socketio deps-tools

## deps-tools: curl and openssl (the TLS tests use both as real clients / certificate tools)
deps-tools:
	@command -v curl >/dev/null && command -v openssl >/dev/null || { \
	  echo "installing curl and openssl"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl openssl; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl openssl; fi; }

deps-redis:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; fi; }

## test-socketio: the Socket.IO end-to-end tests with real third-party clients (tests/socketio):
## socket.io-client 4.x on node, the socket.io.min.js bundle in headless Chromium, raw
## HTTP/WebSocket bad input (node --test, one file at a time), then python-socketio.
##   [PUSHEDGE_BACKEND=uring] make test-socketio [PUSHEDGE_BIN=...] [SOCKETIO_FILES="acks.test.mjs ..."]
##   SOCKETIO_PYTHON= skips the python-socketio part
SOCKETIO_FILES ?= *.test.mjs
SOCKETIO_PYTHON ?= yes
SOCKETIO_BIN = $(abspath $(or $(PUSHEDGE_BIN),target/debug/pushedge))
PYTHON ?= python3
test-socketio: deps-socketio
	@if [ -z "$(PUSHEDGE_BIN)" ]; then $(CARGO) build -p pushedge; fi
	cd tests/socketio && PUSHEDGE_BIN=$(SOCKETIO_BIN) node --test --test-concurrency=1 --test-timeout=60000 $(SOCKETIO_FILES)
	@if [ -n "$(SOCKETIO_PYTHON)" ]; then \
	  echo "PUSHEDGE_BIN=$(SOCKETIO_BIN) $(PYTHON) tests/socketio/test_python.py"; \
	  PUSHEDGE_BIN=$(SOCKETIO_BIN) $(PYTHON) tests/socketio/test_python.py; \
	fi

## test-web: the browser-facing end-to-end tests (tests/web/*.test.mjs: the admin dashboard,
## /events and /metrics, ...), node --test one file at a time, headless Chromium; they reuse
## the harness and node packages of tests/socketio. The dashboard test writes docs/dashboard.png.
##   [PUSHEDGE_BACKEND=uring] make test-web [PUSHEDGE_BIN=...] [WEB_FILES="dashboard.test.mjs ..."]
WEB_FILES ?= *.test.mjs
test-web: deps-socketio
	@if [ -z "$(PUSHEDGE_BIN)" ]; then $(CARGO) build -p pushedge; fi
	cd tests/web && PUSHEDGE_BIN=$(SOCKETIO_BIN) node --test --test-concurrency=1 --test-timeout=120000 $(WEB_FILES)

## deps-socketio: what tests/socketio needs, each installed only when missing: the node
## packages of tests/socketio/package-lock.json (npm ci), python-socketio[client],
## websocket-client, requests and websockets (pip; websockets for tests/integration/deflate.rs), and Debian's chromium (apt-get, with sudo when not root)
deps-socketio:
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  echo "deps-socketio: node (>= 20) and npm are needed and not installed"; exit 1; }
	@if [ ! -f tests/socketio/node_modules/.package-lock.json ] || \
	    [ tests/socketio/package-lock.json -nt tests/socketio/node_modules/.package-lock.json ]; then \
	  echo "installing the node packages of tests/socketio (socket.io-client, engine.io-client, ws, playwright-core): npm ci"; \
	  cd tests/socketio && npm ci --no-audit --no-fund; fi
	@$(PYTHON) -c "import socketio, websocket, requests, websockets" 2>/dev/null || { \
	  echo "installing python-socketio[client], websocket-client, requests and websockets (pip)"; \
	  $(PYTHON) -m pip install --quiet "python-socketio[client]" websocket-client requests websockets; }
	@[ -x /usr/bin/chromium ] || { \
	  echo "installing chromium (apt-get) for the headless browser test"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; fi; }

## conformance: the whole Autobahn|Testsuite (groups 1-13) against a release build
conformance: release
	bash tests/autobahn/run.sh full target/release/pushedge

## lint: clippy with warnings as errors, and rustfmt
lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) fmt --all -- --check

fmt:
	$(CARGO) fmt --all

## bench: criterion benches of the codecs and hot paths
bench:
	$(CARGO) bench -p pushedge-bench

## bench-*: side-by-side benchmarks (bench/*.py; python3, root for sysctl). Each prints a
## table and writes JSON under target/bench/; every process it starts is stopped at the end.
##   make bench-scale CONNS=100000 [BACKEND=epoll|uring] [TRANSPORT=ws|sse|stream|poll|socketio]
##                    [SET="uring_arm=recv ..."] [BENCH_ARGS="--workers 8 --per-proc 15000"]
##                    [TLS=1]                     ... plain, then over TLS (test certificate), side by side
##   make bench-fanout [BACKEND=...] [SET=...]   fan-out latency, CPU per delivery, publishes/s
##                    [TRANSPORT=socketio]        ... over ws and socketio, interleaved, with
##                    [TRANSPORTS=ws,socketio]    the ratios socketio/ws (BENCH_ARGS="--rounds 3")
##                    [TRANSPORTS=ws,wss]         ... WebSocket over TLS against plain
##   make bench-peers [TLS=1]                    pushedge vs nchan (installs nginx + nchan with apt);
##                                               TLS=1: also both over TLS (nginx listen ... ssl)
##   make bench-tls [BACKEND=...] [SET=...]      handshakes/s plain, TLS full, TLS resumed (bench/tls.py,
##                    [TLS_ARGS="--nginx ..."]    --nginx: nchan too), then fan-out to 15,000 ws vs wss
##   make bench-backends                         epoll vs io_uring (POLL_ADD, RECV, no direct fds)
##   make bench-cluster CONNS=N [NODES=K] [BACKEND=...] [SET=...] [BENCH_ARGS="--channels C ..."]
##                    redis-server + K nodes on one port: fan-out to N subscribers through Redis
##   make bench-store [BACKEND=...] [BENCH_ARGS="--rounds 5 --messages 500000 --fsync"]
##                    pipelined publishes/s with history_store = disk against memory,
##                    interleaved rounds, medians and their ratio (bench/store.py)
##   make bench-floor [PUSHEDGE_BIN=...] [BENCH_ARGS="--rounds 15 ..."]
##                    fan-out to 15,000 against the machine's floor (a bare sender, same reader),
##                    epoll then uring: bare p50, pushedge p50, ratio (bench/src/bin/floor)
CONNS ?= 100000
BACKEND ?= epoll
TRANSPORT ?= ws
SET ?=
NODES ?=
BENCH_ARGS ?=
BENCH_SETS = $(foreach s,$(SET),--set $(s))
# TLS=1: bench-scale and bench-peers measure over TLS too (a test certificate, openssl CLI).
TLS ?=
TLS_FLAG = $(if $(filter 1 yes true,$(TLS)),--tls)
TLS_ARGS ?=
# bench-fanout: TRANSPORTS as given, else ws alone, or ws then TRANSPORT (compared to ws).
TRANSPORTS ?=
comma := ,
FANOUT_TRANSPORTS = $(or $(TRANSPORTS),$(if $(filter ws,$(TRANSPORT)),ws,ws$(comma)$(TRANSPORT)))

bench-build:
	$(CARGO) build --release -p pushedge -p loadgen

bench-scale: bench-build
	python3 bench/scale.py --conns $(CONNS) --backend $(BACKEND) --transport $(TRANSPORT) $(TLS_FLAG) $(BENCH_SETS) $(BENCH_ARGS)

bench-fanout: bench-build
	python3 bench/fanout.py --backend $(BACKEND) --transports $(FANOUT_TRANSPORTS) $(BENCH_SETS) $(BENCH_ARGS)

bench-peers: bench-build
	python3 bench/peers.py --backend $(BACKEND) $(TLS_FLAG) $(BENCH_SETS) $(BENCH_ARGS)

bench-tls: bench-build
	python3 bench/tls.py --backend $(BACKEND) $(BENCH_SETS) $(TLS_ARGS)
	python3 bench/fanout.py --backend $(BACKEND) --transports ws,wss --scenarios one_channel,many_channels $(BENCH_SETS) $(BENCH_ARGS)

bench-backends: bench-build
	bash bench/backends.sh $(BENCH_ARGS)

bench-cluster: bench-build
	python3 bench/cluster.py --conns $(CONNS) $(if $(NODES),--nodes $(NODES)) --backend $(BACKEND) $(BENCH_SETS) $(BENCH_ARGS)

bench-store: bench-build
	python3 bench/store.py --backend $(BACKEND) $(BENCH_ARGS)

bench-floor: bench-build
	$(CARGO) build --release -p pushedge-bench --bin floor
	@set -eo pipefail; sum=$$(mktemp); trap 'rm -f "$$sum"' EXIT; \
	for b in epoll uring; do \
	  ./target/release/floor --backend $$b --pushedge "$(or $(PUSHEDGE_BIN),target/release/pushedge)" \
	    $(BENCH_ARGS) | tee -a "$$sum"; echo; \
	done; \
	grep -E '^(epoll|uring): bare p50' "$$sum"

## fuzz: run each fuzz target for FUZZ_SECS seconds (cargo-fuzz on the nightly toolchain)
## and print one summary line per target; fails if any target crashed.
## Corpora grow in fuzz/corpus/<t> (seeded from fuzz/seeds/<t>), crashes land in
## fuzz/artifacts/<t>, full logs in fuzz/target/logs/<t>.log. One target: FUZZ_TARGETS=query
FUZZ_CARGO ?= cargo +nightly
FUZZ_TARGETS ?= http_head ws_decoder sse_cursor query socketio deflate proxy
FUZZ_FLAGS ?= -rss_limit_mb=2048 -max_len=8192 -timeout=10
fuzz: fuzz-build
	@fail=0; \
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t fuzz/artifacts/$$t fuzz/target/logs; \
	  log=fuzz/target/logs/$$t.log; \
	  dict=; if [ -f fuzz/dict/$$t.dict ]; then dict=-dict=fuzz/dict/$$t.dict; fi; \
	  before=$$(ls fuzz/artifacts/$$t | grep -cE '^(crash|oom|timeout|leak)-'); \
	  start=$$(date +%s); \
	  $(FUZZ_CARGO) fuzz run $$t fuzz/corpus/$$t fuzz/seeds/$$t -- \
	    -max_total_time=$(FUZZ_SECS) $(FUZZ_FLAGS) $$dict >$$log 2>&1; rc=$$?; \
	  secs=$$(( $$(date +%s) - start )); \
	  after=$$(ls fuzz/artifacts/$$t | grep -cE '^(crash|oom|timeout|leak)-'); \
	  crashes=$$(( after - before )); \
	  if [ $$rc -ne 0 ] && [ $$crashes -eq 0 ]; then crashes=1; fi; \
	  execs=$$(grep -aoE '^#[0-9]+[[:space:]]+DONE' $$log | grep -oE '[0-9]+' | tail -n1); \
	  [ -n "$$execs" ] || execs=$$(grep -aoE '^#[0-9]+' $$log | tr -d '#' | tail -n1); \
	  corp=$$(grep -aoE 'corp: [0-9]+' $$log | tail -n1 | grep -oE '[0-9]+'); \
	  printf 'fuzz %-11s %5s s  %12s execs  corpus %5s  crashes %s\n' \
	    $$t $$secs "$${execs:-?}" "$${corp:-?}" $$crashes; \
	  if [ $$crashes -ne 0 ]; then \
	    fail=1; grep -aE 'panicked|ERROR|SUMMARY|Test unit written' $$log | head -n 8 | sed 's/^/    /'; \
	  fi; \
	done; \
	exit $$fail

## fuzz-build: build every fuzz target (installs the nightly toolchain and cargo-fuzz when missing)
fuzz-build: fuzz-deps
	$(FUZZ_CARGO) fuzz build

fuzz-deps:
	@rustup run nightly cargo --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
	@$(FUZZ_CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
