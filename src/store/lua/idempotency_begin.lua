-- Starts, takes over or replays an idempotent request. KEYS[1] idem:<digest>.
-- ARGV: 1 tag (unused), 2 fingerprint, 3 lease ms, 4 record ttl ms, 5 owner token.
-- A record is `p|<fingerprint>|<lease until ms>|<owner token>` while a request runs and
-- `d|<fingerprint>|<sealed response>` once it answered. The lease is short and kept alive by
-- the running request, so a request that died (crash, lost reply) holds the key for only a
-- few seconds; the record itself lives as long as a response would, so a different body is
-- refused all that time.
-- Returns {'fresh'}, {'takeover'}, {'running', ms left}, {'conflict'} or
-- {'done', sealed response}.
local now = clock_ms()
local v = redis.call('GET', KEYS[1])
local function hold()
  return 'p|' .. ARGV[2] .. '|' .. (now + tonumber(ARGV[3])) .. '|' .. ARGV[5]
end
if not v then
  redis.call('SET', KEYS[1], hold(), 'PX', ARGV[4])
  return { 'fresh' }
end
local kind, fp, rest = string.match(v, '^(%a)|([^|]*)|?(.*)$')
if fp ~= ARGV[2] then return { 'conflict' } end
if kind == 'd' then return { 'done', rest } end
local lease = tonumber(string.match(rest, '^(%d+)') or '0')
if lease > now then return { 'running', tostring(lease - now) } end
-- The request holding the key stopped renewing it: this one carries on in its place.
redis.call('SET', KEYS[1], hold(), 'KEEPTTL')
return { 'takeover' }
