-- A call's arrival, dial, end and requeue, in one atomic step each.
-- ARGV: namespace, 'enqueue', id, call JSON, channel ('' = none)
--    or namespace, 'remove', id
--    or namespace, 'requeue', id, agent status ('not_ready' or 'ready'), not-ready reason ('' = the config's),
--       the agent it must be reserved for ('' = whoever)
--    or namespace, 'dialed', id, agent
--    or namespace, 'settle', id, agent ('' = whoever), that agent's status, not-ready reason, now_ms,
--       '1' to keep the call on the agent ('' not to)
--    or namespace, 'expire', cutoff_ms.

local op = ARGV[2]
local cfg = load_config()

-- The agent a reserved call was reserved for, if they still are; the reservation's agent side ends here.
local function held_agent(call)
  local agent = call.agent and load_agent(call.agent)
  if agent and agent.status == 'reserved' and agent.call == call.id then
    redis.call('HDEL', agent_key(agent.id), 'call')
    agent.call = nil
    return agent
  end
  return nil
end

-- Back in its place (its enqueued_at_ms is kept), from step 0 of the index; its agent, if still
-- reserved for it, becomes status (not ready for reason, by default the config's RONA reason).
local function requeue(call, status, reason)
  local id = call.id
  redis.call('HSET', call_key(id), 'state', 'waiting')
  redis.call('HDEL', call_key(id), 'agent')
  redis.call('HDEL', RESERVED, id)
  redis.call('ZREM', OFFERS, id)
  redis.call('ZADD', WAITING, call.at, id)
  call.ix = {}
  local ep = entry(cfg, call.ep)
  if ep then place(cfg, ep, call, 0) else redis.call('HSET', call_key(id), 'ix', '[]') end
  local agent = held_agent(call)
  if agent then
    local why = status == 'not_ready' and (reason ~= '' and reason or cfg.rona) or ''
    set_status(agent, status, agent.idle, why, nil, nil)
  end
  return agent
end

-- Offers older than the cutoff whose dial never began (the server that reserved them died before its
-- Redirect, or Asterisk never ran it): back in the queue, their agents ready. Replies call, agent, ...
if op == 'expire' then
  local out = {}
  for _, cid in ipairs(redis.call('ZRANGEBYSCORE', OFFERS, '-inf', ARGV[3])) do
    local call = load_call(cid)
    if call and call.state == 'reserved' then
      local agent = requeue(call, 'ready', '')
      out[#out + 1] = cid
      out[#out + 1] = agent and agent.id or ''
    else
      redis.call('ZREM', OFFERS, cid)
    end
  end
  return out
end

local id = ARGV[3]
local call = load_call(id)

if op == 'enqueue' then
  if call then return 0 end
  call = cjson.decode(ARGV[4])
  call.id, call.ix = id, {}
  redis.call('HSET', call_key(id), 'd', ARGV[4], 'state', 'waiting', 'ix', '[]')
  if ARGV[5] and ARGV[5] ~= '' then redis.call('HSET', call_key(id), 'ch', ARGV[5]) end
  redis.call('ZADD', WAITING, call.at, id)
  local ep = entry(cfg, call.ep)
  if ep then place(cfg, ep, call, 0) end  -- catch_up adds the keys of steps already fired
  return 1
end

if not call then
  if op == 'settle' then return {'', '', 0} end
  return 0
end

-- Out of the store; replies how it was: 'waiting', 'offered' (reserved, no dial yet) or 'ringing'.
local function drop()
  local state = call.state
  if state == 'waiting' then
    unplace(call)
    redis.call('ZREM', WAITING, id)
  else
    state = redis.call('ZSCORE', OFFERS, id) and 'offered' or 'ringing'
    redis.call('HDEL', RESERVED, id)
    redis.call('ZREM', OFFERS, id)
  end
  redis.call('DEL', call_key(id))
  return state
end

if op == 'remove' then
  local state = drop()
  if state ~= 'waiting' then held_agent(call) end  -- stays reserved, now with no call: the adapter sets them
  return 1
end

-- The call leaves the router (answered, abandoned, gone, fallen back). Its agent, if still reserved
-- for it, becomes the status given when they are the agent named (or none is named), else ready (the
-- offer is void): no reservation outlives its call. Replies {state, that agent or '', 1 if named}.
if op == 'settle' then
  local state = drop()
  local agent = state ~= 'waiting' and held_agent(call) or nil
  if not agent then return {state, '', 0} end
  local named = ARGV[4] == '' or ARGV[4] == agent.id
  if named then
    set_status(agent, ARGV[5], tonumber(ARGV[7]), ARGV[6], ARGV[8] == '1' and id or nil, nil)
  else
    set_status(agent, 'ready', tonumber(ARGV[7]), '', nil, nil)
  end
  return {state, agent.id, named and 1 or 0}
end

-- The offer rang: its dial began, so it is no stale reservation. 1 the first time, else 0.
if op == 'dialed' then
  if call.state ~= 'reserved' or call.agent ~= ARGV[4] then return 0 end
  return redis.call('ZREM', OFFERS, id)
end

-- requeue: only a call still reserved (for the agent named, if one is)
if call.state ~= 'reserved' then return 0 end
if ARGV[6] and ARGV[6] ~= '' and call.agent ~= ARGV[6] then return 0 end
requeue(call, ARGV[4], ARGV[5])
return 1
