#!/usr/bin/env bash
# Whole-cluster CPU per delivery (3 servers + every HAProxy process +
# redis-server), the same loadgen shape run two ways in one cluster run:
#   proxied: loadgen --url ws://HAPROXY/ws            (HAProxy relays every frame)
#   direct:  loadgen --registry http://HAPROXY/connect (ask once, then straight
#            to the least-loaded instance; HAProxy only answers the asks)
# alternating (proxied, direct, direct, proxied, proxied, direct, ...),
# REPEATS times each. CPU = utime+stime from /proc/PID/stat while messages
# flow (after every socket joined and presence settled, until deliveries
# stop); deliveries = chat_messages_out_total of the servers over the same
# window. Prints one row per part and the same-run ratio direct/proxied.
# Loopback only. Target (issue 11): direct total <= 0.6 x proxied total.
#
# Usage: bench/registry-cpu.sh [RATE=20] [MEMBERS=1000] [DURATION=20s] [SENDERS=10] [REPEATS=3]
#   e.g. bench/registry-cpu.sh 20 1000 20s 10 3   (20k deliveries/s)
#        bench/registry-cpu.sh 60 1000 20s 10 3   (60k deliveries/s)
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-20}; MEMBERS=${2:-1000}; DURATION=${3:-20s}; SENDERS=${4:-10}; REPEATS=${5:-3}
# A no-op when the binaries are fresh; the server must have GET /connect.
cargo build --release -q -p chat-server -p chat-cluster -p loadgen
OUT=${OUT:-$(mktemp -d)}
export RATE MEMBERS DURATION SENDERS REPEATS OUT
echo "nproc=$(nproc) mem=$(free -g | awk '/^Mem:/{print $2}')GiB date=$(date -u +%FT%TZ) rev=$(git rev-parse --short HEAD)"
echo "shape: $MEMBERS clients, 1 room, $SENDERS senders, $RATE msg/s, $DURATION, 64 B; $REPEATS repeats; raw results in $OUT"
target/release/cluster exec --port 0 --stats-port 0 --server-base-port 0 \
  --server-arg=--rate=100000 --server-arg=--burst=100000 -- bench/registry-measure.sh
python3 - "$OUT/parts.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def per(r, k): return r[k] / max(r["deliveries"], 1)
hdr = ("part", "rep", "window_s", "deliveries", "deliv/s", "servers", "haproxy", "redis", "total", "lost", "direct_conns")
print()
print("CPU us per delivery (whole cluster = servers + haproxy + redis)")
print("%-8s %3s %8s %10s %8s %8s %8s %8s %8s %5s %12s" % hdr)
for r in rows:
    print("%-8s %3d %8.1f %10d %8.0f %8.3f %8.3f %8.3f %8.3f %5d %12s" % (
        r["part"], r["rep"], r["secs"], r["deliveries"], r["deliveries"] / r["secs"],
        per(r, "servers_us"), per(r, "haproxy_us"), per(r, "redis_us"), per(r, "total_us"),
        r["lost"], r["direct_conns"]))
print()
print("same-run ratio direct/proxied (CPU us per delivery)")
print("%3s %8s %8s" % ("rep", "total", "servers"))
tot = {"proxied": [0, 0, 0], "direct": [0, 0, 0]}
for rep in sorted({r["rep"] for r in rows}):
    p = [r for r in rows if r["rep"] == rep and r["part"] == "proxied"]
    d = [r for r in rows if r["rep"] == rep and r["part"] == "direct"]
    if not p or not d: continue
    p, d = p[0], d[0]
    print("%3d %8.3f %8.3f" % (rep, per(d, "total_us") / per(p, "total_us"),
                              per(d, "servers_us") / per(p, "servers_us")))
for r in rows:
    t = tot[r["part"]]; t[0] += r["total_us"]; t[1] += r["servers_us"]; t[2] += r["deliveries"]
if tot["proxied"][2] and tot["direct"][2]:
    pt, dt = tot["proxied"][0] / tot["proxied"][2], tot["direct"][0] / tot["direct"][2]
    ps, ds = tot["proxied"][1] / tot["proxied"][2], tot["direct"][1] / tot["direct"][2]
    print("all %8.3f %8.3f   (pooled: proxied %.3f us, direct %.3f us per delivery; target total <= 0.6)"
          % (dt / pt, ds / ps, pt, dt))
PY
