-- Reaper: claim the registry record of a lease that expired unreleased (its holder died or hung).
-- KEYS[1] P:leases (registry hash)   KEYS[2] P:lease:{host}:{device} (the registry field)   KEYS[3] its fencing counter
-- Returns the record (removed, so exactly one reaper gives its shard back) or nil while the lease lives.
-- The fencing number goes one up: the hung holder's late write, if it wakes, is refused as stale (its shard
-- is given back and runs elsewhere), whoever holds the device next.
local registered = redis.call('HGET', KEYS[1], KEYS[2])
if not registered then
  return false
end
local value = redis.call('GET', KEYS[2])
if value and cjson.decode(value)['token'] == cjson.decode(registered)['token'] then
  return false
end
redis.call('HDEL', KEYS[1], KEYS[2])
redis.call('INCR', KEYS[3])
return registered
