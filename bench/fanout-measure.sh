#!/usr/bin/env bash
# Run by bench/fanout-cpu.sh inside `cluster exec`.
set -euo pipefail
tck=$(getconf CLK_TCK)
cpu_ticks() { local t=0; for p in $CLUSTER_SERVER_PIDS; do t=$((t + $(awk '{print $14 + $15}' /proc/$p/stat))); done; echo $t; }
metric() { local s=0 v; for a in $CLUSTER_SERVER_ADDRS; do v=$(curl -s "http://$a/metrics" | grep "^$1{" | awk '{print $2}'); s=$((s + ${v:-0})); done; echo $s; }
out=$(mktemp -d)
target/release/loadgen --url "$CHAT_URL" --clients "$MEMBERS" --rooms 1 --senders "$SENDERS" --rate "$RATE" \
  --duration "$DURATION" --ramp 2000 --size 64 --quiet --json "$out/report.json" >"$out/loadgen.log" 2>&1 &
lg=$!
for _ in $(seq 600); do [ "$(metric chat_connections)" -ge "$MEMBERS" ] && break; sleep 0.1; done
sleep 2   # presence fan-out of the ramp settles
if [ -n "${PERF:-}" ]; then
  perf record -q -e cpu-clock -F 2000 -g -p "${CLUSTER_SERVER_PIDS%% *}" -o "${PERF}" -- sleep 5 >/dev/null 2>&1 &
fi
if [ -n "${STRACE:-}" ]; then
  timeout -s INT 4 strace -c -f -p "${CLUSTER_SERVER_PIDS%% *}" -o "${STRACE}" >/dev/null 2>&1 &
fi
c0=$(cpu_ticks); d0=$(metric chat_messages_out_total); f0=$(metric chat_ws_flushes_total); t0=$(date +%s.%N)
prev=-1
while :; do
  sleep 1
  d=$(metric chat_messages_out_total)
  if [ "$d" -gt "$d0" ] && [ "$d" = "$prev" ]; then break; fi
  prev=$d
  kill -0 $lg 2>/dev/null || break
done
c1=$(cpu_ticks); d1=$(metric chat_messages_out_total); f1=$(metric chat_ws_flushes_total); t1=$(date +%s.%N)
wait $lg || true
hap=$(awk '{print $14 + $15}' /proc/$CLUSTER_HAPROXY_PID/stat 2>/dev/null || echo 0)
python3 - "$out/report.json" <<PY
import json, sys
r = json.load(open(sys.argv[1]))
cpu_us = ($c1 - $c0) * 1e6 / $tck
deliv = $d1 - $d0
flushes = max($f1 - $f0, 1)
secs = $t1 - $t0
lat = r.get("latency_us") or r.get("latency", {})
def pick(*keys):
    for k in keys:
        v = lat.get(k) if isinstance(lat, dict) else None
        if v is not None: return v
    return None
print(f"rate={$RATE}/s members={$MEMBERS} window={secs:.1f}s deliveries={deliv} "
      f"deliveries_per_s={deliv/secs:.0f} frames_per_write={deliv/flushes:.2f}")
print(f"ticks {$c0}->{$c1} tck={$tck}")
print(f"server_cpu_us={cpu_us:.0f} server_cpu_us_per_delivery={cpu_us/max(deliv,1):.3f}")
print("loadgen latency (us):", json.dumps(lat)[:400])
d = r.get("deliveries", {})
print("loadgen deliveries:", json.dumps(d)[:300])
PY
