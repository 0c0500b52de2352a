-- An agent's profile and status, and their place in the ready sets, in one atomic step.
-- ARGV: namespace, 'put', id, profile JSON, status, idle_since_ms, not-ready reason ('' = none)
--    or namespace, 'init', id, profile JSON, status, now_ms, not-ready reason ('' = none)
--    or namespace, 'status', id, status, now_ms, not-ready reason ('' = none)
--    or namespace, 'cas', id, expected statuses (comma-separated), expected call ('' = any), status, now_ms,
--       not-ready reason ('' = none), call the new status is about ('' = none), wrap-up end ms ('' = none)
--    or namespace, 'wrapped', now_ms
--    or namespace, 'extend', id, now_ms, seconds: a wrap-up going on ends that much later (from its end,
--       or from now if that has passed); replies {the new end ms, or 0 when not in wrap-up; the status}.
-- 'put' and 'status' clear the agent's side of a reservation (the call's side is remove_call's or requeue's).

local op = ARGV[2]

-- Every wrap-up due by now ends: the agent is ready again. Replies with the ids made ready, so the
-- server that ran it (and only that one) offers them the next call.
if op == 'wrapped' then
  local now, done = tonumber(ARGV[3]), {}
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', WRAP, '-inf', ARGV[3])) do
    local agent = load_agent(id)
    if agent and agent.status == 'wrap_up' then
      set_status(agent, 'ready', now, '', nil, nil)
      done[#done + 1] = id
    else
      redis.call('ZREM', WRAP, id)
    end
  end
  return done
end

local id = ARGV[3]
local old = load_agent(id)

if op == 'extend' then
  if not old then return {0, ''} end
  if old.status ~= 'wrap_up' then return {0, old.status} end
  local now, add = tonumber(ARGV[4]), tonumber(ARGV[5])
  local ends = tonumber(redis.call('ZSCORE', WRAP, id) or now)
  local until_ms = math.max(ends, now) + add
  local reason = redis.call('HGET', agent_key(id), 'reason') or ''
  set_status(old, 'wrap_up', now, reason, old.call, until_ms)
  return {until_ms, 'wrap_up'}
end

local function put(profile, status, idle, reason)
  if old and old.status == 'ready' then set_ready(old, false) end
  local agent = cjson.decode(profile)
  agent.id, agent.status, agent.idle = id, status, tonumber(idle)
  redis.call('HSET', agent_key(id), 'p', profile, 'status', status, 'idle', idle, 'reason', reason)
  redis.call('HDEL', agent_key(id), 'call')
  redis.call('ZREM', WRAP, id)
  redis.call('SADD', AGENTS, id)
  if status == 'ready' then set_ready(agent, true) end
  changed(id, status, reason, nil, nil)
end

if op == 'put' then
  put(ARGV[4], ARGV[5], ARGV[6], ARGV[7])
  return 1
end

-- A server starting: a new agent gets the status given, idle from now; one already here (another
-- server runs, or this one restarted) keeps status, idle time and call, and takes the new profile.
if op == 'init' then
  if not old then
    put(ARGV[4], ARGV[5], ARGV[6], ARGV[7])
    return 1
  end
  if old.status == 'ready' then set_ready(old, false) end
  local agent = cjson.decode(ARGV[4])
  agent.id, agent.status, agent.idle = id, old.status, old.idle
  redis.call('HSET', agent_key(id), 'p', ARGV[4])
  if agent.status == 'ready' then set_ready(agent, true) end
  return 0
end

if op == 'cas' then
  -- Only from one of the expected statuses (and for the expected call): several servers handle the
  -- same events, and only the first to ask moves the agent. Replies {1 if moved, the status before}.
  if not old then return {0, ''} end
  local ok = false
  for s in string.gmatch(ARGV[4], '[^,]+') do
    if s == old.status then ok = true end
  end
  if ok and ARGV[5] ~= '' and old.call ~= ARGV[5] then ok = false end
  local before = old.status
  if not ok then return {0, before} end
  set_status(old, ARGV[6], tonumber(ARGV[7]), ARGV[8], ARGV[9] ~= '' and ARGV[9] or nil,
             ARGV[10] ~= '' and tonumber(ARGV[10]) or nil)
  return {1, before}
end

-- 'status'
if not old then return 0 end
set_status(old, ARGV[4], tonumber(ARGV[5]), ARGV[6], nil, nil)
return 1
