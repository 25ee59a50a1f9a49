#!/usr/bin/env bash
# What the archiver costs and how fast it goes, on loopback (issue 13).
#
#   bench/archive.sh [ROOMS=100] [PER_ROOM=1000] [RATE=10000] [DURATION=30s] [REPS=2]
#
# 1. drain: ROOMS x PER_ROOM entries written straight into Redis
#    (bench/archive-fill.py: the keys and frames the server writes), then
#    one archiver starts: rows/s until it stored them all and its lag is 0,
#    with the CPU of Redis, the archiver and PostgreSQL over that time.
# 2. steady load: loadgen sends RATE msg/s into 100 rooms (1 member each)
#    through one chat server for DURATION, REPS times "off" (no archiver,
#    --archive-backlog 0) and "on" (an archiver, --archive-backlog 100000),
#    alternating in the same run; Redis is flushed and the server restarted
#    before each part. Per part, over the middle of the send window: Redis
#    CPU per published message (utime+stime from /proc/PID/stat), rows the
#    archiver stored, and its lag (archiver_lag_messages/_seconds from
#    /metrics, sampled every second: max and median); after the last send,
#    the time until lag 0.
#
# PostgreSQL runs as initdb made it (fsync on) unless PG_FSYNC=off.
# Everything listens on 127.0.0.1; every wait is bounded. Output: one
# key=value line per figure, raw samples in the directory it prints.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOMS=${1:-100}; PER_ROOM=${2:-1000}; RATE=${3:-10000}; DURATION=${4:-30s}; REPS=${5:-2}
PG_FSYNC=${PG_FSYNC:-on}
BIN=target/release
[ -x $BIN/server ] && [ -x $BIN/archiver ] && [ -x $BIN/loadgen ] ||
  cargo build --release -p chat-archiver -p chat-server -p loadgen
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
dur_s=$(python3 -c "import sys; s=sys.argv[1]; print(int(s[:-1])*(60 if s.endswith('m') else 1))" "$DURATION")
tck=$(getconf CLK_TCK)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
out=$(mktemp -d /tmp/archive-bench.XXXXXX)
chmod 755 "$out"
echo "dir=$out"
echo "nproc=$(nproc) mem_gib=$(free -g | awk '/^Mem:/ {print $2}') date=$(date -u +%FT%TZ) commit=$(git rev-parse --short HEAD)"
echo "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)"

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${PGPID:-}" ] && kill "$PGPID" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# utime+stime of the postmaster and its children (the backends).
pg_ticks() {
  local t=0 p
  local pm; pm=$(head -1 "$out/pg/data/postmaster.pid")
  for p in $pm $(cat /proc/$pm/task/*/children 2>/dev/null); do t=$((t + $(ticks "$p"))); done
  echo $t
}
# A series' value from a /metrics page (labelled or not): the whole page
# is read first (with pipefail, curl would fail writing to an awk that exits).
metric() { local page; page=$(curl -s --max-time 2 "http://$1/metrics" || true); awk -v n="$2" '$1 == n || index($1, n "{") == 1 {print $2; exit}' <<<"$page"; }
wait_http() { for _ in $(seq 100); do curl -sf --max-time 1 "http://$1/healthz" >/dev/null && return 0; sleep 0.1; done; echo "no $1/healthz" >&2; return 1; }

# --- Redis and PostgreSQL, for the whole run ---
RP=$(port)
redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly no >"$out/redis.log" 2>&1 &
RPID=$!; PIDS+=($RPID)
REDIS="redis-cli -p $RP"
for _ in $(seq 50); do $REDIS ping >/dev/null 2>&1 && break; sleep 0.1; done

PGP=$(port)
mkdir -p "$out/pg"; chown postgres "$out/pg" 2>/dev/null || true
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
as_pg "$PG_BIN/initdb" -D "$out/pg/data" -U postgres -A trust -E UTF8 --locale=C >"$out/initdb.log" 2>&1
as_pg "$PG_BIN/postgres" -D "$out/pg/data" -p "$PGP" -c listen_addresses=127.0.0.1 \
  -c unix_socket_directories= -c fsync="$PG_FSYNC" >"$out/postgres.log" 2>&1 &
PGPID=$!
for _ in $(seq 100); do "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PGP" -t 1 && break; sleep 0.1; done
DB="postgres://postgres@127.0.0.1:$PGP/postgres"
psql_() { "$PG_BIN/psql" -qtA "$DB" -c "$1"; }

AP=$(port)
start_archiver() { # $1: log name
  RUST_LOG=warn $BIN/archiver --redis-url "redis://127.0.0.1:$RP/" --database-url "$DB" \
    --metrics-listen "127.0.0.1:$AP" --consumer bench >"$out/$1.log" 2>&1 &
  APID=$!; PIDS+=($APID)
  wait_http "127.0.0.1:$AP"
}
stop_pid() { kill "$1" 2>/dev/null || true; for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; kill -9 "$1" 2>/dev/null || true; }

# --- 1. drain a backlog ---
total=$((ROOMS * PER_ROOM))
python3 bench/archive-fill.py bk "$ROOMS" "$PER_ROOM" | $REDIS --pipe >"$out/fill.log"
echo "drain_backlog_entries=$($REDIS --scan --pattern 'chat:{bk*}:log' | while read -r k; do $REDIS xlen "$k"; done | awk '{s += $1} END {print s}')"
r0=$(ticks $RPID); p0=$(pg_ticks); t0=$(date +%s.%N)
start_archiver drain
a0=$(ticks $APID)
done_=0
for _ in $(seq 6000); do # 10 minutes at most
  ins=$(metric "127.0.0.1:$AP" archiver_rows_inserted_total); lag=$(metric "127.0.0.1:$AP" archiver_lag_messages)
  if [ "${ins:-0}" -ge "$total" ] && [ "${lag:-1}" = 0 ]; then done_=1; break; fi
  sleep 0.1
done
t1=$(date +%s.%N); r1=$(ticks $RPID); p1=$(pg_ticks); a1=$(ticks $APID)
rows=$(psql_ 'SELECT count(*) FROM messages'); distinct=$(psql_ 'SELECT count(DISTINCT (room, "offset")) FROM messages')
# From the first commit to the last (no start-up, migrations or lag refresh).
span=$(psql_ 'SELECT extract(epoch FROM max(archived_at) - min(archived_at)) FROM messages')
echo "drain_commit_span_secs=$span drain_rows_per_s_between_commits=$(echo "$rows / $span" | bc)"
awk -v t0="$t0" -v t1="$t1" -v n="$rows" -v d="$distinct" -v ok=$done_ -v r=$((r1 - r0)) -v a=$((a1 - a0)) -v p=$((p1 - p0)) -v tck="$tck" 'BEGIN {
  s = t1 - t0
  printf "drain_done=%d drain_rows=%d drain_distinct=%d drain_secs=%.2f drain_rows_per_s=%.0f\n", ok, n, d, s, n / s
  printf "drain_cpu_s redis=%.2f archiver=%.2f postgres=%.2f (per row, us: redis=%.2f archiver=%.2f postgres=%.2f)\n", r/tck, a/tck, p/tck, r/tck/n*1e6, a/tck/n*1e6, p/tck/n*1e6 }'
stop_pid "$APID"
echo "loadavg_after_drain=$(cut -d' ' -f1-3 /proc/loadavg)"

# --- 2. steady load, archiver off / on ---
SP=$(port)
part() { # $1: off|on, $2: rep
  local mode=$1 rep=$2 backlog=0
  $REDIS flushall >/dev/null
  if [ "$mode" = on ]; then backlog=100000; fi
  RUST_LOG=warn $BIN/server --listen "127.0.0.1:$SP" --app-id bench1 --redis-url "redis://127.0.0.1:$RP/" \
    --history 100 --archive-backlog $backlog --rate 100000 --burst 100000 >"$out/server-$mode-$rep.log" 2>&1 &
  SPID=$!; PIDS+=($SPID)
  wait_http "127.0.0.1:$SP"
  APID=
  if [ "$mode" = on ]; then start_archiver "archiver-$rep"; fi
  $BIN/loadgen --url "ws://127.0.0.1:$SP/ws" --rooms 100 --members 1 --senders 100 --rate "$RATE" \
    --duration "$DURATION" --quiet --json "$out/lg-$mode-$rep.json" >"$out/lg-$mode-$rep.log" 2>&1 &
  local LPID=$!
  # The window: from 3 s after every client joined to 2 s before the sends end.
  for _ in $(seq 300); do
    [ "$(metric "127.0.0.1:$SP" chat_messages_in_total)" ] && [ "$(metric "127.0.0.1:$SP" chat_messages_in_total | cut -d. -f1)" -gt 0 ] && break
    sleep 0.1
  done
  sleep 3
  local win=$((dur_s - 5)) m0 m1 r0 r1 ar0 ar1 s0 s1 w0 w1
  m0=$(metric "127.0.0.1:$SP" chat_messages_in_total); r0=$(ticks $RPID); s0=$(ticks $SPID); w0=$(date +%s.%N)
  ar0=0; [ -n "$APID" ] && ar0=$(metric "127.0.0.1:$AP" archiver_rows_inserted_total)
  local ac0=0 ac1=0 pc0 pc1; pc0=$(pg_ticks); [ -n "$APID" ] && ac0=$(ticks "$APID")
  : >"$out/lag-$mode-$rep.txt"
  # Bounded by the clock: the samples' curls take time on a busy machine.
  local wend; wend=$(echo "$w0 + $win" | bc)
  for _ in $(seq "$win"); do
    [ "$(echo "$(date +%s.%N) >= $wend" | bc)" = 1 ] && break
    # The archiver's own lag figures, and a check on the first from
    # outside: messages the server accepted minus rows the archiver stored.
    [ -n "$APID" ] && echo "$(metric "127.0.0.1:$AP" archiver_lag_messages) $(metric "127.0.0.1:$AP" archiver_lag_seconds) $(metric "127.0.0.1:$SP" chat_messages_in_total) $(metric "127.0.0.1:$AP" archiver_rows_inserted_total)" >>"$out/lag-$mode-$rep.txt"
    sleep "$(echo "t = $wend - $(date +%s.%N); if (t > 1) 1 else if (t > 0) t else 0" | bc)"
  done
  m1=$(metric "127.0.0.1:$SP" chat_messages_in_total); r1=$(ticks $RPID); s1=$(ticks $SPID); w1=$(date +%s.%N)
  ar1=0; [ -n "$APID" ] && ar1=$(metric "127.0.0.1:$AP" archiver_rows_inserted_total)
  pc1=$(pg_ticks); [ -n "$APID" ] && ac1=$(ticks "$APID")
  local la; la=$(cut -d' ' -f1 /proc/loadavg)
  for _ in $(seq 600); do kill -0 $LPID 2>/dev/null || break; sleep 0.1; done
  wait $LPID || true
  local caught=-1
  if [ -n "$APID" ]; then
    local te; te=$(date +%s.%N)
    for _ in $(seq 600); do
      [ "$(metric "127.0.0.1:$AP" archiver_lag_messages)" = 0 ] && { caught=$(awk -v a="$te" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}'); break; }
      sleep 0.1
    done
  fi
  local lg; lg=$(python3 -c "
import json,sys; r=json.load(open(sys.argv[1]))
def g(*ks):
    v=r
    for k in ks:
        v=v.get(k,{}) if isinstance(v,dict) else {}
    return v if v!={} else '-'
print('lg_sent=%s lg_sent_per_s=%.0f lg_lost=%s lg_dup=%s lg_p99_ms=%.1f' % (g('sends','sent'), g('sends','per_second'), g('deliveries','lost'), g('deliveries','duplicated'), g('latency_us','p99')/1000))" "$out/lg-$mode-$rep.json" 2>/dev/null || echo lg_report=unreadable)
  local overflow; overflow=$(metric "127.0.0.1:$SP" chat_archive_overflow_total)
  python3 - "$mode" "$rep" "$(echo "$m1 - $m0" | bc)" "$(echo "$ar1 - $ar0" | bc)" $((r1 - r0)) $((s1 - s0)) \
    "$(echo "$w1 - $w0" | bc)" "$tck" "$caught" "$la" "${overflow:-0}" "$out/lag-$mode-$rep.txt" "$lg" $((ac1 - ac0)) $((pc1 - pc0)) <<'PY'
import sys
mode, rep, m, ar, r, s, secs, tck, caught, la, of, lagf, lg, ac, pc = sys.argv[1:]
m, ar, r, s, secs, tck = float(m), float(ar), int(r), int(s), float(secs), int(tck)
out = f"part={mode} rep={rep} msgs_in={m:.0f} msg_per_s={m / secs:.0f} archived={ar:.0f}"
out += f" redis_us_per_msg={r / tck / m * 1e6:.3f} server_us_per_msg={s / tck / m * 1e6:.2f}"
lags = [tuple(map(float, l.split())) for l in open(lagf) if len(l.split()) == 4]
if lags:
    lm = sorted(x[0] for x in lags); ls = sorted(x[1] for x in lags)
    lt = sorted(x[2] - x[3] for x in lags)
    out += f" lag_msgs_p50={lm[len(lm) // 2]:.0f} lag_msgs_max={lm[-1]:.0f}"
    out += f" in_minus_stored_p50={lt[len(lt) // 2]:.0f} in_minus_stored_max={lt[-1]:.0f}"
    out += f" lag_s_p50={ls[len(ls) // 2]:.2f} lag_s_max={ls[-1]:.2f} caught_up_s={caught}"
if float(ar) > 0:
    out += f" archiver_us_per_row={int(ac) / tck / float(ar) * 1e6:.2f} postgres_us_per_row={int(pc) / tck / float(ar) * 1e6:.2f}"
print(f"{out} overflow={of} loadavg={la} {lg}")
PY
  if [ -n "$APID" ]; then stop_pid "$APID"; fi
  stop_pid "$SPID"
}
for rep in $(seq "$REPS"); do
  part off "$rep"
  part on "$rep"
done
echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)"
