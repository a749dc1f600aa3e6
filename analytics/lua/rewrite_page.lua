-- Rewrite (or delete) one page of stored records if it still holds what
-- the caller read (compare-and-set), with the index entries of the records
-- it leaves out: erasure, retention and key rotation (analytics/store.py).
--
-- KEYS[1]  the processed hash of the type    (analytics:events:processed:{type})
-- KEYS[2]  the time index of the type        (analytics:events:time:{type})
-- KEYS[3]  the open-page hash of the type    (analytics:events:pages:{type})
-- KEYS[4]  the stored-events counter         (analytics:events:count)
-- ARGV[1]  page id
-- ARGV[2]  the page as read
-- ARGV[3]  the new page, "" to delete it
-- ARGV[4]  the newest timestamp of the new page (its time index score)
-- ARGV[5]  the page's bucket (field of the open-page hash)
-- ARGV[6]  key prefix of the user indexes    (analytics:events:user:)
-- ARGV[7]  the page's member in user indexes ("type:page")
-- ARGV[8]  key prefix of the dedupe shards   (analytics:events:ids:)
-- ARGV[9]  number N of records left out, then N times: dedupe shard, member;
--          then the owner hashes (user, else anonymous) that have no record
--          left in the page
-- Returns N, or -1 when the page changed since it was read (read it again).
local page = ARGV[1]
if redis.call('HGET', KEYS[1], page) ~= ARGV[2] then return -1 end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], page)
  redis.call('ZREM', KEYS[2], page)
  if redis.call('HGET', KEYS[3], ARGV[5]) == page then redis.call('HDEL', KEYS[3], ARGV[5]) end
else
  redis.call('HSET', KEYS[1], page, ARGV[3])
  redis.call('ZADD', KEYS[2], ARGV[4], page)
end
local n = tonumber(ARGV[9])
local pos = 10
for _ = 1, n do
  redis.call('SREM', ARGV[8] .. ARGV[pos], ARGV[pos + 1])
  pos = pos + 2
end
if n > 0 then redis.call('DECRBY', KEYS[4], n) end
for i = pos, #ARGV do
  redis.call('ZREM', ARGV[6] .. ARGV[i], ARGV[7])
end
return n
