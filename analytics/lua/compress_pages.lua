-- Replace pages of stored records by their compressed form, each only if it
-- still holds what the caller read (compare-and-set): a page changed
-- meanwhile (rewritten by an erasure, say) is left as it is.
--
-- ARGV     per page, 4 values: hash, field, expected, new. Sets a field only
--          if it still holds the expected value.
--
-- Returns the number of fields set.
local n = 0
for i = 1, #ARGV, 4 do
  if redis.call('HGET', ARGV[i], ARGV[i + 1]) == ARGV[i + 2] then
    redis.call('HSET', ARGV[i], ARGV[i + 1], ARGV[i + 3])
    n = n + 1
  end
end
return n
