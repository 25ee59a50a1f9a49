#!/usr/bin/env bash
# Server RSS per idle connection: one redis-server, one chat server, and
# loadgen holding N idle WebSockets straight to it (loopback only).
# Prints RSS before, at N connections, and the difference per connection.
# Usage: bench/rss-per-conn.sh [N=10000] [extra server args...]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}; shift || true
BIN=target/release
[ -x $BIN/server ] && [ -x $BIN/loadgen ] || cargo build --release -p chat-server -p loadgen
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RP=$(port); SP=$(port)
tmp=$(mktemp -d)
redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly no >"$tmp/redis.log" 2>&1 &
RPID=$!
trap 'kill $RPID ${SPID:-} ${LPID:-} 2>/dev/null || true' EXIT
sleep 0.3
RUST_LOG=warn $BIN/server --listen 127.0.0.1:$SP --app-id bench1 --redis-url redis://127.0.0.1:$RP/ \
  --max-connections 19000 "$@" >"$tmp/server.log" 2>&1 &
SPID=$!
for _ in $(seq 100); do curl -sf "127.0.0.1:$SP/healthz" >/dev/null && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print $2}' /proc/$SPID/status; }
conns() { curl -s "127.0.0.1:$SP/metrics" | awk '/^chat_connections\{/ {print $2}'; }
before=$(rss)
$BIN/loadgen --url "ws://127.0.0.1:$SP/ws" --clients "$N" --rooms $((N / 100)) --senders 1 --rate 1 \
  --duration 40s --ramp 4000 --quiet --json "$tmp/lg.json" >"$tmp/loadgen.log" 2>&1 &
LPID=$!
for _ in $(seq 600); do [ "$(conns)" = "$N" ] && break; sleep 0.1; done
sleep 3   # let the ramp's transient allocations settle
at=$(rss); c=$(conns)
echo "connections=$c rss_before_kib=$before rss_at_n_kib=$at"
awk -v a="$at" -v b="$before" -v n="$c" 'BEGIN { printf "rss_per_connection_bytes=%.0f\n", (a-b)*1024/n }'
kill $LPID 2>/dev/null || true
