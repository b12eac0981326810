-- Rewrites every participant entry of some buckets, which drops sticky memory past its window
-- and entries left with nothing: a participant who went quiet in a bucket that others keep
-- alive leaves nothing behind. Several buckets a call, so an idle shard costs the reaper one
-- script a pass.
-- KEYS: the buckets. ARGV: 1 tag, 2 now (unused: Redis's clock), 3 sticky window ms.
-- Returns how many entries it rewrote.
local now, window = clock_ms(), tonumber(ARGV[3])
local n = 0
for _, bucket in ipairs(KEYS) do
  local fields = redis.call('HKEYS', bucket)
  for _, idx in ipairs(fields) do
    put_entry(idx, get_entry(idx), now, window, 0)
  end
  n = n + #fields
end
return n
