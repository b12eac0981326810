-- Claims due texts for a lease: each one's score moves to the end of the lease, so no other
-- worker sees it until then, and it gets a fresh token that settling must present. A worker
-- that dies holding a lease leaves the text to be claimed again once the lease has run out.
-- KEYS: 1 queue. ARGV: 1 tag, 2 now ms, 3 lease ms, 4 limit, 5 token (unique per call),
--       6 how long to keep a record given up as of unknown outcome, or '' (see below)
-- Returns a flat list, five items per text: id, token, sealed text, claims so far, and the
-- sealed numbers beside it ('' when none; events of pools that send numbers), so a worker
-- needs no further read to send what it claimed.
--
-- With ARGV[6] (outbound texts), an item whose last lease ran out unsettled is not handed out
-- again: its holder died or hung after claiming it, so the provider may have taken it, and a
-- text sent twice reaches a person twice. It is given up as of unknown outcome instead and
-- returned with an empty token, so the worker records that. Events (no ARGV[6]) go again:
-- their receivers dedupe on the event id.
local q = KEYS[1]
local now, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
local due = redis.call('ZRANGEBYSCORE', q, '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
for i, id in ipairs(due) do
  local m = TAG .. 'm:' .. id
  local rec = redis.call('HMGET', m, 'b', 'z')
  local sealed = rec[1]
  if sealed and ARGV[6] and ARGV[6] ~= '' and redis.call('HEXISTS', m, 'l') == 1 then
    redis.call('ZREM', q, id)
    redis.call('HDEL', m, 'b', 'l')
    redis.call('HSET', m, 's', 'f', 'r', 'outcome unknown')
    redis.call('PEXPIRE', m, tonumber(ARGV[6]))
    table.insert(out, id)
    table.insert(out, '')
    table.insert(out, sealed)
    table.insert(out, redis.call('HGET', m, 'n') or '0')
    table.insert(out, rec[2] or '')
  elseif sealed then
    local token = ARGV[5] .. '.' .. i
    local claims = redis.call('HINCRBY', m, 'n', 1)
    redis.call('HSET', m, 'l', token)
    redis.call('ZADD', q, now + lease, id)
    table.insert(out, id)
    table.insert(out, token)
    table.insert(out, sealed)
    table.insert(out, claims)
    table.insert(out, rec[2] or '')
  else
    -- The record is gone (deleted by hand): there is nothing left to send.
    redis.call('ZREM', q, id)
  end
end
return out
