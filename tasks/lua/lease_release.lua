-- Release a lease: compare-and-delete, never a plain DEL (a lease that expired and was taken over stays).
-- KEYS[1] the lease key (a job's reducer lease; the device lease releases with device_release.lua)
-- ARGV[1] token
-- Returns 1 when released, 0 when it was not ours.
local value = redis.call('GET', KEYS[1])
if not value or cjson.decode(value)['token'] ~= ARGV[1] then
  return 0
end
return redis.call('DEL', KEYS[1])
