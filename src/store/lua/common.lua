-- Shared helpers, prepended to every script. Every key a script derives starts with the
-- shard tag it was given (ARGV[1]), so it lives in the same hash slot as the declared keys.
local TAG = ARGV[1]

-- Redis's own clock, in ms: the one clock every instance's scripts agree on.
local function clock_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A route record: session key | mode | open until ms | held until ms | sealed other party.
local function parse_route(rec)
  local sid, mode, open_until, held_until, other =
    string.match(rec, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
  if not sid then return nil end
  return { sid = sid, mode = mode, open_until = tonumber(open_until),
           held_until = tonumber(held_until), other = other }
end

local function format_route(r)
  return r.sid .. '|' .. r.mode .. '|' .. r.open_until .. '|' .. r.held_until .. '|' .. r.other
end

-- Number metadata in the nums hash: caps | state | geo tags (comma separated).
local function parse_meta(meta)
  local caps, state, geos = string.match(meta, '^([^|]*)|([^|]*)|(.*)$')
  return { caps = caps, state = state, geos = geos }
end

local function classes(caps)
  local out = {}
  local v = string.find(caps, 'v', 1, true) ~= nil
  local s = string.find(caps, 's', 1, true) ~= nil
  if v then table.insert(out, 'v') end
  if s then table.insert(out, 's') end
  if v and s then table.insert(out, 'b') end
  return out
end

-- Every load index a number is a member of while active.
local function load_keys(meta)
  local keys = {}
  for _, class in ipairs(classes(meta.caps)) do
    table.insert(keys, TAG .. 'l:' .. class .. ':*')
    for geo in string.gmatch(meta.geos, '[^,]+') do
      table.insert(keys, TAG .. 'l:' .. class .. ':' .. geo)
    end
  end
  return keys
end

local function push_expiry(key, at)
  local current = redis.call('PEXPIRETIME', key)
  if current < 0 or current < at then
    redis.call('PEXPIREAT', key, at)
  end
end

-- Change a number's holding count, keeping its load indexes in step while it is active.
local function add_load(nums, number, delta)
  local meta = redis.call('HGET', nums, number)
  redis.call('HINCRBY', nums, number .. ':h', delta)
  if meta then
    local m = parse_meta(meta)
    if m.state == 'active' then
      for _, k in ipairs(load_keys(m)) do
        redis.call('ZINCRBY', k, delta, number)
      end
    end
  end
end

-- A session's sealed blob is kept in fields of at most 60 bytes (`z1`, `z2`, ...): Redis
-- keeps a hash whose values are all under 64 bytes in its compact listpack encoding, which
-- roughly halves the session record's memory.
local function put_blob(s, blob)
  local n = 1
  while redis.call('HDEL', s, 'z' .. n) == 1 do n = n + 1 end
  redis.call('HDEL', s, 'z')
  n = 1
  for i = 1, #blob, 60 do
    redis.call('HSET', s, 'z' .. n, string.sub(blob, i, i + 59))
    n = n + 1
  end
end

-- Wakes the workers listening on a queue's bell channel (store::doorbell); the queue, not the
-- message, is the truth, so a ring nobody hears only leaves the item to the next sweep. A
-- ring refused (an ACL user without the channel) must not undo the change it announces.
local function ring(channel)
  redis.pcall('PUBLISH', channel, '')
end

-- Events live in the shard's own queue, so a script records the event of a change in the same
-- step as the change (written or not at all, together). `body` is the JSON the app receives
-- (no numbers); `numbers` the participants' numbers, sealed, for pools that send them.
local EV = TAG .. 'ev:'
-- `owners` (blind indexes) are the participants whose numbers `numbers` holds: each keeps a
-- set of such events, so erasing the participant can strip the numbers from them.
local function put_event(id, etype, body, numbers, now, owners)
  if id == nil or id == '' then return end
  local m = EV .. 'm:' .. id
  redis.call('HSET', m, 'b', body, 's', 'q', 'n', 0, 't', etype, 'c', now)
  if numbers and numbers ~= '' then
    redis.call('HSET', m, 'z', numbers)
    for _, idx in ipairs(owners or {}) do
      if idx and idx ~= '' then
        local set = EV .. 'p:' .. idx
        redis.call('SADD', set, id)
        push_expiry(set, now + 31 * 86400000)
      end
    end
  end
  redis.call('ZADD', EV .. 'q', now, id)
  redis.call('ZADD', EV .. 'all', now, id)
  ring(EV .. 'bell')
  -- The listing index forgets what is older than any record can be (failed events are kept
  -- 30 days), so it does not grow without bound when nobody lists events.
  redis.call('ZREMRANGEBYSCORE', EV .. 'all', '-inf', now - 31 * 86400000)
end

-- Fills a `__NAME__` placeholder of an event body with a value of ours (ids, numbers of the
-- pool, statuses): none holds a `%`, which gsub would read as a pattern item.
local function fill(body, name, value)
  return (string.gsub(body, '__' .. name .. '__', tostring(value)))
end
