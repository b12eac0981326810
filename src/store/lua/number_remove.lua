-- KEYS[1] nums. ARGV: tag, number.
-- Returns -1 not in the shard, 0 still held by a session (open or cooling off), 1 removed.
local nums = KEYS[1]
local number = ARGV[2]
local meta = redis.call('HGET', nums, number)
if not meta then return -1 end
if tonumber(redis.call('HGET', nums, number .. ':h') or '0') > 0 then return 0 end
local m = parse_meta(meta)
for _, k in ipairs(load_keys(m)) do redis.call('ZREM', k, number) end
redis.call('HDEL', nums, number, number .. ':h', number .. ':o')
redis.call('HINCRBY', nums, '#total', -1)
if m.state == 'draining' then redis.call('HINCRBY', nums, '#draining', -1) end
return 1
