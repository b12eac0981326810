-- Settles claimed items of one queue in one step, each for the holder of its current lease
-- only: a worker whose lease ran out and was taken over changes nothing.
-- KEYS: 1 queue. ARGV: 1 tag, 2 '1' to keep the body after done or failed (events can be
-- redelivered), then six per item: id, token, op (done|retry|release|failed),
-- due ms (retry, release) or how long to keep the record (done, failed), reason,
-- an attempt to append to the record's log or ''.
-- Returns one flag per item: 1 when settled, 0 when the token is not the current lease's.
-- Items done or failed leave the queue with one ZREM at the end.
local q = KEYS[1]
local keep_body = ARGV[2] == '1'
local out = {}
local gone = {}
for i = 3, #ARGV, 6 do
  local id, token, op, at = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local reason, attempt = ARGV[i + 4], ARGV[i + 5]
  local m = TAG .. 'm:' .. id
  local rec = redis.call('HMGET', m, 'l', 'a')
  if rec[1] ~= token then
    table.insert(out, 0)
  else
    local fields = {}
    if attempt ~= '' then
      table.insert(fields, 'a')
      table.insert(fields, (rec[2] or '') .. attempt .. ';')
    end
    if op == 'retry' or op == 'release' then
      redis.call('HDEL', m, 'l')
      -- A released item was never tried: its claim does not count towards giving up.
      if op == 'release' then redis.call('HINCRBY', m, 'n', -1) end
      if #fields > 0 then redis.call('HSET', m, unpack(fields)) end
      redis.call('ZADD', q, at, id)
    else
      -- Done or failed: a text itself is forgotten; the record stays a while as a tombstone.
      if keep_body then
        redis.call('HDEL', m, 'l')
      else
        redis.call('HDEL', m, 'l', 'b')
      end
      table.insert(fields, 's')
      if op == 'done' then
        table.insert(fields, 'd')
      else
        table.insert(fields, 'f')
        table.insert(fields, 'r')
        table.insert(fields, reason)
      end
      redis.call('HSET', m, unpack(fields))
      redis.call('PEXPIRE', m, at)
      table.insert(gone, id)
    end
    table.insert(out, 1)
  end
end
for first = 1, #gone, 1000 do
  redis.call('ZREM', q, unpack(gone, first, math.min(first + 999, #gone)))
end
return out
