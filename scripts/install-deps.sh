#!/usr/bin/env bash
# Install what the cluster and the tests need and is missing: redis-server,
# haproxy, tmux (the terminal client's end-to-end test), postgresql (the
# archiver's tests run initdb and postgres from /usr/lib/postgresql/*/bin),
# make and a C compiler (jemalloc is built from source for the server).
# Debian/Ubuntu.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
# The server links jemalloc (tikv-jemalloc-sys builds it from source).
command -v make >/dev/null 2>&1 || missing+=(make)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v cargo >/dev/null 2>&1 || { echo "cargo is missing: install the Rust toolchain (https://rustup.rs) first" >&2; exit 1; }

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing: ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "need root or sudo to install ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
