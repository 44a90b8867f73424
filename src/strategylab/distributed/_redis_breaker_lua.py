"""The server-side script behind :class:`RedisBreakerBackend`: one atomic step on one breaker.

Every change to a breaker's shared state runs in this one Lua script (sent once, then called by
``EVALSHA``; redis-py's ``Script`` re-sends it after a restart emptied the script cache), so that
two processes racing on the same breaker are serialised by Redis and exactly one of them makes a
transition; the loser gets the winner's state back and adopts it.

The hash ``KEYS[1]`` holds the shared state, all times in milliseconds of the Redis server's own
clock (``redis.call('TIME')``), so no two machines need synchronised clocks:

- ``s``: ``closed``, ``open`` or ``half_open``;
- ``g``, ``e``: the generation (server time at which the hash was created: a hash lost with the
  server's data and created again gets a later one) and the epoch (+1 on every transition).
  ``(g, e)`` orders the states a process may adopt;
- ``ou``: when OPEN ends; ``hu``: when HALF_OPEN without a decision re-opens (-1: never);
- ``tr``, ``ok``, ``tu``: the trial calls claimed in this HALF_OPEN period, the trials that
  succeeded, and when the claims lapse (their process may have died).

The timers are applied lazily, as each breaker does locally (OPEN becomes HALF_OPEN at ``ou``,
an undecided HALF_OPEN re-opens at ``hu``). A missing hash (a new breaker, or data lost) is created
from the calling process's local state (its remaining OPEN time, its HALF_OPEN trials in flight:
``ARGV[12]``); an existing one is never overwritten by a process that starts or re-joins.

Operations (``ARGV[1]``):

- ``read``: the state as it is (created if missing);
- ``join``: read (create if missing); a process that tripped while Redis was away and finds the
  shared breaker CLOSED opens it (its trip is not lost);
- ``reassert``: the hash was lost with Redis's data and created again (a new generation) CLOSED by
  a process that knew nothing of the old one; a process whose local breaker is OPEN or HALF_OPEN
  puts its state back (OPEN with its remaining time, HALF_OPEN with its trials in flight). It
  applies only to the CLOSED state of generation ``ARGV[3]`` at the epoch the caller saw, so of
  several processes re-asserting one makes the transition, and a CLOSED reached later in the new
  generation (a trial succeeded) is adopted, not undone;
- ``move``: the transition ``from`` -> ``to`` applies when the shared state is ``from`` and, unless
  ``from`` is ``closed``, its epoch is the caller's (the caller saw the same period);
- ``claim``: a HALF_OPEN trial place, cluster-wide at most ``max_calls`` trials per period;
- ``settle``: a trial ended without a local transition: ``1`` succeeded (counts towards closing),
  ``0`` was ignored (frees its place).

Each change of state or epoch is published on ``KEYS[2]`` as ``"g e state remaining_ms origin"``.
The reply is ``{applied, state, epoch, remaining_ms, created, generation}``; ``remaining_ms`` is
the time until the state's timer (-1: none, or never).
"""

from __future__ import annotations

from typing import Final

__all__: list[str] = []

SCRIPT: Final = """
local key, channel = KEYS[1], KEYS[2]
local op, expected, arg = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local to = ARGV[4]
local rec, maxw = tonumber(ARGV[5]), tonumber(ARGV[6])
local ttl, maxc = tonumber(ARGV[7]), tonumber(ARGV[8])
local lstate, lrem, origin = ARGV[9], tonumber(ARGV[10]), ARGV[11]
local ltr = math.min(tonumber(ARGV[12]) or 0, maxc)
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local h = redis.call('HMGET', key, 's', 'g', 'e', 'ou', 'hu', 'tr', 'ok', 'tu')
local s, g, e = h[1], tonumber(h[2]), tonumber(h[3])
local ou, hu = tonumber(h[4]), tonumber(h[5])
local tr, ok, tu = tonumber(h[6]), tonumber(h[7]), tonumber(h[8])
local created, applied, changed = 0, 0, false
local function until_half_open_ends(at)
  if maxw < 0 then return -1 end
  return at + maxw
end
if not s then
  created, changed = 1, true
  s, g, e, ou, hu, tr, ok, tu = lstate, now, 1, now, -1, 0, 0, 0
  if s == 'open' then
    ou = now + math.max(lrem, 0)
  elseif s == 'half_open' then
    if lrem < 0 then hu = -1 else hu = now + lrem end
    if ltr > 0 then tr, tu = ltr, now + ttl end
  end
end
local e0 = e
local function move(new, at)
  s, e, tr, ok, tu, changed = new, e + 1, 0, 0, 0, true
  if new == 'open' then
    ou, hu = at + rec, -1
  elseif new == 'half_open' then
    hu = until_half_open_ends(at)
  end
end
-- The caller's local OPEN (remaining lrem) or HALF_OPEN (lrem: its max wait; ltr trials in flight)
-- made the shared state.
local function assert_local()
  move(lstate, now)
  if lstate == 'open' then
    ou = now + math.max(lrem, 0)
  else
    if lrem < 0 then hu = -1 else hu = now + lrem end
    if ltr > 0 then tr, tu = ltr, now + ttl end
  end
  applied = 1
end
if s == 'half_open' and hu >= 0 and now >= hu then move('open', hu) end
if s == 'open' and now >= ou then move('half_open', now) end
if s == 'half_open' and tr > 0 and now >= tu then tr, changed = 0, true end
if op == 'move' then
  if s == arg and (arg == 'closed' or e == expected) then
    move(to, now)
    applied = 1
  end
elseif op == 'claim' then
  -- The caller's timer fired on the OPEN period it shares with us: half-open now, not a few
  -- milliseconds later, rather than bounce it back to OPEN for the latency between the two.
  if s == 'open' and e == expected then move('half_open', now) end
  if s == 'half_open' and tr + ok < maxc then
    tr, tu, changed, applied = tr + 1, now + ttl, true, 1
  end
elseif op == 'settle' then
  if s == 'half_open' and e == expected then
    if tr > 0 then tr = tr - 1 end
    if arg == '1' then ok = ok + 1 end
    changed, applied = true, 1
    if ok >= maxc then move('closed', now) end
  end
elseif op == 'join' then
  if created == 0 and s == 'closed' and lstate == 'open' then assert_local() end
elseif op == 'reassert' then
  if created == 0 and s == 'closed' and g == tonumber(arg) and e == expected
    and (lstate == 'open' or lstate == 'half_open') then
    assert_local()
  end
end
if changed then
  redis.call('HSET', key, 's', s, 'g', g, 'e', e, 'ou', ou, 'hu', hu, 'tr', tr, 'ok', ok,
    'tu', tu)
end
local rem = -1
if s == 'open' then
  rem = ou - now
elseif s == 'half_open' and hu >= 0 then
  rem = hu - now
end
if e ~= e0 or created == 1 then
  redis.call('PUBLISH', channel, g .. ' ' .. e .. ' ' .. s .. ' ' .. rem .. ' ' .. origin)
end
return {applied, s, e, rem, created, g}
"""
"""The script; its ``ARGV`` are built by ``RedisBreakerBackend._args``."""
