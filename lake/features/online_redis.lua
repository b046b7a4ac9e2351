-- Records one transaction of a card and reads back the card's state, atomically (online_redis.RedisCardHistory).
-- KEYS: tx, ids, meta. ARGV: event time (microseconds since the epoch), amount (repr), merchant, has event id ("1"/"0"),
-- event id, longest window (microseconds), time to live (ms).
-- Returns {duplicate (0/1), previous latest time ("" for a new card), count, total, window}
-- where window is the card's kept transactions in (t - longest, t], flat member/score pairs.
local tx, ids, meta = KEYS[1], KEYS[2], KEYS[3]
local t = tonumber(ARGV[1])
local amount, merchant = ARGV[2], ARGV[3]
local has_id, event_id = ARGV[4] == '1', ARGV[5]
local longest, ttl_ms = tonumber(ARGV[6]), ARGV[7]
local state = redis.call('HMGET', meta, 'count', 'total', 'last', 'seq')
local count = state[1] or '0'
local total = state[2] or '0'
local last = state[3]
local duplicate = has_id and redis.call('ZSCORE', ids, event_id)
if not duplicate then
  local seq = string.format('%.0f', (tonumber(state[4]) or 0) + 1)
  redis.call('ZADD', tx, ARGV[1], seq .. ':' .. amount .. ':' .. merchant)
  if has_id then redis.call('ZADD', ids, ARGV[1], event_id) end
  local latest = t
  if last and tonumber(last) > t then latest = tonumber(last) end
  local cutoff = string.format('%.0f', latest - longest)
  redis.call('ZREMRANGEBYSCORE', tx, '-inf', cutoff)
  redis.call('ZREMRANGEBYSCORE', ids, '-inf', cutoff)
  count = string.format('%.0f', tonumber(count) + 1)
  total = string.format('%.17g', tonumber(total) + tonumber(amount))
  redis.call('HSET', meta, 'count', count, 'total', total, 'last', string.format('%.0f', latest), 'seq', seq)
end
redis.call('PEXPIRE', tx, ttl_ms)
redis.call('PEXPIRE', meta, ttl_ms)
if redis.call('EXISTS', ids) == 1 then redis.call('PEXPIRE', ids, ttl_ms) end
local window = redis.call('ZRANGEBYSCORE', tx, '(' .. string.format('%.0f', t - longest), ARGV[1], 'WITHSCORES')
return {duplicate and 1 or 0, last or '', count, total, window}
