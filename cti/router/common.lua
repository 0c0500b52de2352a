-- Shared by every router script: store.py puts it in front of each one. ARGV[1] is the key namespace.
--
-- The first half is the Lua port of routing/. routing/README.md is the contract: the same inputs
-- give the same pair, the same score and the same tie-breaks. Lua numbers are doubles, and the
-- config bounds keep every value below 2^53, so they hold exact integers. Never put a number into a
-- string with `..` or cjson.encode (both print 14 digits); redis.call arguments and integer replies
-- are exact. Ids compare byte-wise with lt_bytes: Lua's `<` on strings is strcoll, and
-- redis-server takes LC_COLLATE from its environment.
--
-- The second half keeps the indexes (store.py's docstring has the key layout).

local NS = ARGV[1]
local CONFIG, WAITING, RESERVED = NS .. 'config', NS .. 'waiting', NS .. 'reserved'
local ESC, AGENTS = NS .. 'esc', NS .. 'agents'
local OFFERS, WRAP, CHANGES = NS .. 'offers', NS .. 'wrap', NS .. 'changes'
local CHANGES_KEPT = 10000
local AGED_BASE, MAX_WAIT_MS = 1e15, 1e12
local SKILLS, ALTERNATIVE, OVERFLOW = 2, 1, 0
local TOP_LEVEL = 5      -- store.py refuses agent levels above it
local MAX_PASSED = 32    -- a decision reports at most this many passed-over ids

local function call_key(id) return NS .. 'call:' .. id end
local function agent_key(id) return NS .. 'agent:' .. id end
local function calls_key(field) return NS .. 'w:' .. field end
local function head_key(field) return NS .. 'h:' .. field end
local function ready_key(key) return NS .. 'r:' .. key end

local function lt_bytes(a, b)
  if a == b then return false end
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local function intersects(a, b)
  for k in pairs(a) do
    if b[k] then return true end
  end
  return false
end

-- ----- the decision (routing/) ------------------------------------------------------------------

local function load_config()
  local g = redis.call('HGET', CONFIG, 'g')
  if not g then error({err = 'ROUTER no routing config at ' .. CONFIG .. ': call RouterStore.apply_config()'}) end
  local cfg = cjson.decode(g)
  cfg.entries = {}
  return cfg
end

-- An entry point's settings, decoded once per script run; nil when the config lacks it.
local function entry(cfg, name)
  local ep = cfg.entries[name]
  if ep == nil then
    local raw = redis.call('HGET', CONFIG, 'ep:' .. name)
    ep = raw and cjson.decode(raw) or false
    cfg.entries[name] = ep
  end
  return ep or nil
end

-- routing.escalation.wait_ms
local function wait_of(at, now)
  local w = now - at
  if w < 0 then return 0 end
  if w > MAX_WAIT_MS then return MAX_WAIT_MS end
  return w
end

-- How many steps have fired: always a prefix, since after_s strictly increases.
local function fired(ep, wait)
  local n = 0
  for i, step in ipairs(ep.steps) do
    if wait < step.at_ms then break end
    n = i
  end
  return n
end

-- routing.escalation.preferred_agent
local function preferred_of(cfg, call)
  if cfg.am and call.pref then return call.pref end
  if cfg.window_ms ~= 0 and call.last and call.served and call.at - call.served <= cfg.window_ms then
    return call.last
  end
  return nil
end

-- routing.escalation.effective with the first n steps fired: requirements, preferred, exclusive.
local function widened(cfg, ep, call, n)
  local base = call.req or ep.req
  local any_of, overflow, cap, dropped = {}, {}, TOP_LEVEL, false
  for s, l in pairs(base.any_of) do any_of[s] = l end
  for g in pairs(base.overflow) do overflow[g] = true end
  for i = 1, n do
    local step = ep.steps[i]
    for s, l in pairs(step.any_of) do
      if any_of[s] == nil or l < any_of[s] then any_of[s] = l end
    end
    for g in pairs(step.overflow) do overflow[g] = true end
    if step.min and step.min < cap then cap = step.min end
    dropped = dropped or step.drop
  end
  local skills = {}
  for s, l in pairs(base.skills) do skills[s] = math.min(l, cap) end
  for s, l in pairs(any_of) do any_of[s] = math.min(l, cap) end
  local req = {skills = skills, any_of = any_of, lang = base.lang or call.lang, groups = base.groups,
               overflow = overflow}
  local pref = nil
  if not dropped then pref = preferred_of(cfg, call) end
  return req, pref, pref ~= nil and ep.wfp
end

local function effective(cfg, ep, call, now)
  local wait = wait_of(call.at, now)
  local n = fired(ep, wait)
  local req, pref, exclusive = widened(cfg, ep, call, n)
  return {step = n, wait = wait, req = req, pref = pref, exclusive = exclusive}
end

-- routing.score.call_score
local function score_of(cfg, tier, wait)
  if cfg.max_wait_ms and wait >= cfg.max_wait_ms then return AGED_BASE + wait end
  if cfg.policy == 'strict' then return tier.p end
  if cfg.policy == 'priority_plus_wait' then return tier.p * 1000 + math.min(wait * cfg.per_s, cfg.cap * 1000) end
  return math.floor(wait / tier.w)  -- sla_deficit; exact: wait < 2^53 and w <= 3600
end

-- routing.eligibility.match: path and proficiency, or nil and the reason.
local function qualify(agent, req)
  if req.lang and not agent.languages[req.lang] then return nil, 'language' end
  local problem
  if next(req.groups) and not intersects(req.groups, agent.groups) then
    problem = 'not_in_group'
  else
    local missing, too_low, total = false, false, 0
    for s, need in pairs(req.skills) do
      local have = agent.skills[s]
      if have == nil then missing = true elseif have < need then too_low = true else total = total + have end
    end
    if not missing and not too_low then return SKILLS, total end
    local best = nil
    for s, need in pairs(req.any_of) do
      local have = agent.skills[s] or 0
      if have >= need and (best == nil or have > best) then best = have end
    end
    if best then return ALTERNATIVE, best end
    problem = missing and 'missing_skill' or 'level_too_low'
  end
  if intersects(req.overflow, agent.groups) then return OVERFLOW, 0 end
  return nil, problem
end

-- routing.decide._verdict: status, then the hold for a preferred agent, then match.
local function verdict(agent, eff)
  if agent.status ~= 'ready' then return nil, agent.status end
  if eff.exclusive and agent.id ~= eff.pref then return nil, 'waiting_for_preferred' end
  return qualify(agent, eff.req)
end

-- ----- the state and its indexes ----------------------------------------------------------------

local function load_agent(id)
  local f = redis.call('HMGET', agent_key(id), 'p', 'status', 'idle', 'call')
  if not f[1] then return nil end
  local a = cjson.decode(f[1])
  a.id, a.status, a.idle, a.call = id, f[2], tonumber(f[3]), f[4] or nil
  return a
end

local function load_call(id)
  local f = redis.call('HMGET', call_key(id), 'd', 'state', 'ix', 'agent')
  if not f[1] then return nil end
  local c = cjson.decode(f[1])
  c.id, c.state, c.ix_json, c.agent = id, f[2], f[3], f[4] or nil
  return c
end

-- routing.eligibility.agent_index_keys
local function agent_keys(agent)
  local keys = {'any'}
  for s in pairs(agent.skills) do keys[#keys + 1] = 'skill:' .. s end
  for g in pairs(agent.groups) do keys[#keys + 1] = 'group:' .. g end
  return keys
end

-- A ready agent is in r:any, r:group:<g> for each group and r:skill:<s>:<level> for each skill,
-- scored by idle_since_ms: match_call reads only the levels a call accepts. (Leaving them there on
-- a reservation saves seven writes, but the next match_call then wades through the leavers.)
local function ready_keys(agent)
  local keys = {'any'}
  for s, l in pairs(agent.skills) do keys[#keys + 1] = 'skill:' .. s .. ':' .. l end
  for g in pairs(agent.groups) do keys[#keys + 1] = 'group:' .. g end
  return keys
end

local function set_ready(agent, on)
  for _, k in ipairs(ready_keys(agent)) do
    if on then redis.call('ZADD', ready_key(k), agent.idle, agent.id)
    else redis.call('ZREM', ready_key(k), agent.id) end
  end
end

-- routing.eligibility.index_keys, as a set.
local function index_keys(req)
  local keys, first = {}, nil
  for g in pairs(req.overflow) do keys['group:' .. g] = true end
  for s in pairs(req.skills) do
    if first == nil or lt_bytes(s, first) then first = s end
  end
  if first then
    keys['skill:' .. first] = true
    for s in pairs(req.any_of) do keys['skill:' .. s] = true end
  else
    keys['any'] = true
  end
  return keys
end

-- When the first step after the first n that adds index keys fires, as an offset from enqueue.
local function next_widening(ep, n)
  for i = n + 1, #ep.steps do
    local step = ep.steps[i]
    if next(step.any_of) or next(step.overflow) then return step.at_ms end
  end
  return nil
end

-- h:<tier>:<key> holds the first member of w:<tier>:<key> as '<enqueued_at_ms> <id>', so a match
-- opens all its sorted sets with one MGET instead of a ZRANGE each.
local function head_of(h)
  local sp = string.find(h, ' ', 1, true)
  return tonumber(string.sub(h, 1, sp - 1)), string.sub(h, sp + 1)
end

local function index_add(field, at, id)
  redis.call('ZADD', calls_key(field), at, id)
  local h = redis.call('GET', head_key(field))
  if h then
    local hat, hid = head_of(h)
    if at > hat or (at == hat and not lt_bytes(id, hid)) then return end
  end
  redis.call('SET', head_key(field), string.format('%.0f', at) .. ' ' .. id)
end

local function index_remove(field, id)
  redis.call('ZREM', calls_key(field), id)
  local h = redis.call('GET', head_key(field))
  if h and select(2, head_of(h)) == id then
    local first = redis.call('ZRANGE', calls_key(field), 0, 0, 'WITHSCORES')
    if first[1] then redis.call('SET', head_key(field), first[2] .. ' ' .. first[1])
    else redis.call('DEL', head_key(field)) end
  end
end

local function ix_of(call)  -- the index keys a call is under, decoded only when they change
  if call.ix == nil then call.ix = cjson.decode(call.ix_json) end
  return call.ix
end

-- Index a waiting call under the keys of its first n steps (keys only grow with steps, so the
-- ones it has stay), and schedule the next step that adds some in ESC.
local function place(cfg, ep, call, n)
  local have = {}
  for _, k in ipairs(ix_of(call)) do have[k] = true end
  for k in pairs(index_keys((widened(cfg, ep, call, n)))) do
    if not have[k] then
      index_add(call.tier .. ':' .. k, call.at, call.id)
      call.ix[#call.ix + 1] = k
    end
  end
  redis.call('HSET', call_key(call.id), 'ix', cjson.encode(call.ix))
  local after = next_widening(ep, n)
  if after then redis.call('ZADD', ESC, call.at + after, call.id) else redis.call('ZREM', ESC, call.id) end
end

-- Out of every index (the caller records that: ix = '[]').
local function unplace(call)
  for _, k in ipairs(ix_of(call)) do index_remove(call.tier .. ':' .. k, call.id) end
  redis.call('ZREM', ESC, call.id)
  call.ix = {}
end

-- Re-index the calls whose next widening step has fired by now. Each call is re-indexed at most
-- once per such step, so this is amortised; a clock ahead of another server's only indexes a
-- call early, under more keys, which the eligibility check makes harmless.
local function catch_up(cfg, now)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', ESC, '-inf', now)) do
    local call = load_call(id)
    local ep = call and call.state == 'waiting' and entry(cfg, call.ep)
    if ep then place(cfg, ep, call, fired(ep, wait_of(call.at, now)))
    else redis.call('ZREM', ESC, id) end
  end
end

-- Every status written goes to the changes stream too, for the server to push as agent.state
-- (store.py, RouterStore.changes): the entry id is Redis's clock in ms, when the status began.
-- wrap_until is passed as an argument, never through `..` (exact up to 2^53).
local function changed(id, status, reason, call, wrap_until)
  redis.call('XADD', CHANGES, 'MAXLEN', '~', CHANGES_KEPT, '*', 'a', id, 's', status, 'r', reason or '',
             'c', call or '', 'w', wrap_until or '')
end

-- Both sides of a reservation in one step: the call leaves the indexes, the agent the ready sets.
-- OFFERS holds it from now until its dial begins, so a sweep finds offers no Redirect ever rang.
local function reserve(call, agent, now)
  unplace(call)
  set_ready(agent, false)
  redis.call('ZREM', WAITING, call.id)
  redis.call('HSET', call_key(call.id), 'state', 'reserved', 'agent', agent.id, 'ix', '[]')
  redis.call('HSET', RESERVED, call.id, agent.id)
  redis.call('HSET', agent_key(agent.id), 'status', 'reserved', 'call', call.id)
  redis.call('ZADD', OFFERS, now, call.id)
  changed(agent.id, 'reserved', '', call.id, nil)
end

-- An agent's new status, their place in the ready sets and their idle time kept right in one place:
-- becoming ready from anything but reserved starts the idle time at now (a withdrawn offer did not
-- end it). call: the call the status is about (on_call, wrap_up), nil for none. wrap_until: when a
-- wrap-up ends (WRAP, read by the sweep), nil for no deadline.
local function set_status(agent, status, now, reason, call, wrap_until)
  if status == 'ready' and agent.status ~= 'ready' then
    if agent.status ~= 'reserved' then agent.idle = now end
    set_ready(agent, true)
  elseif status ~= 'ready' and agent.status == 'ready' then
    set_ready(agent, false)
  end
  redis.call('HSET', agent_key(agent.id), 'status', status, 'idle', agent.idle, 'reason', reason or '')
  if call then redis.call('HSET', agent_key(agent.id), 'call', call)
  else redis.call('HDEL', agent_key(agent.id), 'call') end
  if wrap_until then redis.call('ZADD', WRAP, wrap_until, agent.id)
  else redis.call('ZREM', WRAP, agent.id) end
  agent.status, agent.call = status, call
  changed(agent.id, status, reason, call, wrap_until)
end

-- A sorted set read in order a few members at a time: s.id and s.at (the score) are the current
-- member. match_agent opens its streams past the heads it already has ({key =, off = 1}).
local function stream(key)
  return {key = key, off = 0}
end

local function pull(s)
  if s.buf == nil or s.i > #s.buf then
    local size = s.size or 4
    s.buf = redis.call('ZRANGE', s.key, s.off, s.off + size - 1, 'WITHSCORES')
    s.off, s.i, s.size = s.off + size, 1, size < 64 and size * 4 or size
    if #s.buf == 0 then return false end
  end
  s.id, s.at = s.buf[s.i], tonumber(s.buf[s.i + 1])
  s.i = s.i + 2
  return true
end

-- The reply: one JSON string (one bulk reply parses faster than a nested array), with the two
-- big numbers as decimal strings, since cjson would print them with 14 digits.
local function decision(call, agent, eff, score, passed)
  local req = eff.req
  return cjson.encode({
    call = call.id, agent = agent.id, step = eff.step, wait = string.format('%.0f', eff.wait),
    score = string.format('%.0f', score), pref = eff.pref, held = eff.exclusive, passed = passed,
    req = {skills = req.skills, any_of = req.any_of, lang = req.lang, groups = req.groups, overflow = req.overflow},
  })
end
