-- match_for_call: the best ready agent for a waiting call (routing.decide.best_agent_for_call),
-- reserved with it in the same atomic step. ARGV: namespace, call id, now_ms.
--
-- The preferred agent, if eligible, ranks first and is looked at directly (and alone, when the
-- call is held for them). Everyone else is found in the ready sets (common.lua: set_ready), each
-- in (idle_since_ms, id) order, reading only the skill levels the call accepts:
--
-- * longest_idle: in each candidate set, up to its first eligible agent; the best of those wins.
-- * best_proficiency, by path: SKILLS candidates hold the call's first skill at a sufficient
--   level, read from level 5 down, and a level is skipped once it cannot reach the proficiency
--   already found (with one required skill: the first eligible agent of the highest level wins).
--   Only if no agent qualifies on SKILLS, the alternatives' levels from 5 down, stopping once
--   no unread agent can beat the best found; only then the overflow groups, as longest_idle.

local cid, now = ARGV[2], tonumber(ARGV[3])
local cfg = load_config()
local call = load_call(cid)
if not call or call.state ~= 'waiting' then return false end
local ep, tier = entry(cfg, call.ep), cfg.tiers[call.tier]
if not ep or not tier then return false end
local eff = effective(cfg, ep, call, now)
local score = score_of(cfg, tier, eff.wait)
local req = eff.req
local by_idle = cfg.selection == 'longest_idle'

local seen, passed = {}, {}
local function pass(id, reason)
  if #passed < 2 * MAX_PASSED then
    passed[#passed + 1] = id
    passed[#passed + 1] = reason
  end
end

if eff.pref then
  seen[eff.pref] = true
  local agent = load_agent(eff.pref)
  if agent then
    local path, reason = verdict(agent, eff)
    if path then
      reserve(call, agent, now)
      return decision(call, agent, eff, score, passed)
    end
    pass(agent.id, reason)
  end
end
if eff.exclusive then return false end

-- The best so far, by routing.decide.agent_key (the preferred agent is out of the picture here).
local chosen, chosen_path, chosen_proficiency = nil, -1, -1

local function before(idle, id)  -- would (idle, id) come before the chosen agent's?
  return chosen == nil or idle < chosen.idle or (idle == chosen.idle and lt_bytes(id, chosen.id))
end

-- The current member of ready set s: its path if eligible (and kept if best), else nil.
local function consider(s)
  local id = s.id
  if seen[id] then return nil end
  seen[id] = true
  local agent = load_agent(id)
  local path, proficiency = nil, 'logged_out'
  if agent then path, proficiency = verdict(agent, eff) end
  if not path then
    pass(id, proficiency)
    return nil
  end
  local better
  if chosen == nil then better = true
  elseif by_idle or (path == chosen_path and proficiency == chosen_proficiency) then better = before(agent.idle, id)
  elseif path ~= chosen_path then better = path > chosen_path
  else better = proficiency > chosen_proficiency end
  if better then
    if chosen then pass(chosen.id, 'outranked') end
    chosen, chosen_path, chosen_proficiency = agent, path, proficiency
  else
    pass(id, 'outranked')
  end
  return path
end

-- Up to the first eligible agent of a set, or until the rest come after the chosen one.
local function first_in(key)
  local s = stream(ready_key(key))
  while pull(s) and before(s.at, s.id) do
    if consider(s) then return end
  end
end

local lead = nil  -- the first required skill: index_keys' key
for s in pairs(req.skills) do
  if lead == nil or lt_bytes(s, lead) then lead = s end
end

if by_idle then
  if lead then
    for s, need in pairs(req.skills) do
      if s == lead then for l = need, TOP_LEVEL do first_in('skill:' .. s .. ':' .. l) end end
    end
    for s, need in pairs(req.any_of) do
      for l = need, TOP_LEVEL do first_in('skill:' .. s .. ':' .. l) end
    end
  elseif next(req.groups) then
    for g in pairs(req.groups) do first_in('group:' .. g) end
  else
    first_in('any')
  end
  for g in pairs(req.overflow) do first_in('group:' .. g) end
else
  if lead then
    local others = -TOP_LEVEL
    for _ in pairs(req.skills) do others = others + TOP_LEVEL end
    for l = TOP_LEVEL, req.skills[lead], -1 do
      local bound = l + others  -- the most proficiency anyone at this level can have
      if chosen_path == SKILLS and chosen_proficiency > bound then break end
      local s = stream(ready_key('skill:' .. lead .. ':' .. l))
      while pull(s) do
        if chosen_path == SKILLS and chosen_proficiency == bound and not before(s.at, s.id) then break end
        consider(s)
      end
    end
    if chosen_path ~= SKILLS then
      for l = TOP_LEVEL, 1, -1 do
        for s, need in pairs(req.any_of) do
          if need <= l then
            local st = stream(ready_key('skill:' .. s .. ':' .. l))
            while pull(st) do consider(st) end
          end
        end
        -- anyone unread now has a best level below l
        if chosen_path == ALTERNATIVE and chosen_proficiency >= l then break end
      end
    end
  elseif next(req.groups) then
    for g in pairs(req.groups) do first_in('group:' .. g) end
  else
    first_in('any')
  end
  if chosen_path < ALTERNATIVE then
    for g in pairs(req.overflow) do first_in('group:' .. g) end
  end
end

if not chosen then return false end
reserve(call, chosen, now)
return decision(call, chosen, eff, score, passed)
