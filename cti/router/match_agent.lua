-- match_for_agent: the best waiting call for a ready agent (routing.decide.best_call_for_agent),
-- reserved with them in the same atomic step. ARGV: namespace, agent id, now_ms.
--
-- Within one tier, calls rank by (enqueued_at_ms, id): an older call has waited longer, so its
-- score is never lower, and ties go to the earlier enqueue. So each sorted set w:<tier>:<key> is
-- already in call order, and merging the sets under the agent's keys by the full call key
-- (score, enqueued_at_ms, id) visits the calls the agent may take best first. The first eligible
-- one is the answer: no call ranked below it is ever read.

local aid, now = ARGV[2], tonumber(ARGV[3])
local cfg = load_config()
catch_up(cfg, now)
local agent = load_agent(aid)
if not agent or agent.status ~= 'ready' then return false end

local keys, fields, heads, tiers = agent_keys(agent), {}, {}, {}
for name, tier in pairs(cfg.tiers) do
  for _, k in ipairs(keys) do
    fields[#fields + 1] = name .. ':' .. k
    heads[#fields], tiers[#fields] = head_key(fields[#fields]), tier
  end
end
heads = redis.call('MGET', unpack(heads))
-- The streams' current members as parallel arrays: most matches take the first head, so a
-- stream gets a table only when it is read past its head.
local n, at, ids, score, tier_of, field_of, streams = 0, {}, {}, {}, {}, {}, {}
for i = 1, #fields do
  if heads[i] then
    n = n + 1
    at[n], ids[n] = head_of(heads[i])
    score[n], tier_of[n], field_of[n] = score_of(cfg, tiers[i], wait_of(at[n], now)), tiers[i], fields[i]
  end
end

local seen, passed = {}, {}
while n > 0 do
  local b = 1  -- the first in routing.score.call_key order
  for i = 2, n do
    if score[i] > score[b] or (score[i] == score[b] and (at[i] < at[b] or (at[i] == at[b] and lt_bytes(ids[i], ids[b]))))
    then b = i end
  end
  local id = ids[b]
  if not seen[id] then
    seen[id] = true
    local call = load_call(id)
    local ep = call and entry(cfg, call.ep)
    if ep then
      local eff = effective(cfg, ep, call, now)
      local path, reason = verdict(agent, eff)
      if path then
        reserve(call, agent, now)
        return decision(call, agent, eff, score[b], passed)
      end
      if #passed < 2 * MAX_PASSED then
        passed[#passed + 1] = id
        passed[#passed + 1] = reason
      end
    end
  end
  local s = streams[b] or {key = calls_key(field_of[b]), off = 1}
  streams[b] = s
  if pull(s) then
    at[b], ids[b] = s.at, s.id
    score[b] = score_of(cfg, tier_of[b], wait_of(s.at, now))
  else  -- done with it: the last stream takes its place
    at[b], ids[b], score[b], tier_of[b], field_of[b], streams[b] = at[n], ids[n], score[n], tier_of[n], field_of[n],
      streams[n]
    at[n], ids[n], score[n], tier_of[n], field_of[n], streams[n] = nil, nil, nil, nil, nil, nil
    n = n - 1
  end
end
return false
