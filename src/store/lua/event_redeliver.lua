-- Queues a delivered or failed event again, with a fresh attempt count.
-- KEYS: 1 the shard's event queue. ARGV: 1 the queue's tag, 2 id, 3 now ms
-- Returns 1 when queued, 0 when unknown, still queued, or without a body.
local m = TAG .. 'm:' .. ARGV[2]
local state = redis.call('HGET', m, 's')
if not state or state == 'q' or redis.call('HEXISTS', m, 'b') == 0 then return 0 end
redis.call('HSET', m, 's', 'q', 'n', 0)
redis.call('HDEL', m, 'r')
redis.call('PERSIST', m)
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
ring(TAG .. 'bell')
return 1
