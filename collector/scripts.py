"""The Lua scripts that apply one stream entry to the state, atomically.

Each script checks the ordering key of the message against what is stored,
writes the state only when the message is newer and acknowledges the stream
entry, all in one atomic step: an entry is never acknowledged without its
state write, and two collectors racing on the same host cannot interleave a
check with a write. The collector runs them through :data:`BATCH`, one call
for many entries, which also takes the evaluation mark of each changed host
once per call.

Ordering keys are ``epoch:seq`` with both numbers zero-padded to 20 digits,
so that comparing them as strings orders them exactly (Lua's numbers are
doubles and would lose precision above 2**53).

Return values: 0 = older or replayed (acknowledged, nothing written),
1 = applied, -1 = the session being merged changed meanwhile (not
acknowledged; retry), -2 = a report's difference no longer fits the stored
hash (not acknowledged; send the whole hash).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from hashlib import sha1
from typing import Any

SKIPPED = 0
APPLIED = 1
CONFLICT = -1
NEED_FULL = -2

# Marks a host's sessions-order hash keeps before the oldest tombstones of
# disconnected clients are folded into one floor mark (a reporter that never
# sends a snapshot would otherwise grow it by one field per connection).
MAX_ORDER_MARKS = 4096

_COMMON = """
local function bulk(command, key, items)
  for i = 1, #items, 1000 do
    redis.call(command, key, unpack(items, i, math.min(i + 999, #items)))
  end
end
"""

# KEYS: host hash, hosts index, history list, stream
# ARGV: group, entry id, order, entry ms, history line, history length,
#       dropped, host id, status, base, number of fields to delete, those
#       fields, field, value, field, value, ...
# An empty base is a whole write (the hash is replaced); otherwise the fields
# are a difference that applies only on top of the write whose ordering key
# is the base (see collector.hostwrite), else NEED_FULL (-2, not acknowledged).
REPORT = _COMMON + """
local stored = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'dropped_total',
                         'grace_until_ms', 'grace_until', 'stale')
local current = false
if stored[1] and stored[2] then
  current = string.rep('0', 20 - #stored[1]) .. stored[1] .. ':'
         .. string.rep('0', 20 - #stored[2]) .. stored[2]
  if current >= ARGV[3] then
    redis.call('XACK', KEYS[4], ARGV[1], ARGV[2])
    return 0
  end
end
local ndel = tonumber(ARGV[11])
if ARGV[10] == '' then
  redis.call('DEL', KEYS[1])
elseif current ~= ARGV[10] then
  return -2
else
  if ndel > 0 then redis.call('HDEL', KEYS[1], unpack(ARGV, 12, 11 + ndel)) end
  -- A report ends the keepalive's grace after an outage, as the whole
  -- write's DEL does, and the staleness the sweep marked since the base.
  if stored[4] or stored[5] then redis.call('HDEL', KEYS[1], 'grace_until_ms', 'grace_until') end
  if stored[6] ~= 'no' then redis.call('HSET', KEYS[1], 'stale', 'no', 'status', ARGV[9]) end
end
redis.call('HSET', KEYS[1], 'dropped_total', (tonumber(stored[3]) or 0) + tonumber(ARGV[7]),
           unpack(ARGV, 12 + ndel))
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[8])
if redis.call('LPUSH', KEYS[3], ARGV[5]) > tonumber(ARGV[6]) then
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[6]) - 1)
end
redis.call('XACK', KEYS[4], ARGV[1], ARGV[2])
return 1
"""

# KEYS: sessions hash, sessions-order hash, stream
# ARGV: group, entry id, order, op ('set' or 'del'), client id, text,
#       expect ('any', 'absent' or 'equal'), expected text, most order marks
SESSION = _COMMON + """
local mark = 'c:' .. ARGV[5]
local marks = redis.call('HMGET', KEYS[2], 'snapshot', mark, 'floor')
local last = marks[2] or marks[3]
if (marks[1] and marks[1] >= ARGV[3]) or (last and last >= ARGV[3]) then
  redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
  return 0
end
if ARGV[7] ~= 'any' then
  local current = redis.call('HGET', KEYS[1], ARGV[5])
  if ARGV[7] == 'absent' then
    if current then return -1 end
  elseif current ~= ARGV[8] then
    return -1
  end
end
if ARGV[4] == 'set' then
  redis.call('HSET', KEYS[1], ARGV[5], ARGV[6])
else
  redis.call('HDEL', KEYS[1], ARGV[5])
end
redis.call('HSET', KEYS[2], mark, ARGV[3])
if ARGV[4] == 'del' and redis.call('HLEN', KEYS[2]) > tonumber(ARGV[9]) then
  -- Fold the older half of the tombstones (marks of clients that are gone)
  -- into one floor: a late event of any absent client at or below it is old.
  local marks = redis.call('HGETALL', KEYS[2])
  local tombs = {}
  for i = 1, #marks, 2 do
    local field = marks[i]
    if string.sub(field, 1, 2) == 'c:'
       and redis.call('HEXISTS', KEYS[1], string.sub(field, 3)) == 0 then
      tombs[#tombs + 1] = {marks[i + 1], field}
    end
  end
  table.sort(tombs, function(a, b) return a[1] < b[1] end)
  local drop = {}
  local floor = redis.call('HGET', KEYS[2], 'floor') or ''
  for i = 1, math.floor(#tombs / 2) do
    drop[#drop + 1] = tombs[i][2]
    if tombs[i][1] > floor then floor = tombs[i][1] end
  end
  if #drop > 0 then
    bulk('HDEL', KEYS[2], drop)
    redis.call('HSET', KEYS[2], 'floor', floor)
  end
end
redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
return 1
"""

# KEYS: sessions hash, sessions-order hash, stream
# ARGV: group, entry id, order, client id, text, client id, text, ...
# A client whose own mark is newer than the snapshot keeps its current state:
# a parallel collector already applied a later event for it.
SNAPSHOT = _COMMON + """
local snap = redis.call('HGET', KEYS[2], 'snapshot')
if snap and snap >= ARGV[3] then
  redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
  return 0
end
local marks = redis.call('HGETALL', KEYS[2])
local newer = {}
local drop = {}
for i = 1, #marks, 2 do
  local field, value = marks[i], marks[i + 1]
  if string.sub(field, 1, 2) == 'c:' then
    if value > ARGV[3] then newer[string.sub(field, 3)] = true else drop[#drop + 1] = field end
  elseif field == 'floor' and value <= ARGV[3] then
    drop[#drop + 1] = field
  end
end
local gone = {}
for _, client in ipairs(redis.call('HKEYS', KEYS[1])) do
  if not newer[client] then gone[#gone + 1] = client end
end
bulk('HDEL', KEYS[1], gone)
local pairs_ = {}
for i = 4, #ARGV, 2 do
  if not newer[ARGV[i]] then
    pairs_[#pairs_ + 1] = ARGV[i]
    pairs_[#pairs_ + 1] = ARGV[i + 1]
  end
end
bulk('HSET', KEYS[1], pairs_)
bulk('HDEL', KEYS[2], drop)
redis.call('HSET', KEYS[2], 'snapshot', ARGV[3])
redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
return 1
"""

# KEYS: host hash
# ARGV: last_seen_ms the sweep judged, new stale level, new status
# Only when the host has not reported since the sweep read it.
STALE = """
local stored = redis.call('HMGET', KEYS[1], 'last_seen_ms', 'stale')
if stored[1] ~= ARGV[1] or stored[2] == ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'stale', ARGV[2], 'status', ARGV[3])
return 1
"""

# KEYS: dead-letter stream, source stream
# ARGV: group, entry id, maxlen, field, value, ...
DEAD_LETTER = """
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
return 1
"""


def _as_function(name: str, source: str) -> str:
    """One entry script as a Lua function inside :data:`BATCH`.

    Its keys and arguments are read in place, at offsets ``k`` and ``a`` of
    the batch's KEYS and of ARGS, the batch's unpacked arguments (``na`` of
    them), rather than copied; its
    XACK and its ZADD of the hosts index are collected and sent once per
    batch, after every entry's write.
    """
    body = source.replace(_COMMON, "")
    body = body.replace("redis.call('XACK', ", "ack(").replace("redis.call('ZADD', ", "zadd(")
    # Ranges first: the one-argument form is rewritten into a range.
    body = re.sub(r"unpack\(ARGV, ([^,()]+), ([^,()]+)\)", r"unpack(ARGS, a + \1, a + \2)", body)
    body = re.sub(r"unpack\(ARGV, ([^,()]+)\)", r"unpack(ARGS, a + \1, a + na)", body)
    body = body.replace("#ARGV", "na").replace("KEYS[", "KEYS[k + ").replace("ARGV[", "ARGS[a + ")
    return f"local function {name}(k, a, na)\n{body}\nend\n"


# One call for many entries: each entry's own script (the functions above)
# applied in turn, the evaluation marks of the hosts that changed, then the
# ZADDs of the hosts index and the XACKs of the entries applied, one command
# each. The call is atomic, so an entry is still acknowledged only with its
# write. A Redis error in one entry (pcall) is that entry's result and
# leaves it unacknowledged, as it did with one script call per entry; one
# that concerns the whole server (a replica, a loading dataset) stops the
# call, and the entries after it stay pending too.
# KEYS: every entry's keys in turn, each entry's followed by its host's
#       evaluation-pending key when it has one
# ARGV: one msgpack array (ARGS), unpacked by the script: mark TTL in seconds
#       (0: no marks), then per entry: script name, key count, 1 if a mark
#       key follows its keys else 0, argument count, its arguments. One packed
#       argument rather than thousands: cheaper for the collector to pack and
#       for Redis to parse.
# Returns {results, entries (1-based) whose host's mark this call took}, and
# a third item, an error text, when the final ZADDs and XACKs failed (then
# nothing of this call is acknowledged); a result is the entry script's
# return value or an 'ERR ...' string.
BATCH = _COMMON + """
local ARGS = cmsgpack.unpack(ARGV[1])
local acks, ack_order, zadds, zadd_order = {}, {}, {}, {}
local function ack(stream, group, id)
  local key = stream .. '\\0' .. group
  local list = acks[key]
  if not list then
    list = {stream, group}
    acks[key] = list
    ack_order[#ack_order + 1] = key
  end
  list[#list + 1] = id
end
local function zadd(key, score, member)
  local list = zadds[key]
  if not list then
    list = {}
    zadds[key] = list
    zadd_order[#zadd_order + 1] = key
  end
  list[#list + 1] = score
  list[#list + 1] = member
end
""" + (_as_function("report", REPORT) + _as_function("session", SESSION)
       + _as_function("snapshot", SNAPSHOT) + _as_function("dead_letter", DEAD_LETTER)) + """
local run = {report = report, session = session, snapshot = snapshot, dead_letter = dead_letter}
local ttl = tonumber(ARGS[1])
local results, marked, seen, wanted, wanted_by = {}, {}, {}, {}, {}
local k, a, n, last = 1, 2, 0, #ARGS
while a <= last do
  local fn, nk, nm, na = run[ARGS[a]], tonumber(ARGS[a + 1]), tonumber(ARGS[a + 2]),
                         tonumber(ARGS[a + 3])
  n = n + 1
  local ok, result = pcall(fn, k - 1, a + 3, na)
  if ok then
    results[n] = result
    if result == 1 and nm == 1 and ttl > 0 and not seen[KEYS[k + nk]] then
      seen[KEYS[k + nk]] = true
      wanted[#wanted + 1] = KEYS[k + nk]
      wanted_by[#wanted] = n
    end
  else
    if type(result) == 'table' and result.err then result = result.err end
    results[n] = 'ERR ' .. tostring(result)
    if string.find(results[n], 'READONLY ', 1, true)
       or string.find(results[n], 'LOADING ', 1, true) then
      break
    end
  end
  k = k + nk + nm
  a = a + 4 + na
end
-- The marks of the hosts changed: one MGET finds those still held (a job
-- waits for the host; during a backlog most are), SET NX takes the others.
for i = 1, #wanted, 1000 do
  local upto = math.min(i + 999, #wanted)
  local held = redis.call('MGET', unpack(wanted, i, upto))
  for j = i, upto do
    if not held[j - i + 1] and redis.call('SET', wanted[j], '1', 'NX', 'EX', ttl) then
      marked[#marked + 1] = wanted_by[j]
    end
  end
end
local ok, err = pcall(function()
  for _, key in ipairs(zadd_order) do bulk('ZADD', key, zadds[key]) end
  for _, key in ipairs(ack_order) do
    local list = acks[key]
    for i = 3, #list, 1000 do
      redis.call('XACK', list[1], list[2], unpack(list, i, math.min(i + 999, #list)))
    end
  end
end)
if not ok then
  if type(err) == 'table' and err.err then err = err.err end
  return {results, marked, 'ERR ' .. tostring(err)}
end
return {results, marked}
"""


@dataclass(frozen=True)
class LuaScript:
    """A script's text and SHA1; loaded once, then run by EVALSHA."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        # Redis names a script by the SHA1 of its text.
        object.__setattr__(self, "sha", sha1(self.source.encode("utf-8")).hexdigest())

    def load(self, client: Any) -> None:
        """Load the script into Redis (idempotent)."""
        client.script_load(self.source)

    def call(self, client: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """EVALSHA on ``client`` (a client or a pipeline)."""
        return client.evalsha(self.sha, len(keys), *keys, *args)

    def command(self, keys: Sequence[Any], args: Sequence[Any]) -> tuple[Any, ...]:
        """The EVALSHA command as a tuple, for :func:`collector.rawpipe.execute`."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)


ALL = (
    LuaScript("report", REPORT),
    LuaScript("session", SESSION),
    LuaScript("snapshot", SNAPSHOT),
    LuaScript("stale", STALE),
    LuaScript("dead_letter", DEAD_LETTER),
    LuaScript("batch", BATCH),
)
REPORT_SCRIPT, SESSION_SCRIPT, SNAPSHOT_SCRIPT, STALE_SCRIPT, DEAD_LETTER_SCRIPT, BATCH_SCRIPT = ALL


# The "epoch:" part of ordering keys, by epoch: an agent keeps its epoch for
# as long as its spool lasts, so formatting it once saves half the work.
_EPOCH_TEXTS_LIMIT = 4096
_epoch_texts: dict[int, str] = {}


def order_key(epoch: int, seq: int) -> str:
    """The string ordering key of ``(epoch, seq)``."""
    prefix = _epoch_texts.get(epoch)
    if prefix is None:
        prefix = "%020d:" % epoch  # noqa: UP031 - measurably faster than f"{epoch:020d}:"
        if len(_epoch_texts) >= _EPOCH_TEXTS_LIMIT:
            _epoch_texts.clear()
        _epoch_texts[epoch] = prefix
    # zfill pads as %020d does (after the sign) in half the time.
    return prefix + str(seq).zfill(20)
