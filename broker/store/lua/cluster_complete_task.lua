-- cluster_complete_task: step 1 of a task completion on Redis Cluster
-- (store/cluster_grants.py): the owner check and the tombstone, in the task's bucket.
-- Step 2 records the completion in the global group (completions, audit, feed).
--
-- KEYS[1] task tombstone, KEYS[2] task owner.
-- ARGV[1] tombstone seconds, ARGV[2] now, ARGV[3] the identity of the completing token.
-- Returns 1 (completed now), 0 (it already was), -1 (another identity's task).
--
-- Redis does not roll a script back: the owner check comes before the first write, and the
-- first write (SET NX of the tombstone) is also the check that the task is not complete yet.
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[3] then return -1 end
if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'EX', ARGV[1]) then return 0 end
if owner and redis.call('TTL', KEYS[2]) < tonumber(ARGV[1]) then
  redis.call('EXPIRE', KEYS[2], ARGV[1])
end
return 1
