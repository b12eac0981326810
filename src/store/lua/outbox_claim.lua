-- Claims due texts for a lease: each one's score moves to the end of the lease, so no other
-- worker sees it until then, and it gets a fresh token that settling must present. A worker
-- that dies holding a lease leaves the text to be claimed again once the lease has run out.
-- KEYS: 1 queue. ARGV: 1 tag, 2 now ms, 3 lease ms, 4 limit, 5 token (unique per call),
--       6 how long to keep a record given up as of unknown outcome, or '' (see below)
-- Returns a flat list: first when the queue's earliest item falls due after this claim (its
-- score in ms: a retry, a lease that may run out, or '' when the queue is empty), so the
-- worker can come back then instead of polling; then five items per text: id, token, sealed
-- text, claims so far, and the sealed numbers beside it ('' when none; events of pools that
-- send numbers), so a worker needs no further read to send what it claimed.
--
-- With ARGV[6] (outbound texts), an item whose last lease ran out unsettled is not handed out
-- again: its holder died or hung after claiming it, so the provider may have taken it, and a
-- text sent twice reaches a person twice. It is given up as of unknown outcome instead and
-- returned with an empty token, so the worker records that. Events (no ARGV[6]) go again:
-- their receivers dedupe on the event id.
--
-- A claim of a backlog takes hundreds of items: each costs one read and one write of its
-- record, and the leases are written with one ZADD at the end.
local q = KEYS[1]
local now, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
local once = ARGV[6] and ARGV[6] ~= ''
local out = {}
local leased = {}
local due = redis.call('ZRANGEBYSCORE', q, '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
for i, id in ipairs(due) do
  local m = TAG .. 'm:' .. id
  local rec = redis.call('HMGET', m, 'b', 'z', 'l', 'n')
  local sealed = rec[1]
  if sealed and once and rec[3] then
    redis.call('ZREM', q, id)
    redis.call('HDEL', m, 'b', 'l')
    redis.call('HSET', m, 's', 'f', 'r', 'outcome unknown')
    redis.call('PEXPIRE', m, tonumber(ARGV[6]))
    table.insert(out, id)
    table.insert(out, '')
    table.insert(out, sealed)
    table.insert(out, rec[4] or '0')
    table.insert(out, rec[2] or '')
  elseif sealed then
    local token = ARGV[5] .. '.' .. i
    local claims = (tonumber(rec[4]) or 0) + 1
    redis.call('HSET', m, 'l', token, 'n', claims)
    table.insert(leased, id)
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
-- Lua's unpack is bounded by its C stack (8000 slots): leases go in chunks.
local until_ms = now + lease
for first = 1, #leased, 1000 do
  local args = {}
  for j = first, math.min(first + 999, #leased) do
    table.insert(args, until_ms)
    table.insert(args, leased[j])
  end
  redis.call('ZADD', q, unpack(args))
end
local first = redis.call('ZRANGE', q, 0, 0, 'WITHSCORES')
table.insert(out, 1, first[2] or '')
return out
