-- Rewrites every participant entry of one bucket, which drops sticky memory past its window
-- and entries left with nothing: a participant who went quiet in a bucket that others keep
-- alive leaves nothing behind.
-- KEYS: 1 the bucket. ARGV: 1 tag, 2 now (unused: Redis's clock), 3 sticky window ms.
local now, window = clock_ms(), tonumber(ARGV[3])
local fields = redis.call('HKEYS', KEYS[1])
for _, idx in ipairs(fields) do
  put_entry(idx, get_entry(idx), now, window, 0)
end
return #fields
