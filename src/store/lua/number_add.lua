-- KEYS[1] nums. ARGV: tag, number, caps code, geo tags.
-- Adds an active number with no load; 0 if the shard already has it, -1 if its pool was
-- deleted meanwhile.
local nums = KEYS[1]
local number, caps, geos = ARGV[2], ARGV[3], ARGV[4]
if redis.call('HEXISTS', nums, '#deleted') == 1 then return -1 end
if redis.call('HEXISTS', nums, number) == 1 then return 0 end
local meta = caps .. '|active|' .. geos
redis.call('HSET', nums, number, meta, number .. ':h', 0, number .. ':o', 0)
redis.call('HINCRBY', nums, '#total', 1)
for _, k in ipairs(load_keys(parse_meta(meta))) do
  redis.call('ZADD', k, 0, number)
end
return 1
