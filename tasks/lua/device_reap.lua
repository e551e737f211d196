-- Reaper: claim the registry record of a lease that expired unreleased (its holder died or hung).
-- KEYS[1] P:leases (registry hash)   KEYS[2] P:lease:{host}:{device} (the registry field)
-- Returns the record (removed, so exactly one reaper gives its shard back) or nil while the lease lives.
local registered = redis.call('HGET', KEYS[1], KEYS[2])
if not registered then
  return false
end
local value = redis.call('GET', KEYS[2])
if value and cjson.decode(value)['token'] == cjson.decode(registered)['token'] then
  return false
end
redis.call('HDEL', KEYS[1], KEYS[2])
return registered
