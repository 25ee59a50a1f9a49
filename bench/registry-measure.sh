#!/usr/bin/env bash
# Run by bench/registry-cpu.sh inside `cluster exec`: the same loadgen shape
# through HAProxy (--url) and direct (--registry), alternating, REPEATS
# times; one JSON line per part in $OUT/parts.jsonl.
set -euo pipefail
tck=$(getconf CLK_TCK)
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' /proc/$p/stat))); done; echo $t; }
# HAProxy: every process of every instance (master and workers).
hap_pids() {
  local p out=""
  for p in ${CLUSTER_HAPROXY_PIDS:-$CLUSTER_HAPROXY_PID}; do
    out="$out $p $(pgrep -P "$p" 2>/dev/null | tr '\n' ' ')"
  done
  echo $out | tr ' ' '\n' | sort -u | tr '\n' ' '
}
metric() { local s=0 v a; for a in $CLUSTER_SERVER_ADDRS; do v=$(curl -s "http://$a/metrics" | awk -v m="$1" 'index($0, m"{") == 1 || index($0, m" ") == 1 {s += $2} END {print s + 0}'); s=$((s + ${v%.*})); done; echo $s; }
haproxy=${CHAT_URL#ws://}; haproxy=${haproxy%%/*}
registry="http://$haproxy/connect"
first=${CLUSTER_SERVER_ADDRS%% *}
n=$(echo $CLUSTER_SERVER_ADDRS | wc -w)
HAP=$(hap_pids)
echo "servers: $CLUSTER_SERVER_PIDS; haproxy: $HAP; redis: $CLUSTER_REDIS_PID; registry: $registry" >&2
# An instance is listed healthy from its second heartbeat (2 s): wait.
for _ in $(seq 150); do
  [ "$(curl -s "http://$first/cluster" | grep -o '"healthy":true' | wc -l)" -ge "$n" ] && break
  sleep 0.1
done
: >"$OUT/parts.jsonl"

part() { # part NAME REP
  local name=$1 rep=$2 how
  if [ "$name" = direct ]; then how=(--registry "$registry"); else how=(--url "$CHAT_URL"); fi
  target/release/loadgen "${how[@]}" --clients "$MEMBERS" --rooms 1 --senders "$SENDERS" --rate "$RATE" \
    --duration "$DURATION" --ramp 2000 --size 64 --quiet --json "$OUT/$name-$rep.json" >"$OUT/$name-$rep.log" 2>&1 &
  local lg=$!
  for _ in $(seq 600); do [ "$(metric chat_connections)" -ge "$MEMBERS" ] && break; sleep 0.1; done
  sleep 2   # the presence fan-out of the ramp settles
  local s0 h0 r0 d0 t0 s1 h1 r1 d1 t1 prev=-1 d
  s0=$(ticks $CLUSTER_SERVER_PIDS); h0=$(ticks $HAP); r0=$(ticks $CLUSTER_REDIS_PID)
  d0=$(metric chat_messages_out_total); t0=$(date +%s.%N)
  while :; do
    sleep 1
    d=$(metric chat_messages_out_total)
    if [ "$d" -gt "$d0" ] && [ "$d" = "$prev" ]; then break; fi
    prev=$d
    kill -0 $lg 2>/dev/null || break
  done
  s1=$(ticks $CLUSTER_SERVER_PIDS); h1=$(ticks $HAP); r1=$(ticks $CLUSTER_REDIS_PID)
  d1=$(metric chat_messages_out_total); t1=$(date +%s.%N)
  wait $lg || echo "loadgen $name $rep exited non-zero (see $OUT/$name-$rep.log)" >&2
  # Every socket closed before the next part starts.
  for _ in $(seq 300); do [ "$(metric chat_connections)" -eq 0 ] && break; sleep 0.1; done
  python3 - "$OUT/$name-$rep.json" <<PY >>"$OUT/parts.jsonl"
import json, sys
r = json.load(open(sys.argv[1]))
us = lambda a, b: (b - a) * 1e6 / $tck
row = {"part": "$name", "rep": $rep, "secs": $t1 - $t0, "deliveries": $d1 - $d0,
       "servers_us": us($s0, $s1), "haproxy_us": us($h0, $h1), "redis_us": us($r0, $r1),
       "lost": r["deliveries"]["lost"], "received": r["deliveries"]["received"],
       "direct_conns": (r.get("registry") or {}).get("connects_direct", 0),
       "per_app_id": r["connections"]["per_app_id"],
       "p99_us": r["latency_us"]["p99"]}
row["total_us"] = row["servers_us"] + row["haproxy_us"] + row["redis_us"]
print(json.dumps(row))
PY
  tail -1 "$OUT/parts.jsonl" >&2
}

for rep in $(seq "$REPEATS"); do
  # Alternate which goes first, so a drift over the run hits both alike.
  if [ $((rep % 2)) = 1 ]; then part proxied "$rep"; part direct "$rep"
  else part direct "$rep"; part proxied "$rep"; fi
done
