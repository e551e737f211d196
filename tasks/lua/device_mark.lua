-- Record (or clear) the shard in flight, in the lease and in the registry the reaper reads.
-- KEYS[1] P:lease:{host}:{device}   KEYS[2] P:leases (registry hash)
-- ARGV[1] token   ARGV[2] shard as JSON ({"job", "shard", "batch", "since"}) or 'null' to clear
-- Returns 1 when recorded, 0 when the lease is not ours (then nothing changes).
local value = redis.call('GET', KEYS[1])
if not value then
  return 0
end
local record = cjson.decode(value)
if record['token'] ~= ARGV[1] then
  return 0
end
record['shard'] = cjson.decode(ARGV[2])
value = cjson.encode(record)
redis.call('SET', KEYS[1], value, 'KEEPTTL')
redis.call('HSET', KEYS[2], KEYS[1], value)
return 1
