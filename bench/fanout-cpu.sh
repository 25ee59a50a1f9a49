#!/usr/bin/env bash
# Server CPU per delivery in a fan-out run: 3 instances behind HAProxy, one
# room of MEMBERS members, SENDERS senders at RATE msg/s for DURATION.
# CPU = utime+stime of the three server processes while messages flow
# (after every socket joined, until deliveries stop), divided by the
# deliveries they made (chat_messages_out_total). Loopback only.
# Usage: bench/fanout-cpu.sh [RATE=20] [MEMBERS=1000] [DURATION=20s] [SENDERS=10]
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-20}; MEMBERS=${2:-1000}; DURATION=${3:-20s}; SENDERS=${4:-10}
[ -x target/release/cluster ] && [ -x target/release/loadgen ] && [ -x target/release/server ] \
  || cargo build --release -p chat-server -p chat-cluster -p loadgen
export RATE MEMBERS DURATION SENDERS
target/release/cluster exec --port 0 --stats-port 0 --server-base-port 0 \
  --server-arg=--rate=100000 --server-arg=--burst=100000 ${SERVER_ARGS:-} -- bench/fanout-measure.sh

# Calibration in the same run: a bare C loop writing pre-encoded frames to
# loopback sockets (no server logic), one frame per write and four, in
# bursts 50 ms apart like the fan-out above. Compare ratios, not absolutes.
cc -O2 -o target/c-write-loop bench/c-write-loop.c
per_instance=$(( (MEMBERS + 2) / 3 ))
target/c-write-loop "$per_instance" 300 1 50
target/c-write-loop "$per_instance" 300 4 50
