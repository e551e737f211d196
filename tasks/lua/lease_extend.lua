-- Heartbeat of any lease (device or reducer): compare-and-pexpire. Only the holder's token extends it.
-- KEYS[1] the lease key
-- ARGV[1] token   ARGV[2] ttl in milliseconds
-- Returns 1 when extended, 0 when the lease expired or belongs to someone else.
local value = redis.call('GET', KEYS[1])
if not value or cjson.decode(value)['token'] ~= ARGV[1] then
  return 0
end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
