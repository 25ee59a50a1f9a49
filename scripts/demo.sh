#!/usr/bin/env bash
# The main job: install what is missing, build, and run a local cluster
# (redis-server + app1..app3 + HAProxy on 127.0.0.1:8080, PostgreSQL and
# the archiver behind them) with a demo of cross-instance delivery. Ctrl-C stops everything. Extra arguments go to
# `cluster demo` (e.g. --port 0 for any free port).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --workspace --bins
exec target/release/cluster demo --archive "$@"
