-- Settles a claimed text, for the holder of its current lease only: a worker whose lease ran
-- out and was taken over changes nothing.
-- KEYS: 1 queue. ARGV: 1 tag, 2 id, 3 token, 4 op (done|retry|release|failed),
--       5 due ms (retry, release) or how long to keep the record (done, failed), 6 reason,
--       7 '1' to keep the body after done or failed (events can be redelivered),
--       8 an attempt to append to the record's log, or ''
-- Returns 1 when settled, 0 when the token is not the current lease's.
local q = KEYS[1]
local id, op, at = ARGV[2], ARGV[4], tonumber(ARGV[5])
local m = TAG .. 'm:' .. id
if redis.call('HGET', m, 'l') ~= ARGV[3] then return 0 end
redis.call('HDEL', m, 'l')
if ARGV[8] and ARGV[8] ~= '' then
  local log = redis.call('HGET', m, 'a') or ''
  redis.call('HSET', m, 'a', log .. ARGV[8] .. ';')
end
if op == 'retry' or op == 'release' then
  -- A released text was never tried: its claim does not count towards giving up.
  if op == 'release' then redis.call('HINCRBY', m, 'n', -1) end
  redis.call('ZADD', q, at, id)
  return 1
end
-- Done or failed: the text itself is forgotten; the record stays a while as a tombstone.
redis.call('ZREM', q, id)
if ARGV[7] ~= '1' then redis.call('HDEL', m, 'b') end
if op == 'done' then
  redis.call('HSET', m, 's', 'd')
else
  redis.call('HSET', m, 's', 'f', 'r', ARGV[6])
end
redis.call('PEXPIRE', m, at)
return 1
