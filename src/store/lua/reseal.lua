-- Rewrites values of one key, each only if it is still what the caller read: re-sealing under
-- a new data key never overwrites a write hush made meanwhile (the caller reads again). Each
-- field stands alone, so a busy bucket of session records is re-sealed record by record.
-- KEYS: 1 the key. ARGV: 1 tag (unused), 2 'h' (hash fields) or 's' (the string),
--       then (field, value read, new value) triples; the field is ignored for a string.
-- Returns how many values were rewritten.
local k, kind = KEYS[1], ARGV[2]
local written = 0
for i = 3, #ARGV, 3 do
  local now
  if kind == 'h' then now = redis.call('HGET', k, ARGV[i]) else now = redis.call('GET', k) end
  if now == ARGV[i + 1] then
    if kind == 'h' then
      redis.call('HSET', k, ARGV[i], ARGV[i + 2])
    else
      redis.call('SET', k, ARGV[i + 2], 'KEEPTTL')
    end
    written = written + 1
  end
end
return written
