-- Shared helpers, prepended to every script. Every key a script derives starts with the
-- shard tag it was given (ARGV[1]), so it lives in the same hash slot as the declared keys.
local TAG = ARGV[1]

-- Redis's own clock, in ms: the one clock every instance's scripts agree on. Also as a
-- string, built from TIME's digits: Lua prints a number through the C library's float
-- formatting, which costs more than the rest of a short script.
local function clock_ms_text()
  local t = redis.call('TIME')
  local us = t[2]
  local text = t[1] .. string.sub(string.rep('0', 6 - #us) .. us, 1, 3)
  return tonumber(text), text
end

local function clock_ms()
  return (clock_ms_text())
end

local function push_expiry(key, at)
  local current = redis.call('PEXPIRETIME', key)
  if current < 0 or current < at then
    redis.call('PEXPIREAT', key, at)
  end
end

-- Records live as fields of bucket hashes, so one key's overhead is shared by many records
-- and the hashes stay in Redis's compact listpack encoding (docs/architecture.md, Memory).
-- A participant's bucket is named by the first two characters of its blind index (4,096
-- buckets of a shard); a session's by the first two characters of its key and the top bits
-- of the third (4,096 too).
local function sbucket_name(skey)
  -- Position in the base32 alphabet of domain::ids (a table built here would be built on
  -- every call of every script).
  local at = string.find('0123456789abcdefghjkmnpqrstvwxyz', string.sub(skey, 3, 3), 1, true)
  return string.sub(skey, 1, 2) .. math.floor(((at or 1) - 1) / 8)
end

local function sbucket(skey)
  return TAG .. 's:' .. sbucket_name(skey)
end

local function ubucket(idx)
  return TAG .. 'u:' .. string.sub(idx, 1, 2)
end

-- A session record, one string: the fields below in this order, `|` between them (`c` and
-- `g` stored as `geo_code` and `put_session` say). The
-- sealed blob (both numbers and labels) comes last; base64 has no `|`. The end of the hold
-- is not stored: it is always the expiry (or the moment of closing) plus the cool-off.
-- Metadata, when a session has any, is sealed apart in `y:<session key>`, so one session's
-- large metadata cannot push a whole bucket out of the compact encoding.
local SFIELDS = { 't', 'm', 'n', 'c', 'e', 'co', 'a', 'b', 'g', 'x', 'r', 'i', 'z' }

-- One capture per field of SFIELDS, the blob last (written out: this runs on every call).
local SESSION_PATTERN =
  '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$'

-- Stored shorter than the record reads: the creation time as its distance to the expiry,
-- the geo level as one letter. Together they keep a record under an allocator size class.
local function geo_code(g)
  if g == 'area_code' then return 'a' elseif g == 'country' then return 'c'
  elseif g == 'any' then return '*' end
  return g or ''
end

local function geo_name(g)
  if g == 'a' then return 'area_code' elseif g == 'c' then return 'country'
  elseif g == '*' then return 'any' end
  return g
end

-- A session's options follow its blob (`|r,l600,d900,w<ms>`) only when it has any. An open
-- session whose idle deadline `w` comes before its expiry reads as ending then: `e` is the
-- deadline and `hard` the expiry, which is what is written back while it stays open.
local function get_session(skey)
  local raw = redis.call('HGET', sbucket(skey), skey)
  if not raw then return nil end
  -- Locals, then one table built at its size: a table grown field by field rehashes.
  local t, m, n, c, e, co, a, b, g, x, r, i, z = string.match(raw, SESSION_PATTERN)
  if not t then return nil end
  e, co = tonumber(e) or 0, tonumber(co) or 0
  local o = ''
  local bar = string.find(z, '|', 1, true)
  if bar then z, o = string.sub(z, 1, bar - 1), string.sub(z, bar + 1) end
  local rec = { t = t, m = m, n = n, c = e - (tonumber(c) or 0), e = e, co = co, a = a, b = b,
                g = geo_name(g), x = x, r = r, i = i, z = z, h = e + co, o = o }
  if o ~= '' then
    local w = tonumber(string.match(o, 'w(%d+)'))
    rec.w = w
    if w and t == 'o' and w < e then rec.hard, rec.e, rec.h = e, w, w + co end
  end
  return rec
end

local function put_session(skey, rec)
  local out = {}
  for i, name in ipairs(SFIELDS) do out[i] = tostring(rec[name] or '') end
  local e = (rec.t == 'o' and rec.hard) or rec.e
  out[5] = tostring(e)
  out[4] = tostring(tonumber(e) - (tonumber(rec.c) or tonumber(e)))
  out[9] = geo_code(rec.g)
  local o = rec.o or ''
  if rec.w then o = (string.gsub(o, 'w%d+', 'w' .. rec.w)) end
  if o ~= '' then out[#out + 1] = o end
  redis.call('HSET', sbucket(skey), skey, table.concat(out, '|'))
end

-- When the session's next transition falls due: its expiry while open, then the end of
-- its hold.
local function next_due(rec)
  if rec.t == 'o' then return rec.e end
  return rec.h
end

-- `xb` orders the session buckets (by name) by the earliest transition among their records
-- (a score may be early, never late: the reaper sets it exactly when it visits the bucket).
local function due_push(skey, at)
  redis.call('ZADD', TAG .. 'xb', 'LT', at, sbucket_name(skey))
end

local function del_session(skey)
  redis.call('HDEL', sbucket(skey), skey)
  redis.call('DEL', TAG .. 'y:' .. skey)
end

-- A participant's entry in its bucket: items separated by `,`. A route the participant
-- holds is `<proxy>=<session key>` (what it reaches, its times and mode are the session
-- record's); once the hold ends it becomes sticky memory, `<proxy>~<other's index, first 8
-- characters>~<ms>`: which number the two last shared, and when. A PIN session the
-- participant is in is `<proxy>#<session key>`: no route, so one number may carry many of
-- them for one participant; the item is how a caller is known to have PIN sessions on a
-- number, and how erasure finds them.
local STUBS_KEPT = 16

local function get_entry(idx)
  local raw = redis.call('HGET', ubucket(idx), idx)
  local e = { routes = {}, stubs = {}, pins = {} }
  if not raw then return e end
  for item in string.gmatch(raw, '[^,]+') do
    local number, sid = string.match(item, '^([^=~#]+)=(.+)$')
    local pnumber, psid = string.match(item, '^([^=~#]+)#(.+)$')
    if number then
      e.routes[number] = sid
    elseif pnumber then
      table.insert(e.pins, { number = pnumber, sid = psid })
    else
      local n, other, at = string.match(item, '^([^~]+)~([^~]*)~(%d+)$')
      if n then table.insert(e.stubs, { number = n, other = other, at = tonumber(at) }) end
    end
  end
  return e
end

-- Removes the sticky memory the participants whose index starts with `other` (8
-- characters, which also name their bucket) keep about `short` (the start of another
-- index). Returns how many entries changed.
local drop_stubs_about

-- Writes an entry back, keeping the newest stubs that are inside the sticky window; an
-- entry left with nothing is removed. A stub dropped for room is dropped on the other side
-- too, so sticky memory of a pair is on both sides or neither (erasing either finds it all).
-- The bucket lives as long as its longest hold or sticky memory.
local function put_entry(idx, e, now, window, hold)
  local items = {}
  for number, sid in pairs(e.routes) do table.insert(items, number .. '=' .. sid) end
  for _, p in ipairs(e.pins) do table.insert(items, p.number .. '#' .. p.sid) end
  table.sort(e.stubs, function(x, y) return x.at > y.at end)
  local kept = 0
  for _, st in ipairs(e.stubs) do
    if st.at + window <= now then
      -- Past the window on both sides alike: each side drops it when next written.
    elseif kept < STUBS_KEPT then
      table.insert(items, st.number .. '~' .. st.other .. '~' .. st.at)
      kept = kept + 1
    else
      drop_stubs_about(st.other, string.sub(idx, 1, 8), now, window)
    end
  end
  local key = ubucket(idx)
  if #items == 0 then
    redis.call('HDEL', key, idx)
    return
  end
  redis.call('HSET', key, idx, table.concat(items, ','))
  push_expiry(key, math.max(hold or 0, now + window))
end

drop_stubs_about = function(other, short, now, window)
  local changed = 0
  local bucket = redis.call('HGETALL', TAG .. 'u:' .. string.sub(other, 1, 2))
  for i = 1, #bucket, 2 do
    local idx = bucket[i]
    if string.sub(idx, 1, 8) == other then
      local e = get_entry(idx)
      local before = #e.stubs
      for j = #e.stubs, 1, -1 do
        if e.stubs[j].other == short then table.remove(e.stubs, j) end
      end
      if #e.stubs ~= before then
        changed = changed + 1
        put_entry(idx, e, now, window, 0)
      end
    end
  end
  return changed
end

-- Sticky memory of one participant about another: one stub per other participant.
local function add_stub(e, number, other, at)
  local short = string.sub(other, 1, 8)
  for i = #e.stubs, 1, -1 do
    if e.stubs[i].other == short then table.remove(e.stubs, i) end
  end
  table.insert(e.stubs, { number = number, other = short, at = at })
end

-- The PINs of a number's PIN sessions: a hash, `k:<proxy>`, from a PIN's blind index (upper
-- case hex, so that no option pattern of a record can match inside it) to
-- `<session key>|<side whose PIN it is>`. A PIN session's record carries
-- `P<length>.<side 0's index>.<side 1's index>` among its options.
local function pin_key(number)
  return TAG .. 'k:' .. number
end

-- The PIN indexes of a PIN session's record ({[1] = side 0's, [2] = side 1's}), or nil for a
-- session reached by routes.
local function pins_of(rec)
  if not rec.o or rec.o == '' then return nil end
  local pa, pb = string.match(rec.o, 'P%d%.(%x*)%.(%x*)')
  if not pa then return nil end
  return { pa, pb }
end

-- Removes a participant's PIN item for one session; true when there was one.
local function drop_pin_item(e, sid)
  for i = #e.pins, 1, -1 do
    if e.pins[i].sid == sid then
      table.remove(e.pins, i)
      return true
    end
  end
  return false
end

-- Frees a PIN of a session on its number, unless another session has taken it since.
local function free_pin(number, pin_idx, sid)
  if not pin_idx or pin_idx == '' then return end
  local key = pin_key(number)
  local v = redis.call('HGET', key, pin_idx)
  if v and string.sub(v, 1, #sid + 1) == sid .. '|' then redis.call('HDEL', key, pin_idx) end
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
