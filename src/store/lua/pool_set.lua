-- KEYS[1] pool hash. ARGV: 1 tag (unused: the pool hash is not a shard key), 2 the version
-- the caller read ('' for none, '*' for any), then field, value pairs.
-- Writes a pool's policy fields and bumps its version `v`, so a read-merge-write (PATCH)
-- that raced another change is refused instead of undoing it. The shard count only grows:
-- numbers never move, so a shard once counted must stay counted. Checked here, in the same
-- step as the write, so two changes racing cannot shrink it between them.
-- Returns {-1} when the pool is gone (deleted meanwhile), {0} when the version moved,
-- {-2, shards} when the change would lower the shard count, {1} written.
local pool = KEYS[1]
if redis.call('EXISTS', pool) == 0 then return { -1 } end
local v = redis.call('HGET', pool, 'v') or ''
if ARGV[2] ~= '*' and v ~= ARGV[2] then return { 0 } end
local shards = tonumber(redis.call('HGET', pool, 'shards') or '1')
for i = 3, #ARGV, 2 do
  if ARGV[i] == 'shards' and tonumber(ARGV[i + 1]) < shards then return { -2, shards } end
end
for i = 3, #ARGV, 2 do
  redis.call('HSET', pool, ARGV[i], ARGV[i + 1])
end
redis.call('HINCRBY', pool, 'v', 1)
return { 1 }
