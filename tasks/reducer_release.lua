-- Release a job's reducer: compare-and-delete, never a plain DEL.
-- KEYS[1] job:{id}:reducer
-- ARGV[1] token
-- Returns 1 when released, 0 when it was not ours.
local value = redis.call('GET', KEYS[1])
if not value or cjson.decode(value)['token'] ~= ARGV[1] then
  return 0
end
return redis.call('DEL', KEYS[1])
