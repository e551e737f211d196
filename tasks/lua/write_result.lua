-- Fenced, idempotent write of one shard's detections: the first valid write wins, once.
-- KEYS[1] fencing counter of the writer's device lease
-- KEYS[2] P:job:{id}:results (hash shard -> payload)
-- KEYS[3] P:job:{id} (counters)
-- ARGV[1] the writer's fencing number, ARGV[2] shard, ARGV[3] payload (JSON), ARGV[4] images in the payload,
-- ARGV[5] of those, images the writer read from the tensor store
-- Returns {status, shards_done}: status 1 written, 0 already written (duplicate), -1 stale fencing number.
-- The same payload again (a client's retry after a reply lost on the way back) is 1 again, counted once.
-- Each refusal is counted in the job hash (refused_stale, refused_duplicate): what a late copy's write became.
local newest = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) < newest then
  redis.call('HINCRBY', KEYS[3], 'refused_stale', 1)
  return {-1, 0}
end
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 0 then
  if redis.call('HGET', KEYS[2], ARGV[2]) == ARGV[3] then
    return {1, tonumber(redis.call('HGET', KEYS[3], 'shards_done') or '0')}
  end
  redis.call('HINCRBY', KEYS[3], 'refused_duplicate', 1)
  return {0, tonumber(redis.call('HGET', KEYS[3], 'shards_done') or '0')}
end
redis.call('HINCRBY', KEYS[3], 'images_done', ARGV[4])
redis.call('HINCRBY', KEYS[3], 'device_store_hits', ARGV[5])
return {1, redis.call('HINCRBY', KEYS[3], 'shards_done', 1)}
