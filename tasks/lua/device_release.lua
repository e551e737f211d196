-- Release: compare-and-delete. Never a plain DEL: a lease that expired and was taken over stays.
-- KEYS[1] P:lease:{host}:{device}   KEYS[2] P:leases (registry hash)
-- ARGV[1] token
-- The registry record goes too, unless a shard is still in flight: the reaper gives that one back.
-- Returns 1 when released, 0 when the lease was not ours.
local value = redis.call('GET', KEYS[1])
if not value or cjson.decode(value)['token'] ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
local registered = redis.call('HGET', KEYS[2], KEYS[1])
if registered then
  local record = cjson.decode(registered)
  if record['token'] == ARGV[1] and record['shard'] == cjson.null then
    redis.call('HDEL', KEYS[2], KEYS[1])
  end
end
return 1
