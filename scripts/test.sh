#!/usr/bin/env bash
# Every test: install what is missing, then the whole workspace's tests
# against real redis-server and haproxy processes on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo test --workspace --all-targets "$@"
