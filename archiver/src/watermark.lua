-- The archive watermark of one room, and its lag, in one atomic step (so
-- no other archiver's read can fall between the two readings).
--
-- KEYS[1]: chat:{room}:log; KEYS[2]: chat:{room}:epoch. ARGV[1]: the group;
-- ARGV[2]: consumers with nothing pending and idle for this many ms are
-- deleted (archivers named hostname-pid would pile up), 0: never.
-- The watermark is the highest offset such that every entry of the log at
-- or below it is archived: just below the group's lowest pending id, or the
-- group's last-delivered id when nothing is pending. It is only ever
-- raised, and only on an existing epoch hash (never re-creating an
-- expired room's hash without its TTL).
-- Returns {status, watermark, stored, pending, lag, oldest frame, raised};
-- status
-- -2: no stream, -1: no group.
if redis.call('EXISTS', KEYS[1]) == 0 then return {-2} end
local g
for _, info in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local t = {}
  for i = 1, #info, 2 do t[info[i]] = info[i + 1] end
  if t['name'] == ARGV[1] then g = t end
end
if not g then return {-1} end
local forget = tonumber(ARGV[2] or '0') or 0
if forget > 0 then
  for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
    local c = {}
    for i = 1, #info, 2 do c[info[i]] = info[i + 1] end
    if c['pending'] == 0 and c['idle'] and c['idle'] > forget then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], c['name'])
    end
  end
end
local function off(id) return tonumber(string.match(id, '^(%d+)')) or 0 end
local p = redis.call('XPENDING', KEYS[1], ARGV[1])
local pending = p[1]
local wm
if pending > 0 then wm = off(p[2]) - 1 else wm = off(g['last-delivered-id']) end
if wm < 0 then wm = 0 end
local cur = tonumber(redis.call('HGET', KEYS[2], 'archived') or '-1') or -1
local raised = 0
if wm > cur and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], 'archived', string.format('%d', wm))
  cur = wm
  raised = 1
end
local lag = g['lag']
if not lag then
  -- Redis cannot tell (entries were deleted inside the range): count
  -- everything not yet delivered as an upper bound.
  lag = redis.call('XLEN', KEYS[1]) - pending
  if lag < 0 then lag = 0 end
end
local oldest = redis.call('XRANGE', KEYS[1], '(' .. string.format('%d', wm) .. '-0', '+', 'COUNT', 1)
local frame = ''
if oldest[1] and oldest[1][2] then frame = oldest[1][2][2] or '' end
if cur < 0 then cur = 0 end
return {0, string.format('%d', wm), string.format('%d', cur), pending, lag, frame, raised}
