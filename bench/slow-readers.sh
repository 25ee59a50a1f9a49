#!/usr/bin/env bash
# Clients that stop reading (issue 7, item 9): one redis-server, one chat
# server with --socket-send-buffer SNDBUF, NON_READERS raw WebSockets that
# read their 101 and nothing more (SO_RCVBUF 4 KiB, set before connect), and
# loadgen with READERS healthy readers plus one sender at RATE msg/s of
# SIZE-byte text in the same room (100 x 540 B is about 64 KB/s of frames).
# Every second: the server's Send-Q towards the non-readers (`ss`) and the
# host's TCP memory (/proc/net/sockstat, pages). At the end: time from the
# first message until every non-reader was closed with 4000, and the
# healthy readers' latency from loadgen. Loopback only.
# NON_READERS=0 measures healthy delivery alone (e.g. at a high RATE).
# Usage: bench/slow-readers.sh [SNDBUF=64KiB] [NON_READERS=1000] [DURATION=30s] [RATE=100] [SIZE=540] [READERS=20]
set -euo pipefail
cd "$(dirname "$0")/.."
SNDBUF=${1:-64KiB}; N=${2:-1000}; DURATION=${3:-30s}; RATE=${4:-100}; SIZE=${5:-540}; READERS=${6:-20}
BIN=${BIN:-target/release}
SERVER=${SERVER:-$BIN/server}   # e.g. a debug build with an experiment
[ -x "$SERVER" ] && [ -x $BIN/loadgen ] || cargo build --release -p chat-server -p loadgen
ulimit -n "$(ulimit -Hn)"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RP=$(port); SP=$(port)
tmp=$(mktemp -d)
redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly no >"$tmp/redis.log" 2>&1 &
RPID=$!
trap 'kill $RPID ${SPID:-} ${NPID:-} ${LPID:-} 2>/dev/null || true' EXIT
sleep 0.3
RUST_LOG=warn "$SERVER" --listen 127.0.0.1:$SP --app-id bench1 --redis-url redis://127.0.0.1:$RP/ \
  --socket-send-buffer "$SNDBUF" --rate 100000 --burst 100000 >"$tmp/server.log" 2>&1 &
SPID=$!
for _ in $(seq 100); do curl -sf "127.0.0.1:$SP/healthz" >/dev/null && break; sleep 0.1; done
metric() { curl -s "127.0.0.1:$SP/metrics" | awk -v m="$1" -v l="${2:-}" 'index($1, m"{") == 1 && (l == "" || index($0, l)) {print $2; exit}'; }
cuts() { metric chat_closes_total 'code="4000"'; }
msgs_in() { metric chat_messages_in_total; }
sockstat() { awk -v k="$1" '/^TCP:/ {for (i = 1; i < NF; i++) if ($i == k) print $(i + 1)}' /proc/net/sockstat; }
tcp_mem() { sockstat mem; }
mem0=$(tcp_mem)

# The non-readers: connect, upgrade, read the 101, then hold the socket.
python3 - "$SP" "$N" >"$tmp/nonreaders.log" 2>&1 <<'PY' &
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for i in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall((f"GET /ws?room=slow-0&nick=nr{i} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
               "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(256)
    assert head.startswith(b"HTTP/1.1 101"), head
    socks.append(s)
print("holding", len(socks), flush=True)
time.sleep(3600)
PY
NPID=$!
for _ in $(seq 600); do [ "${N}" = 0 ] || grep -q holding "$tmp/nonreaders.log" && break; sleep 0.1; done
sleep 1

$BIN/loadgen --url "ws://127.0.0.1:$SP/ws" --clients $((READERS + 1)) --rooms 1 --senders 1 --rate "$RATE" \
  --size "$SIZE" --room-prefix slow --duration "$DURATION" --quiet --json "$tmp/lg.json" >"$tmp/loadgen.log" 2>&1 &
LPID=$!
for _ in $(seq 600); do [ "$(msgs_in)" -gt 0 ] && break; sleep 0.05; done
t0=$(date +%s.%N); cut_s=-; peak_mem=$mem0
echo "second  sockets-with-sendq  sendq_max_B  sendq_median_B  tcp_mem_pages  orphans  cut_4000"
while kill -0 $LPID 2>/dev/null; do
  # Server-side sockets with data queued for a client (the non-readers).
  q=$(ss -tnH state established "( sport = :$SP )" | awk '{print $2}' | sort -n)
  open=$(echo "$q" | awk '$1 > 0' | wc -l)
  max=$(echo "$q" | tail -1); med=$(echo "$q" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  m=$(tcp_mem); [ "$m" -gt "$peak_mem" ] && peak_mem=$m
  c=$(cuts); now=$(date +%s.%N)
  printf '%6.1f  %19s  %11s  %14s  %13s  %7s  %8s\n' "$(echo "$now - $t0" | bc)" "$open" "${max:-0}" "${med:-0}" "$m" "$(sockstat orphan)" "${c:-0}"
  if [ "$cut_s" = - ] && [ "$N" -gt 0 ] && [ "${c:-0}" -ge "$N" ]; then cut_s=$(echo "$now - $t0" | bc); fi
  # The fullest socket, with its kernel memory (skmem: w = queued bytes
  # with overhead, tb = the send buffer), last seen before the cut.
  [ "${c:-0}" -lt "$N" ] && SSDUMP=$(ss -tnmH state established "( sport = :$SP )" | paste - - | sort -k2 -n | tail -1)
  sleep 1
done
wait $LPID || true
echo "fullest socket before the cut: ${SSDUMP:-none}" | tr -s ' \t' ' '
python3 - "$tmp/lg.json" <<PY
import json, sys
r = json.load(open(sys.argv[1]))
lat, d = r["latency_us"], r["deliveries"]
print(f"sndbuf=$SNDBUF non_readers=$N rate=$RATE size=$SIZE readers=$READERS "
      f"cut_4000=$(cuts) of $N, all by {'$cut_s'}s after the first message; "
      f"tcp_mem {$mem0} -> peak {$peak_mem} pages (+{($peak_mem - $mem0) * 4 / 1024:.0f} MiB)")
print(f"healthy readers: delivered={d['delivered']} lost={d['lost']} out_of_order={d['out_of_order']} "
      f"per_s={d['per_second']:.0f} p50={lat['p50']/1000:.1f}ms p99={lat['p99']/1000:.1f}ms "
      f"max={lat['max']/1000:.1f}ms")
PY
