//! The Redis scripts behind offsets, epochs and idempotent sends.
//!
//! # Epochs
//! A room's offsets come from `INCR` on `chat:{room}:seq`. Redis can lose
//! the tail of that sequence (AOF `everysec` and a crash, a failover to a
//! lagging replica, a restore), and then hand out the same offsets again
//! for other messages. So each room has an *epoch*, kept in
//! `chat:{room}:epoch` together with the `run_id` of the Redis process that
//! started it. Every script first runs [`ENSURE`]: if the epoch is missing,
//! or was started by another Redis process than the one running the script
//! (the caller passes the `run_id` it read on the very connection the script
//! runs on), the room starts a new epoch. A restarted, failed-over or
//! restored Redis therefore always starts new epochs: a rollback is
//! announced, never skipped (pessimistic: a clean restart that lost
//! nothing is announced too).
//!
//! A new epoch's offsets continue above everything this Redis still holds
//! (the seq, the stream's last id) and above the clock (ms × 1000), so in
//! practice offsets keep increasing across epochs too; correctness does not
//! rely on that (consumers compare offsets only within one epoch).
//!
//! # Idempotency
//! A send with an id stores `"<offset> <epoch>"` in the same script that
//! publishes it, as field `<nick length>:<nick>:<id>` of a hash per room and
//! time bucket, `chat:{room}:idem:<bucket>` (buckets as long as the TTL; a
//! bucket expires two buckets after it began). A send looks in its bucket
//! and the one before, so an id is remembered for at least the TTL (at
//! most twice it). A retry finds the field and gets the original offset
//! back instead of publishing again. Fields in a few hashes cost Redis far
//! less than one key with its own expiry per send.

/// KEYS: seq, log, epoch. ARGV: run_id, new epoch, clock base; `ttl` is
/// the room's idle life in ms (`--room-ttl`, 0: forever), set on the keys
/// of a new epoch. An epoch whose seq is gone (it expired first) is not
/// continued: offsets would start again at 1 in the same epoch.
/// Returns the room's epoch after making sure it belongs to this Redis.
const ENSURE: &str = r#"
local function ensure(ttl)
  local m = redis.call('HMGET', KEYS[3], 'epoch', 'inc')
  if m[1] and m[2] == ARGV[1] and redis.call('EXISTS', KEYS[1]) == 1 then return m[1] end
  local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
  local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  if top[1] then
    local t = tonumber(string.match(top[1][1], '^(%d+)'))
    if t and t > seq then seq = t end
  end
  local base = tonumber(ARGV[3])
  if base > seq then seq = base end
  local s = string.format('%d', seq)
  redis.call('SET', KEYS[1], s)
  redis.call('HSET', KEYS[3], 'epoch', ARGV[2], 'inc', ARGV[1], 'start', s)
  if ttl > 0 then
    for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
  end
  return ARGV[2]
end
"#;

/// Append `frame` to the log (KEYS[2]) and trim the oldest entries while
/// it holds more than `maxlen` entries or more than `cap` bytes of frames
/// (the newest always stays). The byte count is field `bytes` of the epoch
/// hash (KEYS[3]); when it is missing (a new room, or Redis lost the hash)
/// the log is measured once, at most `--history` entries. At most 100
/// entries go per publish; past that `XTRIM` still bounds the count (the
/// byte count then overestimates, which trims more, until the log empties
/// and the count starts again from 0).
const APPEND: &str = r#"
local function append(frame, id, maxlen, cap)
  local bytes = tonumber(redis.call('HGET', KEYS[3], 'bytes') or '')
  if not bytes then
    bytes = 0
    for _, e in ipairs(redis.call('XRANGE', KEYS[2], '-', '+')) do
      bytes = bytes + #(e[2][2] or '')
    end
  end
  redis.call('XADD', KEYS[2], id .. '-0', 'f', frame)
  bytes = bytes + #frame
  local len = redis.call('XLEN', KEYS[2])
  local n = 0
  while (len > maxlen or (bytes > cap and len > 1)) and n < 100 do
    local old = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
    if not old[1] then break end
    redis.call('XDEL', KEYS[2], old[1][1])
    bytes = bytes - #(old[1][2][2] or '')
    len = len - 1
    n = n + 1
  end
  if len > maxlen then redis.call('XTRIM', KEYS[2], 'MAXLEN', maxlen) end
  if len <= 1 then bytes = #frame end
  if bytes < 0 then bytes = 0 end
  redis.call('HSET', KEYS[3], 'bytes', string.format('%d', bytes))
end
"#;

/// Append to history and publish, atomically, so that offset order is
/// publish order across every instance.
///
/// KEYS: seq, log, epoch, then the idempotency buckets: this one and the
/// one before. ARGV: run_id, new epoch, clock base, tail, history length,
/// channel, the send's field ("" if it has no id), a bucket's life in ms,
/// "1" to append only and return the frame for the caller to publish
/// after `WAIT` (`--redis-wait-replicas`), the publish command (`PUBLISH`,
/// or `SPUBLISH` on a Redis Cluster: the channel is in the keys' slot),
/// the room's idle life in ms (`--room-ttl`; 0 or absent: forever): every
/// publish sets it again on seq, log and epoch, so a room without messages
/// for that long loses them and starts a new epoch; the most bytes of
/// frames the log keeps (`--history-bytes`; 0 or absent: no byte cap, the
/// log is trimmed by `XADD MAXLEN` alone).
/// Returns `{"<offset> <epoch>", duplicate[, frame]}`.
const PUBLISH: &str = r#"
local field = ARGV[7]
if field ~= '' then
  for i = 4, 5 do
    local prev = redis.call('HGET', KEYS[i], field)
    if prev then
      if ARGV[9] == '1' then return {prev, 1, ''} end
      return {prev, 1}
    end
  end
end
local ttl = tonumber(ARGV[11] or '0') or 0
local epoch = ensure(ttl)
local id = string.format('%d', redis.call('INCR', KEYS[1]))
local frame = '{"type":"message","offset":' .. id .. ',"epoch":"' .. epoch .. '",' .. ARGV[4]
local cap = tonumber(ARGV[12] or '0') or 0
if cap > 0 then
  append(frame, id, tonumber(ARGV[5]), cap)
else
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[5], id .. '-0', 'f', frame)
end
if ttl > 0 then
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
end
local deferred = ARGV[9] == '1'
if not deferred then redis.call(ARGV[10], ARGV[6], frame) end
local res = id .. ' ' .. epoch
if field ~= '' then
  if redis.call('HSET', KEYS[4], field, res) == 1 and redis.call('HLEN', KEYS[4]) == 1 then
    redis.call('PEXPIRE', KEYS[4], ARGV[8])
  end
end
if deferred then return {res, 0, frame} end
return {res, 0}
"#;

/// The room's epoch, head and the offset its epoch started after.
///
/// KEYS: seq, log, epoch. ARGV: run_id, new epoch, clock base, the room's
/// idle life in ms (for a new epoch's keys; reading never extends it).
/// Returns `{epoch, head, start}`.
const HEAD: &str = r#"
local epoch = ensure(tonumber(ARGV[4] or '0') or 0)
local start = redis.call('HGET', KEYS[3], 'start') or '0'
return {epoch, redis.call('GET', KEYS[1]) or '0', start}
"#;

/// The publish script's source.
pub(crate) fn publish() -> String {
    format!("{ENSURE}{APPEND}{PUBLISH}")
}

/// The head script's source.
pub(crate) fn head() -> String {
    format!("{ENSURE}{HEAD}")
}
