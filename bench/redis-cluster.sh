#!/usr/bin/env bash
# Redis CPU per message and deliveries/s: one Redis, a Sentinel topology
# (a master and two replicas) and a Redis Cluster (three masters, three
# replicas), same load over many rooms, in the same run. Reports each Redis
# node's CPU, so the cluster's split of the pub/sub work over its shards
# shows. Three servers behind HAProxy, started by the launcher.
#
# Usage: bench/redis-cluster.sh [rate msg/s] [duration] [rooms] [members per room]
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-3000}
duration=${2:-20s}
rooms=${3:-300}
members=${4:-4}
cargo build --release -q -p chat-server -p chat-cluster -p loadgen
out=$(mktemp -d)
echo "nproc $(nproc), $(free -g | awk '/Mem:/{print $2}') GiB, $(redis-server --version | cut -d' ' -f3), $(date -u +%FT%TZ)"
echo "load: $rooms rooms x $members members, $rooms senders, $rate msg/s for $duration"

# Runs inside `cluster exec`: CPU ticks of every Redis node before and
# after loadgen, then one line per node.
cat > "$out/inner.sh" <<'SH'
set -euo pipefail
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
IFS=, read -ra nodes <<< "$CLUSTER_REDIS_NODES"
pids=(); roles=()
for n in "${nodes[@]}"; do
  info=$(redis-cli -h "${n%:*}" -p "${n##*:}" INFO server)
  pids+=("$(echo "$info" | sed -n 's/^process_id:\([0-9]*\).*/\1/p')")
  roles+=("$(redis-cli -h "${n%:*}" -p "${n##*:}" ROLE | head -1)")
done
read -ra spids <<< "$CLUSTER_SERVER_PIDS"
calls() { redis-cli -h "${1%:*}" -p "${1##*:}" INFO commandstats | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\).*/\1/p'; }
# Idle cost first (the cluster bus gossips, replicas ping): 5 s.
idle=(); for p in "${pids[@]}"; do idle+=("$(ticks "$p")"); done
sleep 5
for i in "${!pids[@]}"; do idle[$i]=$(( $(ticks "${pids[$i]}") - ${idle[$i]} )); done
before=(); for p in "${pids[@]}"; do before+=("$(ticks "$p")"); done
cbefore=(); for n in "${nodes[@]}"; do cbefore+=("$(calls "$n")"); done
t0=$(date +%s%N)
sbefore=0; for p in "${spids[@]}"; do sbefore=$((sbefore + $(ticks "$p"))); done
hbefore=$(ticks "$CLUSTER_HAPROXY_PID")
target/release/loadgen --url "$CHAT_URL" --rooms "$ROOMS" --members "$MEMBERS" \
  --senders "$ROOMS" --rate "$RATE" --duration "$DURATION" --ramp 2000 \
  --json "$JSON" >/dev/null 2>"$JSON.log"
t1=$(date +%s%N)
for i in "${!pids[@]}"; do
  c=$(calls "${nodes[$i]}")
  echo "node ${nodes[$i]} ${roles[$i]} $(( $(ticks "${pids[$i]}") - ${before[$i]} )) ${idle[$i]} $(( ${c:-0} - ${cbefore[$i]:-0} ))"
done
echo "wall_ms $(( (t1 - t0) / 1000000 ))"
safter=0; for p in "${spids[@]}"; do safter=$((safter + $(ticks "$p"))); done
echo "servers $((safter - sbefore))"
echo "haproxy $(( $(ticks "$CLUSTER_HAPROXY_PID") - hbefore ))"
SH

hz=$(getconf CLK_TCK)
for topo in single sentinel cluster; do
  json="$out/$topo.json"
  ROOMS=$rooms MEMBERS=$members RATE=$rate DURATION=$duration JSON=$json \
    target/release/cluster exec --redis "$topo" --servers 3 --port 0 --stats-port 0 \
      --server-base-port 0 --server-arg=--rate=1000 --server-arg=--burst=2000 \
      -- bash "$out/inner.sh" > "$out/$topo.cpu" 2>"$out/$topo.err" || {
        echo "$topo: failed"; tail -20 "$out/$topo.err"; continue; }
  python3 - "$topo" "$json" "$out/$topo.cpu" "$hz" <<'PY'
import json, sys
topo, path, cpu, hz = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
r = json.load(open(path))
sent = r["sends"]["sent"] - r["sends"]["rejected"]
recv = r["deliveries"]["received"]
d = r["deliveries"]
raw, other = [], {}
for line in open(cpu):
    f = line.split()
    if f[0] == "node":
        raw.append((f[1], f[2], int(f[3]) * 1e6 / hz, int(f[4]) * 1e6 / hz, int(f[5] or 0)))
    else:
        other[f[0]] = int(f[1])
wall_s = other["wall_ms"] / 1000
# Net of the idle cost (5 s measured before the run, scaled to its length).
nodes = [(a, role, max(us - idle * wall_s / 5, 0), idle / 5, calls) for a, role, us, idle, calls in raw]
total = sum(n[2] for n in nodes)
calls_total = sum(n[4] for n in nodes) or 1
print(f"\n{topo}: {sent} messages, {recv} deliveries ({d['per_second']:.0f}/s), "
      f"lost {d['lost']} dup {d['duplicated']} ooo {d['out_of_order']}, "
      f"p50 {r['latency_us']['p50']}us p99 {r['latency_us']['p99']}us")
print(f"  Redis CPU net of idle: {total/1e6:.2f} s in {wall_s:.1f} s = {total/max(sent,1):.1f} us per message, "
      f"{total/max(recv,1):.2f} us per delivery")
print(f"    {'node':<18} {'role':<7} {'CPU s':>6} {'us/msg':>7} {'share':>6} {'publishes':>9} {'idle %core':>10}")
for addr, role, us, idle, calls in nodes:
    share = 100 * us / total if total else 0
    print(f"    {addr:<18} {role:<7} {us/1e6:6.2f} {us/max(sent,1):7.1f} {share:5.1f}% {100*calls/calls_total:8.1f}% {idle/1e4:9.1f}%")
print(f"  servers CPU {other['servers']*1e6/hz/max(recv,1):.2f} us per delivery, "
      f"HAProxy {other['haproxy']*1e6/hz/max(recv,1):.2f} us per delivery")
PY
done
echo
echo "raw output in $out"
