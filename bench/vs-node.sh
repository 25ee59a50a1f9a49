#!/usr/bin/env bash
# Same-run comparison with the published Node.js design (ws + redis; see
# loadgen/scripts/node-chat): two Node instances and two of our servers on
# one redis-server, the same load from loadgen against each in turn
# (MEMBERS sockets in one room spread over both instances, 10 senders,
# RATE msg/s, 10 s), and for each: server CPU per delivery, fan-out
# latency, and server RSS per connection with the sockets held.
# Needs node and npm. Loopback only.
# Usage: bench/vs-node.sh [MEMBERS=1000] [RATE=20]
set -euo pipefail
cd "$(dirname "$0")/.."
MEMBERS=${1:-1000}; RATE=${2:-20}
B=target/release
[ -x $B/server ] && [ -x $B/loadgen ] || cargo build --release -p chat-server -p loadgen
(cd loadgen/scripts/node-chat && [ -d node_modules ] || npm install --silent --no-audit --no-fund)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tmp=$(mktemp -d); pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT
RP=$(port)
redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly no >"$tmp/redis.log" 2>&1 & pids+=($!)
sleep 0.3
N1=$(port); N2=$(port); S1=$(port); S2=$(port)
for i in 1 2; do
  p=N$i
  APP_ID=node$i PORT=${!p} REDIS_URL=redis://127.0.0.1:$RP node loadgen/scripts/node-chat/server.js >"$tmp/node$i.log" 2>&1 & pids+=($!); eval "NODE$i=$!"
  p=S$i
  RUST_LOG=warn $B/server --listen 127.0.0.1:${!p} --app-id app$i --redis-url redis://127.0.0.1:$RP/ \
    --rate 100000 --burst 100000 >"$tmp/server$i.log" 2>&1 & pids+=($!); eval "SRV$i=$!"
done
sleep 1.5
ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' /proc/$p/stat))); done; echo $t; }
rss() { local t=0; for p in "$@"; do t=$((t + $(awk '/VmRSS/ {print $2}' /proc/$p/status))); done; echo $t; }
tck=$(getconf CLK_TCK)
run() { # name, pids, loadgen args...
  local name=$1 p="$2"; shift 2
  local r0 c0; r0=$(rss $p); c0=$(ticks $p)
  $B/loadgen "$@" --clients "$MEMBERS" --rooms 1 --senders 10 --rate "$RATE" --duration 10s --ramp 2000 \
    --quiet --json "$tmp/$name.json" >"$tmp/$name.out" 2>&1 &
  local lg=$!
  sleep 4   # the ramp is over: sockets held, messages flowing
  local r1; r1=$(rss $p)
  wait $lg || true
  local c1; c1=$(ticks $p)
  python3 - "$tmp/$name.json" "$name" "$c0" "$c1" "$tck" "$r0" "$r1" "$MEMBERS" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); name = sys.argv[2]
c0, c1, tck, r0, r1, n = (float(x) for x in sys.argv[3:9])
d = r["deliveries"]; lat = r.get("latency_us", {})
recv = d.get("received") or 1
print(f"{name:5} deliveries={d['received']} lost={d['lost']} dup={d['duplicated']} ooo={d['out_of_order']} "
      f"server_cpu_us_per_delivery={(c1-c0)*1e6/tck/recv:.2f} (incl. ramp) "
      f"p50={lat.get('p50')}us p99={lat.get('p99')}us rss_per_conn={(r1-r0)*1024/n:.0f}B")
PY
}
run node "$NODE1 $NODE2" --protocol raw --url ws://127.0.0.1:$N1 --url ws://127.0.0.1:$N2
run ours "$SRV1 $SRV2" --url ws://127.0.0.1:$S1/ws --url ws://127.0.0.1:$S2/ws
