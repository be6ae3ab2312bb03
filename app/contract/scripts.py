"""Every Lua script asklane runs on Redis, each with what its KEYS and ARGV are, run by SHA.

Shared by the web process and the workers, so it imports neither side. Each script is a
:class:`Script`: its SHA1 is computed once at import, and a call sends EVALSHA with only the keys
and arguments; on NOSCRIPT (a fresh or restarted Redis, a failover, SCRIPT FLUSH) it loads the
text once and runs it again, as redis-py's ``register_script`` does. The ack path therefore sends
the ~2 KB enqueue script only the first time a Redis sees it, not on every slash command.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Sequence
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import NoScriptError


class Script:
    """A Lua script run by SHA, loaded into Redis on first use (or after Redis forgot it)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    async def __call__(self, redis: Redis, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        try:
            return await cast(Awaitable[Any], redis.evalsha(self.sha, len(keys), *keys, *args))
        except NoScriptError:
            await cast(Awaitable[str], redis.script_load(self.text))
            return await cast(Awaitable[Any], redis.evalsha(self.sha, len(keys), *keys, *args))


# --- used by app/contract/queue.py ---
# KEYS: queue, re-scored interactive jobs.  ARGV: job id, offset ms, the worker's now ms.
# Records the job if it now sits in the background lane (arq re-scored it), at its new score.
NOTE_RESCORED_INTERACTIVE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > tonumber(ARGV[3]) - tonumber(ARGV[2]) / 2 then
  redis.call('ZADD', KEYS[2], score, ARGV[1])
  return 1
end
return 0
"""

# KEYS: queue, re-scored interactive jobs.  ARGV: offset ms, the worker's now ms, batch size.
# Moves the re-scored jobs now due back ahead of the background lane. Reads only the entries due
# now, so its cost does not grow with the backlog. An entry whose job was re-scored again, later,
# waits for that moment; one whose job has left the queue is dropped.
PROMOTE_DUE_INTERACTIVE = """
local offset = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) > now then
    redis.call('ZADD', KEYS[2], score, id)
  else
    redis.call('ZREM', KEYS[2], id)
    if score and tonumber(score) > now - offset / 2 then
      redis.call('ZADD', KEYS[1], 'XX', string.format('%.3f', tonumber(score) - offset), id)
    end
  end
end
return #due
"""

# KEYS: job, result, queue, last score of the level, wake list, enqueued-at, then one fair-use
# counter per limit, then the job's in-order set when it has one.  ARGV: serialized job, job id,
# priority offset ms, job expiry ms, wake tokens kept, now ms, the job's position in its in-order
# set ('' when it has none), that set's expiry ms, then the allowed count and window ms of each
# counter, in order.
#
# One atomic step for the whole ack: a job already queued or answered (a duplicate delivery) is
# neither charged nor queued again: 0. Otherwise every counter is charged and the job queued (1)
# only when no counter is used up; else nothing is, and the used-up counter whose window closes
# last is returned as {its index (1-based), ms until then}. Two deliveries of one command at the
# same moment are therefore charged once. The job itself is arq's own enqueue, plus a score that
# is strictly increasing within a level, a wake token, and the moment it was queued on Redis's
# clock (app/contract/keys.py ENQUEUED_AT_PREFIX), expiring with the job key. A job that must run
# in order with others (JobBase.in_order: the questions of one thread) joins their sorted set at
# its position in the same step, and only when it is queued: the worker that runs the set's
# first member can never miss a queued job, nor wait for one that was never queued.
ENQUEUE = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
local first = 7
local ordered = ARGV[7] ~= ''
local last_counter = #KEYS
if ordered then last_counter = #KEYS - 1 end
local worst, worst_ttl = 0, -1
for i = first, last_counter do
  local n = i - first + 1
  if tonumber(redis.call('GET', KEYS[i]) or '0') >= tonumber(ARGV[7 + 2 * n]) then
    local ttl = redis.call('PTTL', KEYS[i])
    if ttl < 0 then
      redis.call('PEXPIRE', KEYS[i], ARGV[8 + 2 * n])
      ttl = tonumber(ARGV[8 + 2 * n])
    end
    if ttl > worst_ttl then worst, worst_ttl = n, ttl end
  end
end
if worst > 0 then return {worst, worst_ttl} end
for i = first, last_counter do
  if redis.call('INCR', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[8 + 2 * (i - first + 1)]) end
end
local score = tonumber(ARGV[6]) - tonumber(ARGV[3])
local last = tonumber(redis.call('GET', KEYS[4]) or '0')
-- A web host whose clock ran ahead must not hold later jobs back: keep order only within 1 s.
if score <= last then score = math.min(last + 0.001, score + 1000) end
local text = string.format('%.3f', score)
redis.call('SET', KEYS[4], text, 'PX', 86400000)
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[4]))
redis.call('ZADD', KEYS[3], text, ARGV[2])
local time = redis.call('TIME')
local queued_at = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('SET', KEYS[6], string.format('%d', queued_at), 'PX', tonumber(ARGV[4]))
if ordered then
  redis.call('ZADD', KEYS[#KEYS], 'NX', ARGV[7], ARGV[2])
  redis.call('PEXPIRE', KEYS[#KEYS], tonumber(ARGV[8]))
end
redis.call('LPUSH', KEYS[5], '1')
redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[5]) - 1)
return 1
"""

# --- used by workers/lease.py ---
# KEYS: arq's in-progress key, run marker.  ARGV: owner token, new marker value, lease ms,
# marker seconds.  Extends the lease only while the marker still names this run; 0 when another
# run has taken the job over (this one's lease had lapsed).
LEASE_RENEW = """
local marker = redis.call('GET', KEYS[2])
if marker and cjson.decode(marker)['token'] ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[4])
return 1
"""

# KEYS: run marker.  ARGV: owner token.  Deletes the marker only while it names this run: a run
# whose lease lapsed must not delete the marker of the run that took the job over.
LEASE_RELEASE = """
local marker = redis.call('GET', KEYS[1])
if marker and cjson.decode(marker)['token'] == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# --- used by workers/ratelimit.py (AI calls) and workers/slack_rate.py (Slack methods) ---
# KEYS: bookings zset, pause key[, token bookings zset].  ARGV: limit, window, max_wait, member,
# unused member, clock units per millisecond (1000: microseconds, the AI limiter's; 1:
# milliseconds, Slack's)[, token window, token retention, input limit, input tokens, output
# limit, output tokens].
# Returns {booked (0/1), wait}, in the caller's units; with token windows {booked, wait, bound},
# bound naming what set the moment ('now', 'pause', 'calls', 'input', 'output'), and a wait of -1
# when the tokens asked for exceed a whole window's limit (never bookable).
# Scores are absolute moments on Redis's clock; the pause key holds a moment in the same units.
# Books the earliest moment, no sooner than the last booking nor the end of a pause, at which the
# window ending there holds fewer than the allowed calls and, with token windows, at which the
# token window ending there holds no more than each limit (a limit of 0 is off) with this
# booking's tokens added; a moment farther off than the longest wait is not booked. Every
# constraint is "no earlier than some moment", so the earliest moment meeting all is the latest of
# each one's earliest. The call and its tokens are booked together or not at all. A token booking
# is the member "<member>:<input>:<output>" scored by its moment; entries older than the retention
# are dropped (the retention outlasts the window, for RATE_SETTLE's look back). The unused member
# (or '') is this caller's previous booking, passed its moment unused: no call was made at it, so
# it no longer holds a slot nor its tokens.
RATE_BOOK = """
local per_ms = tonumber(ARGV[6])
local tokens = KEYS[3]
if ARGV[5] ~= '' then
  redis.call('ZREM', KEYS[1], ARGV[5])
  if tokens then redis.call('ZREM', tokens, ARGV[5] .. ':' .. ARGV[10] .. ':' .. ARGV[12]) end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 * per_ms + math.floor(tonumber(t[2]) * per_ms / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local at, bound = now, 'now'
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if paused > at then at, bound = paused, 'pause' end
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if newest[2] and tonumber(newest[2]) > at then at, bound = tonumber(newest[2]), 'calls' end
local count = redis.call('ZCARD', KEYS[1])
if count >= limit then
  local nth = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
  local free = tonumber(nth[2]) + window
  if free > at then at, bound = free, 'calls' end
end
if tokens then
  local token_window = tonumber(ARGV[7])
  redis.call('ZREMRANGEBYSCORE', tokens, '-inf', now - tonumber(ARGV[8]))
  local start = at
  local since = string.format('(%d', start - token_window)
  local entries = redis.call('ZRANGEBYSCORE', tokens, since, '+inf', 'WITHSCORES')
  local scores, amounts, totals = {}, {{}, {}}, {0, 0}
  for i = 1, #entries, 2 do
    local _, _, used_in, used_out = string.find(entries[i], ':(%d+):(%d+)$')
    local n = #scores + 1
    scores[n] = tonumber(entries[i + 1])
    amounts[1][n], amounts[2][n] = tonumber(used_in or '0'), tonumber(used_out or '0')
    totals[1], totals[2] = totals[1] + amounts[1][n], totals[2] + amounts[2][n]
  end
  local names = {'input', 'output'}
  for k = 1, 2 do
    local cap, asked = tonumber(ARGV[7 + 2 * k]), tonumber(ARGV[8 + 2 * k])
    if cap > 0 then
      if asked > cap then return {0, -1, names[k]} end
      -- The window ending at a later moment has lost its oldest entries: drop them until ours fits.
      local total, i, free = totals[k], 1, start
      while total + asked > cap and i <= #scores do
        total = total - amounts[k][i]
        free = scores[i] + token_window
        i = i + 1
      end
      if free > at then at, bound = free, names[k] end
    end
  end
end
if at - now > max_wait then
  if tokens then return {0, at - now, bound} end
  return {0, at - now}
end
redis.call('ZADD', KEYS[1], at, ARGV[4])
redis.call('PEXPIREAT', KEYS[1], math.floor((at + window) / per_ms) + 1000)
if tokens then
  redis.call('ZADD', tokens, at, ARGV[4] .. ':' .. ARGV[10] .. ':' .. ARGV[12])
  redis.call('PEXPIREAT', tokens, math.floor((at + tonumber(ARGV[8])) / per_ms) + 1000)
  return {1, at - now, bound}
end
return {1, at - now}
"""

# A Lua function the token scripts below start with: the input and output tokens booked in the
# token log (members "<member>:<input>:<output>") at moments after ``after``.
_TOKENS_BOOKED_AFTER = """
local function tokens_booked_after(key, after)
  local total_in, total_out = 0, 0
  for _, entry in ipairs(redis.call('ZRANGEBYSCORE', key, string.format('(%d', after), '+inf')) do
    local _, _, used_in, used_out = string.find(entry, ':(%d+):(%d+)$')
    total_in = total_in + tonumber(used_in or '0')
    total_out = total_out + tonumber(used_out or '0')
  end
  return total_in, total_out
end
"""

# KEYS: token bookings zset (RATE_BOOK's).  ARGV: member, reserved input, reserved output, used
# input, used output, token window (µs).
# After an AI call: the tokens Anthropic reported replace what its booking reserved (less is given
# back; more is booked too, so the window shows the truth), at the booking's moment; a booking of
# no tokens is removed. Returns {found (0/1), input booked, output booked, µs since the booking},
# the totals over every booking from one window before this one's moment onwards, taken before
# the give-back (this call counted at the larger of its reservation and its use): what Anthropic
# can have counted against the organisation on asklane's behalf when it answered this call.
RATE_SETTLE = (
    _TOKENS_BOOKED_AFTER
    + """
local old = ARGV[1] .. ':' .. ARGV[2] .. ':' .. ARGV[3]
local score = redis.call('ZSCORE', KEYS[1], old)
if not score then return {0, 0, 0, 0} end
score = tonumber(score)
local total_in, total_out = tokens_booked_after(KEYS[1], score - tonumber(ARGV[6]))
local used_in, used_out = tonumber(ARGV[4]), tonumber(ARGV[5])
total_in = total_in + math.max(0, used_in - tonumber(ARGV[2]))
total_out = total_out + math.max(0, used_out - tonumber(ARGV[3]))
redis.call('ZREM', KEYS[1], old)
if used_in + used_out > 0 then
  redis.call('ZADD', KEYS[1], score, ARGV[1] .. ':' .. used_in .. ':' .. used_out)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
return {1, total_in, total_out, now - score}
"""
)

# KEYS: token bookings zset.  ARGV: window (µs).
# Returns {input, output} booked from one window ago on (calls booked a moment ahead included).
RATE_TOKENS_BOOKED = (
    _TOKENS_BOOKED_AFTER
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local total_in, total_out = tokens_booked_after(KEYS[1], now - tonumber(ARGV[1]))
return {total_in, total_out}
"""
)

# KEYS: pause key.  ARGV: pause_us.  Returns 1 when this call started a pause (none was in
# force), 0 when it only moved one later or changed nothing: one log line per pause, not per job.
RATE_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local until_us = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_us <= current then return 0 end
redis.call('SET', KEYS[1], until_us, 'PX', math.floor(tonumber(ARGV[1]) / 1000) + 1000)
if current > now then return 0 end
return 1
"""

# KEYS: the job's refused-since key.  ARGV: '1' when the job was refused just now, ttl_ms.
# Returns the milliseconds since the job's first refusal on Redis's clock, -1 if never refused.
RATE_REFUSED_FOR = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] == '1' then redis.call('SET', KEYS[1], now, 'NX', 'PX', tonumber(ARGV[2])) end
local since = redis.call('GET', KEYS[1])
if not since then return -1 end
return math.max(now - tonumber(since), 0)
"""

# KEYS: pause key.  Returns the microseconds of pause left on Redis's clock, 0 when none.
RATE_PAUSED_FOR = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local paused = tonumber(redis.call('GET', KEYS[1]) or '0')
if paused > now then return paused - now end
return 0
"""

# --- used by workers/delivery.py ---
# KEYS: uses counter, unusable marker.  ARGV: most uses allowed after this one, TTL seconds.
# 1 when a use was taken; 0 when the budget does not allow it; -1 when the URL is unusable.
TAKE_RESPONSE_URL_USE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= tonumber(ARGV[1]) then return 0 end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

enqueue = Script(ENQUEUE)
note_rescored_interactive = Script(NOTE_RESCORED_INTERACTIVE)
promote_due_interactive = Script(PROMOTE_DUE_INTERACTIVE)
lease_renew = Script(LEASE_RENEW)
lease_release = Script(LEASE_RELEASE)
rate_book = Script(RATE_BOOK)
rate_pause = Script(RATE_PAUSE)
rate_refused_for = Script(RATE_REFUSED_FOR)
rate_paused_for = Script(RATE_PAUSED_FOR)
rate_settle = Script(RATE_SETTLE)
rate_tokens_booked = Script(RATE_TOKENS_BOOKED)
take_response_url_use = Script(TAKE_RESPONSE_URL_USE)

# --- used by workers/slack_rate.py ---
# KEYS: the channel's post slot, the workspace's Slack pause.  ARGV: spacing ms, longest wait ms.
# Returns {booked (0/1), wait_ms} on Redis's clock. Books the channel's next free moment (no sooner
# than the end of a pause after a 429) and moves the slot one spacing past it, so posts from every
# worker to one channel are spaced; a moment farther off than the longest wait is not booked.
SLACK_POST_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at = now
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if paused > at then at = paused end
local free = tonumber(redis.call('GET', KEYS[1]) or '0')
if free > at then at = free end
if at - now > tonumber(ARGV[2]) then return {0, at - now} end
local spacing = tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%d', at + spacing), 'PX', at - now + spacing + 1000)
return {1, at - now}
"""

# KEYS: the workspace's Slack pause.  ARGV: pause ms.  Holds every worker's posts to the workspace
# until now + pause (Redis's clock), never shortening a pause already set. Returns the ms of pause
# now in force.
SLACK_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ms > current then
  redis.call('SET', KEYS[1], string.format('%d', until_ms), 'PX', tonumber(ARGV[1]) + 1000)
  current = until_ms
end
return current - now
"""

# KEYS: the workspace's Slack pause.  Returns the ms of pause left on Redis's clock, 0 when none.
SLACK_PAUSED_FOR = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local paused = tonumber(redis.call('GET', KEYS[1]) or '0')
if paused > now then return paused - now end
return 0
"""

slack_post_slot = Script(SLACK_POST_SLOT)
slack_pause = Script(SLACK_PAUSE)
slack_paused_for = Script(SLACK_PAUSED_FOR)

# --- used by workers/memory.py ---
# KEYS: the job's stored answer, the conversation (a list of JSON exchanges, oldest first).
# ARGV: answer JSON, answer TTL s, job id, exchange JSON, its characters, most exchanges kept,
# most characters kept, conversation TTL ms.
# Stores the job's answer and appends its exchange to the conversation in one step, so a re-run
# that reuses the stored answer never appends again. Returns {1, ''} when stored; {0, answer}
# when another run of the job stored an answer first (it is the one to post); {0, ''} when the
# job's exchange is already in the conversation (an earlier run answered and posted it). Then
# drops the oldest exchanges past either cap (the newest is always kept: it arrives cut to the
# character cap) and restarts the conversation's expiry. Entries it cannot read count by length.
REMEMBER_ANSWER = """
local stored = redis.call('GET', KEYS[1])
if stored then return {0, stored} end
local entries = redis.call('LRANGE', KEYS[2], 0, -1)
local sizes = {}
for i, raw in ipairs(entries) do
  local ok, entry = pcall(cjson.decode, raw)
  if ok and type(entry) == 'table' then
    if entry['job_id'] == ARGV[3] then return {0, ''} end
    sizes[i] = tonumber(entry['chars']) or #raw
  else
    sizes[i] = #raw
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[4])
sizes[#entries + 1] = tonumber(ARGV[5])
local count = #entries + 1
local total = 0
for i = 1, count do total = total + sizes[i] end
local first = 1
while count > 1 and (count > tonumber(ARGV[6]) or total > tonumber(ARGV[7])) do
  redis.call('LPOP', KEYS[2])
  total = total - sizes[first]
  first = first + 1
  count = count - 1
end
redis.call('PEXPIRE', KEYS[2], ARGV[8])
return {1, ''}
"""

# --- used by workers/in_order.py (jobs that run one at a time per group, app/contract/jobs.py InOrder) ---
# KEYS: the group's sorted set (job ids by position), the group's turn (who runs now).  ARGV: job
# id, arq's job key prefix, most earlier members looked at, the turn's lifetime ms.
# Returns {members to wait for, the first of them ('' if none)}. A job waits while an earlier
# member is alive (arq holds its job: queued, deferred or running), and while another live member
# holds the group's turn: a later message that was queued and started first (an earlier one's
# delivery refused during an outage, two web processes) is not overtaken mid-answer. A dead member
# (failed or finished by arq, expired) is removed here; a dead holder's turn is free. A job with
# nothing to wait for takes the turn (the hand-over, IN_ORDER_NEXT, frees it). A job absent from the
# set (its entry expired) waits only for the turn. Job keys are built from the prefix rather than
# passed, as their ids are only known inside (asklane runs on one Redis, not a cluster).
IN_ORDER_AHEAD = """
local alive, first = 0, ''
local mine = redis.call('ZSCORE', KEYS[1], ARGV[1])
if mine then
  local earlier = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. mine, 'LIMIT', 0, tonumber(ARGV[3]))
  for _, id in ipairs(earlier) do
    if redis.call('EXISTS', ARGV[2] .. id) == 1 then
      alive = alive + 1
      if first == '' then first = id end
    else
      redis.call('ZREM', KEYS[1], id)
    end
  end
end
if alive > 0 then return {alive, first} end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. holder) == 1 then
  return {1, holder}
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', tonumber(ARGV[4]))
return {0, ''}
"""

# KEYS: the group's sorted set, arq's queue, re-scored interactive jobs, the group's turn.  ARGV:
# the finished job id, arq's job key prefix, the worker's now ms, the interactive priority offset
# ms, most members looked at.
# Removes the finished job, frees the turn if it held it, and brings the next live member
# forward: if it is deferred (scored in the future) it is re-scored to now, in the interactive
# lane when it was re-scored out of it (app/contract/queue.py), so it runs at once. Dead members
# met on the way are removed.
# Returns {the next member ('' if none), 1 when it was moved forward else 0}.
IN_ORDER_NEXT = """
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('DEL', KEYS[4]) end
local now = tonumber(ARGV[3])
for _ = 1, tonumber(ARGV[5]) do
  local head = redis.call('ZRANGE', KEYS[1], 0, 0)
  if #head == 0 then return {'', 0} end
  local id = head[1]
  if redis.call('EXISTS', ARGV[2] .. id) == 1 then
    local score = redis.call('ZSCORE', KEYS[2], id)
    if score and tonumber(score) > now then
      local due = now
      if redis.call('ZREM', KEYS[3], id) == 1 then due = now - tonumber(ARGV[4]) end
      redis.call('ZADD', KEYS[2], 'XX', string.format('%.3f', due), id)
      return {id, 1}
    end
    return {id, 0}
  end
  redis.call('ZREM', KEYS[1], id)
end
return {'', 0}
"""

remember_answer = Script(REMEMBER_ANSWER)
in_order_ahead = Script(IN_ORDER_AHEAD)
in_order_next = Script(IN_ORDER_NEXT)


# --- used by app/contract/usage.py ---
# KEYS: the person's day totals, the workspace's day totals, the person's month totals, the
# workspace's month totals, then the indexes of who spent that day (people, workspaces) and that
# month (people, workspaces).  ARGV: model, cost (micro-dollars), input, output, cache-write and
# cache-read tokens, the person's index member, the workspace's, the day's expiry and the month's
# (unix seconds).
#
# One AI call charged to all four totals at once, in all and under its model (``model|kind``),
# and its owners entered in the buckets' indexes scored by what they spent. Every key's expiry is
# set absolutely, from the bucket, so a late charge never stretches a bucket's life.
USAGE_CHARGE = """
local kinds = {'calls', 'cost', 'input', 'output', 'cache_write', 'cache_read'}
local amounts = {1, ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]}
for i = 1, 4 do
  for k = 1, 6 do
    redis.call('HINCRBY', KEYS[i], kinds[k], amounts[k])
    redis.call('HINCRBY', KEYS[i], ARGV[1] .. '|' .. kinds[k], amounts[k])
  end
end
redis.call('ZINCRBY', KEYS[5], ARGV[2], ARGV[7])
redis.call('ZINCRBY', KEYS[6], ARGV[2], ARGV[8])
redis.call('ZINCRBY', KEYS[7], ARGV[2], ARGV[7])
redis.call('ZINCRBY', KEYS[8], ARGV[2], ARGV[8])
for _, i in ipairs({1, 2, 5, 6}) do redis.call('EXPIREAT', KEYS[i], ARGV[9]) end
for _, i in ipairs({3, 4, 7, 8}) do redis.call('EXPIREAT', KEYS[i], ARGV[10]) end
return 1
"""

usage_charge = Script(USAGE_CHARGE)
