#!/usr/bin/env bash
# Every test: install what is missing, then the whole workspace's tests
# against real redis-server and haproxy processes on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo test --workspace --all-targets "$@"
# Issue 10's rules, checked from outside by an independent client (Python,
# standard library only: its own tokens and WebSocket code).
cargo build -p chat-server --bin server -p chat-archiver --bin archiver
python3 scripts/check-auth.py target/debug/server
# Issue 13's check, the same way: its own PostgreSQL (initdb) and Redis,
# two servers with --history 100 --database-url, the archiver binary,
# PostgreSQL killed with kill -9 under load.
python3 scripts/check-archive.py target/debug
