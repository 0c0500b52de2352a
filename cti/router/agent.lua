-- An agent's profile and status, and their place in the ready sets, in one atomic step.
-- ARGV: namespace, 'put', id, profile JSON, status, idle_since_ms, not-ready reason ('' = none)
--    or namespace, 'status', id, status, now_ms, not-ready reason ('' = none).
-- Either clears the agent's side of a reservation (the call's side is remove_call's or requeue's).

local op, id = ARGV[2], ARGV[3]
local old = load_agent(id)
if op == 'put' then
  if old and old.status == 'ready' then set_ready(old, false) end
  local agent = cjson.decode(ARGV[4])
  agent.id, agent.status, agent.idle = id, ARGV[5], tonumber(ARGV[6])
  redis.call('HSET', agent_key(id), 'p', ARGV[4], 'status', agent.status, 'idle', ARGV[6], 'reason', ARGV[7])
  redis.call('HDEL', agent_key(id), 'call')
  redis.call('SADD', AGENTS, id)
  if agent.status == 'ready' then set_ready(agent, true) end
  return 1
end

if not old then return 0 end
local status = ARGV[4]
if status == 'ready' and old.status ~= 'ready' then
  -- idle_since_ms is when they last became free; a withdrawn offer (reserved) did not end that.
  if old.status ~= 'reserved' then old.idle = tonumber(ARGV[5]) end
  set_ready(old, true)
elseif status ~= 'ready' and old.status == 'ready' then
  set_ready(old, false)
end
redis.call('HSET', agent_key(id), 'status', status, 'idle', old.idle, 'reason', ARGV[6])
redis.call('HDEL', agent_key(id), 'call')
return 1
