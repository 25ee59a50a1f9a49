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
/// Redis memory the log may use (`--history-bytes`; 0 or absent: no byte
/// cap, the log is trimmed by `XADD MAXLEN` alone). The byte cap is
/// checked on every 16th offset: when the log's `MEMORY USAGE` (sampled,
/// O(1)) is above it, the log is trimmed to the share of entries that fits
/// at the average entry size; so it can pass the cap by at most 15
/// messages, and a publish in between costs nothing more; the archive
/// backlog (`--archive-backlog`; 0 or absent: no archiver): entries above
/// the archiver's watermark (field `archived` of the epoch hash) are not
/// trimmed until the log holds history length plus backlog entries; past
/// that the oldest go anyway, counted in field `overflow` of the epoch
/// hash and returned.
/// Returns `{"<offset> <epoch>", duplicate, frame ("" unless deferred),
/// unarchived entries trimmed}`.
const PUBLISH: &str = r#"
local field = ARGV[7]
if field ~= '' then
  for i = 4, 5 do
    local prev = redis.call('HGET', KEYS[i], field)
    if prev then
      return {prev, 1, '', 0}
    end
  end
end
local ttl = tonumber(ARGV[11] or '0') or 0
local epoch = ensure(ttl)
local id = string.format('%d', redis.call('INCR', KEYS[1]))
local frame = '{"type":"message","offset":' .. id .. ',"epoch":"' .. epoch .. '",' .. ARGV[4]
local cap = tonumber(ARGV[12] or '0') or 0
local backlog = tonumber(ARGV[13] or '0') or 0
local overflow = 0
if backlog <= 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[5], id .. '-0', 'f', frame)
  if cap > 0 and tonumber(id) % 16 == 0 then
    local used = redis.call('MEMORY', 'USAGE', KEYS[2])
    if used and used > cap then
      local len = redis.call('XLEN', KEYS[2])
      local keep = math.floor(len * cap / used)
      if keep < 1 then keep = 1 end
      if keep < len then redis.call('XTRIM', KEYS[2], 'MAXLEN', keep) end
    end
  end
else
  -- An archiver runs: entries above its watermark stay, up to the
  -- history length plus the backlog in all.
  redis.call('XADD', KEYS[2], id .. '-0', 'f', frame)
  local hist = tonumber(ARGV[5])
  local keep = hist
  local len = redis.call('XLEN', KEYS[2])
  if cap > 0 and tonumber(id) % 16 == 0 then
    local used = redis.call('MEMORY', 'USAGE', KEYS[2])
    if used and used > cap then
      local k = math.floor(len * cap / used)
      if k < 1 then k = 1 end
      if k < keep then keep = k end
    end
  end
  local archived = tonumber(redis.call('HGET', KEYS[3], 'archived') or '0') or 0
  local unarchived = tonumber(id) - archived
  if unarchived > len then unarchived = len end
  if unarchived > keep then keep = unarchived end
  if keep > hist + backlog then keep = hist + backlog end
  if len > keep then
    redis.call('XTRIM', KEYS[2], 'MAXLEN', keep)
    if unarchived > keep then
      overflow = unarchived - keep
      redis.call('HINCRBY', KEYS[3], 'overflow', overflow)
    end
  end
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
if deferred then return {res, 0, frame, overflow} end
return {res, 0, '', overflow}
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

/// Claim a nick in a room's nick index (`chat:{room}:nicks`: nick →
/// `"<owner>\n<conn_id>"`), so that two live members never share a nick.
///
/// KEYS: members, nicks. ARGV: nick, owner (`sub:<sub>`, `key:<nick_key>`
/// or `conn:<conn_id>`), conn_id, "1" to take it whoever holds it.
/// The claim succeeds (and records the claimant) when the nick is free,
/// held by the same owner, or held by a connection that is no longer in
/// the room under that nick (it left or renamed). Otherwise it returns the
/// holder's conn_id and presence entry, so that the caller can tell a
/// holder of a dead instance (then it claims again with "1").
/// Returns `{}` when claimed, `{holder, entry}` when held.
const NICK_CLAIM: &str = r#"
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if cur and ARGV[4] ~= '1' then
  local sep = string.find(cur, '\n', 1, true)
  if sep then
    local owner = string.sub(cur, 1, sep - 1)
    local holder = string.sub(cur, sep + 1)
    if owner ~= ARGV[2] and holder ~= ARGV[3] then
      local e = redis.call('HGET', KEYS[1], holder)
      if e then
        local ok, m = pcall(cjson.decode, e)
        if ok and type(m) == 'table' and m.nick == ARGV[1] then return {holder, e} end
      end
    end
  end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. '\n' .. ARGV[3])
return {}
"#;

/// Remove a member from a room: its presence entry, and its nick index
/// entry if it is the claimant on record.
///
/// KEYS: members, nicks. ARGV: conn_id, nick.
/// Returns `{removed (0 or 1), members left}`.
const DEPART: &str = r#"
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
local cur = redis.call('HGET', KEYS[2], ARGV[2])
if cur then
  local sep = string.find(cur, '\n', 1, true)
  if sep and string.sub(cur, sep + 1) == ARGV[1] then redis.call('HDEL', KEYS[2], ARGV[2]) end
end
return {removed, redis.call('HLEN', KEYS[1])}
"#;

/// The nick claim script's source.
pub(crate) fn nick_claim() -> &'static str {
    NICK_CLAIM
}

/// The depart script's source.
pub(crate) fn depart() -> &'static str {
    DEPART
}

/// The publish script's source.
pub(crate) fn publish() -> String {
    format!("{ENSURE}{PUBLISH}")
}

/// The head script's source.
pub(crate) fn head() -> String {
    format!("{ENSURE}{HEAD}")
}
