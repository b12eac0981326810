-- Starts or replays an idempotent request. KEYS[1] idem:<digest>.
-- ARGV: 1 tag (unused), 2 fingerprint, 3 pending ttl ms.
-- Returns {'fresh'}, {'running'}, {'conflict'} or {'done', sealed response}.
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], 'p|' .. ARGV[2], 'PX', ARGV[3])
  return { 'fresh' }
end
local kind, fp, body = string.match(v, '^(%a)|([^|]*)|?(.*)$')
if fp ~= ARGV[2] then return { 'conflict' } end
if kind == 'p' then return { 'running' } end
return { 'done', body }
