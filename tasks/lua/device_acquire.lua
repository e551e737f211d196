-- Take a free device lease: SET NX PX, a new fencing number, and the registry record, atomically.
-- KEYS[1] P:lease:{host}:{device}   KEYS[2] P:lease:{host}:{device}:fence   KEYS[3] P:leases (registry hash)
-- ARGV[1] lease record (JSON, without fence)   ARGV[2] ttl in milliseconds
-- Returns {1, fence, previous registry record or ''} when taken, {0, holder's record} when held.
local holder = redis.call('GET', KEYS[1])
if holder then
  return {0, holder}
end
local fence = redis.call('INCR', KEYS[2])
local record = cjson.decode(ARGV[1])
record['fence'] = fence
local value = cjson.encode(record)
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
local previous = redis.call('HGET', KEYS[3], KEYS[1]) or ''
redis.call('HSET', KEYS[3], KEYS[1], value)
return {1, fence, previous}
