#!/usr/bin/env bash
# Run a command and print the CPU time (user+system) that each given PID
# spent while it ran, so a benchmark can say which process saturates first.
#   loadgen/scripts/cpu-during.sh "haproxy=123 app1=456 redis=789" -- loadgen --preset fanout ...
set -euo pipefail
pids="$1"; shift; [ "$1" = "--" ] && shift
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
declare -A before
for kv in $pids; do before[$kv]=$(ticks "${kv#*=}"); done
t0=$(date +%s.%N)
"$@"; rc=$?
t1=$(date +%s.%N)
wall=$(echo "$t1 - $t0" | bc -l)
echo "--- CPU during the run (wall ${wall}s, $(nproc) cores) ---" >&2
for kv in $pids; do
  d=$(( $(ticks "${kv#*=}") - ${before[$kv]} ))
  printf '%-10s %8.2f s CPU  %5.1f%% of one core\n' "${kv%%=*}" "$(echo "$d / $hz" | bc -l)" "$(echo "100 * $d / $hz / $wall" | bc -l)" >&2
done
exit $rc
