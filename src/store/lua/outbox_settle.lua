-- Settles claimed items of one queue in one step, each for the holder of its current lease
-- only: a worker whose lease ran out and was taken over changes nothing.
-- KEYS: 1 queue. ARGV: 1 tag, 2 '1' to keep the body after done or failed (events can be
-- redelivered), then six per item: id, token, op (done|retry|release|failed),
-- due ms (retry, release) or how long to keep the record (done, failed), reason,
-- an attempt to append to the record's log or ''.
-- Returns one flag per item: 1 when settled, 0 when the token is not the current lease's.
local q = KEYS[1]
local keep_body = ARGV[2] == '1'
local out = {}
for i = 3, #ARGV, 6 do
  local id, token, op, at = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local reason, attempt = ARGV[i + 4], ARGV[i + 5]
  local m = TAG .. 'm:' .. id
  if redis.call('HGET', m, 'l') ~= token then
    table.insert(out, 0)
  else
    redis.call('HDEL', m, 'l')
    if attempt ~= '' then
      local log = redis.call('HGET', m, 'a') or ''
      redis.call('HSET', m, 'a', log .. attempt .. ';')
    end
    if op == 'retry' or op == 'release' then
      -- A released item was never tried: its claim does not count towards giving up.
      if op == 'release' then redis.call('HINCRBY', m, 'n', -1) end
      redis.call('ZADD', q, at, id)
    else
      -- Done or failed: a text itself is forgotten; the record stays a while as a tombstone.
      redis.call('ZREM', q, id)
      if not keep_body then redis.call('HDEL', m, 'b') end
      if op == 'done' then
        redis.call('HSET', m, 's', 'd')
      else
        redis.call('HSET', m, 's', 'f', 'r', reason)
      end
      redis.call('PEXPIRE', m, at)
    end
    table.insert(out, 1)
  end
end
return out
