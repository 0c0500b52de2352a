-- A call's arrival, removal and RONA requeue, in one atomic step each.
-- ARGV: namespace, 'enqueue', id, call JSON
--    or namespace, 'remove', id
--    or namespace, 'requeue', id, agent status ('not_ready' or 'ready'), not-ready reason ('' = the config's).

local op, id = ARGV[2], ARGV[3]
local cfg = load_config()
local call = load_call(id)

if op == 'enqueue' then
  if call then return 0 end
  call = cjson.decode(ARGV[4])
  call.id, call.ix = id, {}
  redis.call('HSET', call_key(id), 'd', ARGV[4], 'state', 'waiting', 'ix', '[]')
  redis.call('ZADD', WAITING, call.at, id)
  local ep = entry(cfg, call.ep)
  if ep then place(cfg, ep, call, 0) end  -- catch_up adds the keys of steps already fired
  return 1
end

if not call then return 0 end

-- The agent it was reserved for, if they still are; the reservation's agent side ends here.
local function held_agent()
  local agent = call.agent and load_agent(call.agent)
  if agent and agent.status == 'reserved' and agent.call == id then
    redis.call('HDEL', agent_key(agent.id), 'call')
    return agent
  end
  return nil
end

if op == 'remove' then
  if call.state == 'waiting' then
    unplace(call)
    redis.call('ZREM', WAITING, id)
  else
    redis.call('HDEL', RESERVED, id)
    held_agent()  -- stays reserved, now with no call: the adapter sets them on_call or ready
  end
  redis.call('DEL', call_key(id))
  return 1
end

-- requeue: back in its place (its enqueued_at_ms is kept), from step 0 of the index
if call.state ~= 'reserved' then return 0 end
redis.call('HSET', call_key(id), 'state', 'waiting')
redis.call('HDEL', call_key(id), 'agent')
redis.call('HDEL', RESERVED, id)
redis.call('ZADD', WAITING, call.at, id)
call.ix = {}
local ep = entry(cfg, call.ep)
if ep then place(cfg, ep, call, 0) else redis.call('HSET', call_key(id), 'ix', '[]') end
local agent = held_agent()
if agent then
  local status = ARGV[4]
  local reason = status == 'not_ready' and (ARGV[5] ~= '' and ARGV[5] or cfg.rona) or ''
  redis.call('HSET', agent_key(agent.id), 'status', status, 'reason', reason)
  if status == 'ready' then set_ready(agent, true) end
end
return 1
