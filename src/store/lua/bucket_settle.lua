-- Sets a session bucket's place in `xb` to the earliest transition among its records, after
-- the reaper has worked through it; an empty bucket leaves `xb`. Run as one step, so a session
-- created meanwhile in the bucket is counted.
-- KEYS: 1 xb. ARGV: 1 tag, 2 the bucket's name.
local name = ARGV[2]
local all = redis.call('HGETALL', TAG .. 's:' .. name)
local earliest = nil
for i = 1, #all, 2 do
  local rec = get_session(all[i])
  local at = rec and next_due(rec)
  if at and (not earliest or at < earliest) then earliest = at end
end
if earliest then
  redis.call('ZADD', KEYS[1], earliest, name)
else
  redis.call('ZREM', KEYS[1], name)
end
return earliest or -1
