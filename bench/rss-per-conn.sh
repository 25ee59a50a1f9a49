#!/usr/bin/env bash
# Server RSS per idle connection: one redis-server, one chat server, and
# loadgen holding N idle WebSockets straight to it (loopback only).
# Prints RSS before, at N connections, and the difference per connection,
# and beside it the kernel's TCP memory (/proc/net/sockstat `mem`, in pages,
# for every socket on the machine: both ends of each loopback connection).
# Usage: bench/rss-per-conn.sh [N=10000] [extra server args...]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}; shift || true
BIN=${BIN:-target/release}   # override to compare builds
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
tcpmem() { awk '/^TCP:/ {for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat; }
# Kernel memory of TCP sockets themselves (not RSS): slab objects x size.
tcpslab() { awk '$1 == "TCP" {print $2 * $4}' /proc/slabinfo 2>/dev/null || echo 0; }
before=$(rss); tcp_before=$(tcpmem); slab_before=$(tcpslab)
$BIN/loadgen --url "ws://127.0.0.1:$SP/ws" --clients "$N" --rooms $((N / 100)) --senders 1 --rate 1 \
  --duration 40s --ramp 4000 --quiet --json "$tmp/lg.json" >"$tmp/loadgen.log" 2>&1 &
LPID=$!
for _ in $(seq 600); do [ "$(conns)" = "$N" ] && break; sleep 0.1; done
sleep 3   # let the ramp's transient allocations settle
at=$(rss); c=$(conns); tcp_at=$(tcpmem); slab_at=$(tcpslab)
echo "connections=$c rss_before_kib=$before rss_at_n_kib=$at"
awk -v a="$at" -v b="$before" -v n="$c" 'BEGIN { printf "rss_per_connection_bytes=%.0f\n", (a-b)*1024/n }'
echo "sockstat_tcp_mem_pages before=$tcp_before at_n=$tcp_at"
# (At N, not a difference: idle sockets hold almost no buffer pages, and
# what earlier runs' closing sockets held comes and goes meanwhile.)
awk -v a="$tcp_at" -v n="$c" -v pg="$(getconf PAGESIZE)" \
  'BEGIN { printf "kernel_tcp_mem_at_n_per_connection_bytes=%.0f (both ends, all sockets)\n", a*pg/n }'
[ -z "$slab_at" ] || awk -v a="$slab_at" -v b="$slab_before" -v n="$c" \
  'BEGIN { printf "kernel_tcp_slab_per_connection_bytes=%.0f (both ends)\n", (a-b)/n }'
kill $LPID 2>/dev/null || true
