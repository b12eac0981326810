-- Converts one key of layout 1 (a hash per session, per participant's routes, per
-- participant's sticky memory, and the `x` transitions) into layout 2's bucket records, and
-- deletes it in the same step: a run stopped half-way, or run twice, finds only what is left.
-- KEYS: 1 the layout-1 key (`s:<session key>`, `u:<idx>`, `k:<idx>` or `x`)
-- ARGV: 1 tag, 2 op ('session', 'routes', 'sticky', 'x'), 3 the session key or idx ('' for
--       'x'), 4 sticky window ms, 5 (x) members moved per call
-- Returns {done, dropped}: records converted and records left out (a route whose session is
-- gone, sticky memory past its window, an erased record of the oldest form); for 'x', {moved,
-- left in x}.
local old = KEYS[1]
local op, name = ARGV[2], ARGV[3]
local window = tonumber(ARGV[4])
local now = clock_ms()

-- A layout-1 session hash becomes one field of its bucket. Its blob stays as it was sealed
-- (JSON with the metadata inside, which the broker still reads), whole in `z`.
local function convert_session(skey)
  local key = TAG .. 's:' .. skey
  local all = redis.call('HGETALL', key)
  if #all == 0 then return 0, 0 end
  local f = {}
  for i = 1, #all, 2 do f[all[i]] = all[i + 1] end
  if f.t == 'r' then
    -- Erased by a version whose erasure already gave back the routes and the load: layout 2
    -- would give the load back a second time when the record ends, so it goes now.
    redis.call('DEL', key, TAG .. 'i:' .. skey)
    return 0, 1
  end
  local blob = f.z
  if not blob then
    local parts, n = {}, 1
    while f['z' .. n] do
      parts[n] = f['z' .. n]
      n = n + 1
    end
    blob = table.concat(parts)
  end
  local e = tonumber(f.e) or 0
  local co = tonumber(f.co)
  local held = tonumber(f.h)
  -- Layout 2 derives the hold as expiry + cool-off: keep the hold the record promised.
  if held and (co == nil or held ~= e + co) then co = math.max(0, held - e) end
  local rec = { t = f.t, m = f.m, n = f.n, c = f.c, e = e, co = co or 0, a = f.a or '',
    b = f.b or '', g = f.g, x = f.x, r = f.r, i = f.i, z = blob }
  put_session(skey, rec)
  rec.h = rec.e + rec.co
  due_push(skey, next_due(rec))
  redis.call('DEL', key)
  return 1, 0
end

if op == 'session' then
  local done, dropped = convert_session(name)
  return { done, dropped }
end

if op == 'routes' then
  local all = redis.call('HGETALL', old)
  local e = get_entry(name)
  local done, dropped, hold = 0, 0, 0
  for i = 1, #all, 2 do
    local number, sid = all[i], string.match(all[i + 1], '^([^|]*)|')
    local rec = sid and get_session(sid)
    if sid and not rec then
      -- Its session was not converted yet (a run that skipped it): do it now.
      convert_session(sid)
      rec = get_session(sid)
    end
    if rec and (rec.a == name or rec.b == name) then
      local current = e.routes[number] and get_session(e.routes[number])
      if not current or current.h < rec.h then e.routes[number] = sid end
      if rec.h > hold then hold = rec.h end
      done = done + 1
    else
      dropped = dropped + 1
    end
  end
  put_entry(name, e, now, window, hold)
  redis.call('DEL', old)
  return { done, dropped }
end

if op == 'sticky' then
  local all = redis.call('HGETALL', old)
  local e = get_entry(name)
  local done, dropped = 0, 0
  for i = 1, #all, 2 do
    local short = string.sub(all[i], 1, 8)
    local number, at = string.match(all[i + 1], '^([^|]*)|(%d+)$')
    at = tonumber(at)
    local newer = true
    for _, st in ipairs(e.stubs) do
      if st.other == short and at and st.at >= at then newer = false end
    end
    if number and number ~= '' and at and at + window > now and newer then
      add_stub(e, number, all[i], at)
      done = done + 1
    else
      dropped = dropped + 1
    end
  end
  put_entry(name, e, now, window, 0)
  redis.call('DEL', old)
  return { done, dropped }
end

if op == 'x' then
  -- Every converted record already put its bucket in `xb`; this only makes sure of it for
  -- each entry of `x`, a batch at a time so no call holds Redis for long.
  local batch = redis.call('ZRANGE', old, 0, tonumber(ARGV[5]) - 1)
  for _, skey in ipairs(batch) do
    local rec = get_session(skey)
    if rec then due_push(skey, next_due(rec)) end
  end
  if #batch > 0 then redis.call('ZREM', old, unpack(batch)) end
  return { #batch, redis.call('ZCARD', old) }
end

return redis.error_reply('unknown op ' .. tostring(op))
