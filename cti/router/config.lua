-- Put a routing config in force and re-index every waiting call under it, in one atomic step:
-- no match sees half an index, and no waiting call is lost. Returns the new version.
-- ARGV: namespace, global settings JSON, then entry point name, entry point JSON, ...

local version = tonumber(redis.call('HGET', CONFIG, 'version') or '0') + 1
local calls = {}
for _, id in ipairs(redis.call('ZRANGE', WAITING, 0, -1)) do
  local call = load_call(id)
  unplace(call)
  redis.call('HSET', call_key(id), 'ix', '[]')
  calls[#calls + 1] = call
end
redis.call('DEL', CONFIG)
redis.call('HSET', CONFIG, 'version', version, 'g', ARGV[2])
for i = 3, #ARGV, 2 do redis.call('HSET', CONFIG, 'ep:' .. ARGV[i], ARGV[i + 1]) end
local cfg = load_config()
for _, call in ipairs(calls) do
  local ep = entry(cfg, call.ep)
  if ep then place(cfg, ep, call, 0) end  -- the next match's catch_up adds the fired steps' keys
end
return version
