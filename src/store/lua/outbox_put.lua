-- Queues a sealed outbound text, once per id: a retried webhook queues nothing new, even
-- after the first copy was sent (its record outlives the text for a while).
-- KEYS: 1 queue. ARGV: 1 tag, 2 id, 3 sealed text, 4 due ms
-- Returns 1 when queued, 0 when the id was seen before.
local q = KEYS[1]
local m = TAG .. 'm:' .. ARGV[2]
if redis.call('EXISTS', m) == 1 then return 0 end
redis.call('HSET', m, 'b', ARGV[3], 's', 'q', 'n', 0)
redis.call('ZADD', q, ARGV[4], ARGV[2])
ring(TAG .. 'bell')
return 1
