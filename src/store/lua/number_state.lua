-- KEYS[1] nums. ARGV: tag, number, state ('active' | 'draining').
-- Returns -1 when the number is not in the shard, else 1. A draining number leaves every
-- load index, so allocation cannot see it; its open sessions run on untouched.
local nums = KEYS[1]
local number, state = ARGV[2], ARGV[3]
local meta = redis.call('HGET', nums, number)
if not meta then return -1 end
local m = parse_meta(meta)
if m.state == state then return 1 end
local load = tonumber(redis.call('HGET', nums, number .. ':h') or '0')
for _, k in ipairs(load_keys(m)) do
  if state == 'draining' then
    redis.call('ZREM', k, number)
  else
    redis.call('ZADD', k, load, number)
  end
end
redis.call('HSET', nums, number, m.caps .. '|' .. state .. '|' .. m.geos)
redis.call('HINCRBY', nums, '#draining', state == 'draining' and 1 or -1)
return 1
