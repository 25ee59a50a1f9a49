#!/usr/bin/env bash
# Redis's own ceiling, without chat servers: three rooms, each with three
# subscribers (as three instances would have), and one redis-benchmark
# per room running the server's publish script flat out. First on one
# Redis (PUBLISH), then on a 3-master Redis Cluster (SPUBLISH, one room
# per master), in the same run. Reports publishes/s, deliveries/s and each
# master's CPU. On a machine with fewer cores than masters the cluster is
# bounded by cores, not by Redis: read the CPU column.
#
# Usage: bench/redis-shards.sh [requests per room] [clients per benchmark] [pipeline depth]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-300000}
conc=${2:-4}
pipe=${3:-16}
cargo build --release -q -p chat-cluster
out=$(mktemp -d)
python3 - "$out/publish.lua" <<'PY'
import re, sys
s = open("server/src/store/lua.rs").read()
get = lambda n: re.search(r"const " + n + r': &str = r#"(.*?)"#;', s, re.S).group(1)
open(sys.argv[1], "w").write(get("ENSURE") + get("APPEND") + get("PUBLISH"))
PY
echo "nproc $(nproc), $(free -g | awk '/Mem:/{print $2}') GiB, $(redis-server --version | cut -d' ' -f3), $(date -u +%FT%TZ)"
echo "3 rooms x 3 subscribers, $n publishes per room, $conc clients per room, pipeline $pipe"

cat > "$out/inner.sh" <<'SH'
set -euo pipefail
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
cli() { redis-cli -h "${1%:*}" -p "${1##*:}" "${@:2}"; }
IFS=, read -ra nodes <<< "$CLUSTER_REDIS_NODES"
first=${nodes[0]}
rooms=(); owners=()
if [ "$CLUSTER_REDIS_TOPOLOGY" = cluster ]; then
  pub=SPUBLISH; sub=ssubscribe
  # One room per master: the first bench room whose slot it serves.
  mapfile -t masters < <(cli "$first" CLUSTER NODES | awk '$3 ~ /master/ && $3 !~ /fail/ {split($2,a,"@"); print a[1]}' | sort)
  for m in "${masters[@]}"; do
    for i in $(seq 0 999); do
      r="bench$i"; slot=$(cli "$first" CLUSTER KEYSLOT "chat:{$r}:msgs")
      owner=$(cli "$first" CLUSTER NODES | awk -v s="$slot" '$3 ~ /master/ && $3 !~ /fail/ {for(k=9;k<=NF;k++){split($k,b,"-"); if(b[2]=="")b[2]=b[1]; if(s>=b[1]&&s<=b[2]){split($2,a,"@"); print a[1]}}}')
      if [ "$owner" = "$m" ] && [[ ! " ${rooms[*]} " =~ " $r " ]]; then rooms+=("$r"); owners+=("$m"); break; fi
    done
  done
else
  pub=PUBLISH; sub=subscribe
  masters=("$first"); rooms=(bench0 bench1 bench2); owners=("$first" "$first" "$first")
fi
for m in "${masters[@]}"; do cli "$m" SCRIPT LOAD "$(cat "$OUT/publish.lua")" > "$OUT/sha"; done
sha=$(cat "$OUT/sha")
subs=()
for i in "${!rooms[@]}"; do
  for k in 1 2 3; do
    o=${owners[$i]}
    redis-cli -h "${o%:*}" -p "${o##*:}" "$sub" "chat:{${rooms[$i]}}:msgs" > /dev/null & subs+=($!)
  done
done
sleep 1
pids=(); before=()
for m in "${masters[@]}"; do
  p=$(cli "$m" INFO server | sed -n 's/^process_id:\([0-9]*\).*/\1/p'); pids+=("$p"); before+=("$(ticks "$p")")
done
tail='"room":"bench","nick":"ann","text":"hello world, a chat line of ordinary length","app_id":"app1","ts":1700000000000}'
t0=$(date +%s%N)
bench=()
for i in "${!rooms[@]}"; do
  r=${rooms[$i]}; o=${owners[$i]}
  redis-benchmark -h "${o%:*}" -p "${o##*:}" -n "$N" -c "$CONC" -P "$PIPE" EVALSHA "$sha" 5 \
    "chat:{$r}:seq" "chat:{$r}:log" "chat:{$r}:epoch" "chat:{$r}:idem:3" "chat:{$r}:idem:2" \
    run-bench abcdef 1700000000000000 "$tail" 1000 "chat:{$r}:msgs" '' 240000 0 "$pub" 604800000 1048576 > "$OUT/bench$i.log" 2>&1 & bench+=($!)
done
wait "${bench[@]}"
t1=$(date +%s%N)
wall=$(( (t1 - t0) / 1000000 ))
total=0
for i in "${!rooms[@]}"; do
  c=$(cli "${owners[$i]}" GET "chat:{${rooms[$i]}}:seq")
  total=$((total + c - 1700000000000000))
done
echo "topology $CLUSTER_REDIS_TOPOLOGY rooms ${rooms[*]}"
echo "wall_ms $wall publishes $total"
for i in "${!masters[@]}"; do
  echo "master ${masters[$i]} cpu_ms $(( ($(ticks "${pids[$i]}") - ${before[$i]}) * 1000 / $(getconf CLK_TCK) ))"
done
kill "${subs[@]}" 2>/dev/null || true
SH

for topo in single cluster; do
  OUT=$out N=$n CONC=$conc PIPE=$pipe target/release/cluster exec --redis "$topo" --servers 0 \
    --port 0 --stats-port 0 -- bash "$out/inner.sh" > "$out/$topo.txt" 2>"$out/$topo.err" || {
      echo "$topo failed"; tail -20 "$out/$topo.err"; exit 1; }
  python3 - "$out/$topo.txt" <<'PY'
import sys
lines = [l.split() for l in open(sys.argv[1])]
kv = {l[0]: l for l in lines}
wall = int(kv["wall_ms"][1]) / 1000
pubs = int(kv["wall_ms"][3])
print(f"\n{' '.join(kv['topology'][1:2])}: {pubs} publishes in {wall:.1f} s = {pubs/wall:,.0f} publishes/s, "
      f"{3*pubs/wall:,.0f} deliveries/s to subscribers  ({' '.join(kv['topology'][3:])})")
for l in lines:
    if l[0] == "master":
        ms = int(l[3])
        print(f"  master {l[1]:<18} CPU {ms/1000:6.2f} s = {100*ms/1000/wall:5.1f}% of a core, {1000*ms/max(pubs,1):5.1f} us per publish (of all)")
PY
done
echo "raw output in $out"
