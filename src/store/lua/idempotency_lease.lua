-- Changes the lease of a running idempotent request, only while the caller still holds it.
-- KEYS[1] idem:<digest>. ARGV: 1 tag (unused), 2 owner token, 3 op, 4 lease ms (renew).
--   op 'renew' : the request is alive; the lease runs ARGV[4] ms from now.
--   op 'drop'  : the request created nothing; the key is free for a new attempt.
--   op 'lapse' : the request does not know whether it created anything (its reply from
--                Redis was lost); the next retry takes over at once and looks.
-- Returns 1 when the caller held the lease, 0 otherwise.
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local fp, lease, owner = string.match(v, '^p|([^|]*)|(%d+)|(.*)$')
if not fp or owner ~= ARGV[2] then return 0 end
local op = ARGV[3]
if op == 'drop' then
  redis.call('DEL', KEYS[1])
elseif op == 'lapse' then
  redis.call('SET', KEYS[1], 'p|' .. fp .. '|0|' .. owner, 'KEEPTTL')
else
  redis.call('SET', KEYS[1], 'p|' .. fp .. '|' .. (clock_ms() + tonumber(ARGV[4])) .. '|' .. owner,
    'KEEPTTL')
end
return 1
