#!/usr/bin/env bash
# Redis CPU per publish: the first release's script (INCR, XADD, PUBLISH)
# against this release's (epoch check, and the idempotency key when the
# send has an id; and with a binding --history-bytes cap), on one
# redis-server on loopback, in the same run.
# Usage: bench/publish-script.sh [requests per run] [repeats]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100000}
reps=${2:-3}
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
dir=$(mktemp -d)
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --logfile "$dir/redis.log"
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

# The first release's publish script (server/src/store.rs at 986a313).
cat > "$dir/old.lua" <<'LUA'
local off = redis.call('INCR', KEYS[1])
if off == 1 then
  redis.call('SET', KEYS[1], ARGV[3])
  off = tonumber(ARGV[3])
end
local id = string.format('%d', off)
local frame = '{"type":"message","offset":' .. id .. ',' .. ARGV[1]
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], id .. '-0', 'f', frame)
redis.call('PUBLISH', ARGV[4], frame)
return off
LUA
# This release's, as the server builds it (ENSURE + PUBLISH).
python3 - "$dir/new.lua" <<'PY'
import re, sys
s = open("server/src/store/lua.rs").read()
get = lambda n: re.search(r"const " + n + r': &str = r#"(.*?)"#;', s, re.S).group(1)
open(sys.argv[1], "w").write(get("ENSURE") + get("PUBLISH"))
PY
old=$(redis-cli -p "$port" SCRIPT LOAD "$(cat "$dir/old.lua")")
new=$(redis-cli -p "$port" SCRIPT LOAD "$(cat "$dir/new.lua")")
run_id=$(redis-cli -p "$port" INFO server | sed -n 's/^run_id:\([0-9a-f]*\).*/\1/p')
tail='"room":"bench","nick":"ann","text":"hello world, a chat line of ordinary length","app_id":"app1","ts":1700000000000,"id":"x"}'
base=1700000000000000
usec() {
  redis-cli -p "$port" INFO commandstats | sed -n 's/^cmdstat_evalsha:.*usec_per_call=\([0-9.]*\).*/\1/p'
}
bench() {
  redis-cli -p "$port" CONFIG RESETSTAT >/dev/null
  redis-benchmark -p "$port" -n "$n" -c 20 -r 100000000 "$@" >/dev/null 2>&1
  usec
}
echo "nproc $(nproc), $(free -g | awk '/Mem:/{print $2}') GiB, $(redis-server --version | cut -d' ' -f3), $(date -u +%FT%TZ)"
printf '%-4s %22s %22s %22s %26s\n' rep "first release (us)" "epoch, no id (us)" "epoch + id key (us)" "no id, 64 KiB byte cap (us)"
for r in $(seq "$reps"); do
  a=$(bench EVALSHA "$old" 2 'chat:{b1}:seq' 'chat:{b1}:log' "$tail" 1000 "$base" 'chat:{b1}:msgs')
  b=$(bench EVALSHA "$new" 5 'chat:{b2}:seq' 'chat:{b2}:log' 'chat:{b2}:epoch' 'chat:{b2}:idem:3' 'chat:{b2}:idem:2' "$run_id" abcdef "$base" "$tail" 1000 'chat:{b2}:msgs' '' 240000 0 PUBLISH 604800000 0)
  c=$(bench EVALSHA "$new" 5 'chat:{b3}:seq' 'chat:{b3}:log' 'chat:{b3}:epoch' 'chat:{b3}:idem:3' 'chat:{b3}:idem:2' "$run_id" abcdef "$base" "$tail" 1000 'chat:{b3}:msgs' '3:ann:__rand_int__' 240000 0 PUBLISH 604800000 0)
  # --history-bytes binding on every check (the log holds ~1000 entries of
  # ~250 bytes, above 64 KiB).
  d=$(bench EVALSHA "$new" 5 'chat:{b4}:seq' 'chat:{b4}:log' 'chat:{b4}:epoch' 'chat:{b4}:idem:3' 'chat:{b4}:idem:2' "$run_id" abcdef "$base" "$tail" 1000 'chat:{b4}:msgs' '' 240000 0 PUBLISH 604800000 65536)
  printf '%-4s %22s %22s %22s %26s\n' "$r" "$a" "$b" "$c" "$d"
done
echo "idempotency entries held: $(redis-cli -p "$port" HLEN 'chat:{b3}:idem:3'), $(redis-cli -p "$port" INFO memory | sed -n 's/^used_memory_human:\(.*\)\r/\1/p') used in all"
