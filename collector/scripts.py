"""The Lua scripts that write the state, and the table of names they take.

:data:`APPLY` applies a list of stream entries in one call. For each entry it
checks the entry's place in its host's order (see below), writes the state
only when the message is newer, and acknowledges the entry; the call is
atomic, so an entry is never acknowledged without its write and two
collectors racing on one host cannot interleave a check with a write. It
then takes the evaluation mark of every host it changed.

Arguments travel by name: the script's single argument is one msgpack map,
and each entry in it is a map whose names are listed in :data:`PROTOCOL`,
the one table both sides follow (:mod:`collector.plan` builds the maps, the
Lua below reads ``entry.<name>``). The keys an entry touches are also passed
as the call's KEYS, so that Redis knows them; the script reads their names
from the entry map.

**Order is the stream's.** Each host appends to streams of its own, and
Redis gives every entry an id that grows with each append, so a host's
messages are applied in the order of their entry ids, whatever the clocks
or spools of the host say. The script applies an entry only when no older
entry of its stream is still pending in the group (another collector, or
this one, has yet to apply it), so however many collectors share the
streams, and whichever of them stalls, a host's entries are applied one
after the other; the host hash keeps the id last applied (``stream_id``),
so an entry applied once and delivered again is skipped. A report the
agent sent twice (Redis executed the XADD but the reply was lost) has the
same ``epoch`` and ``seq`` as the one applied before it and is skipped too.
Positions are entry ids with both numbers zero-padded to 20 digits, so
that comparing them as strings orders them exactly (Lua's numbers are
doubles and would lose precision above 2**53).

An entry is acknowledged in the same call as its write, and the entries
before it are then all acknowledged, so the script also trims them from
the host's stream (``XTRIM MINID ~``): a stream holds what waits for a
collector and at most about one node of applied entries.

An entry's result: 0 = older or replayed (acknowledged, nothing written),
1 = applied, -1 = planned on a view of the state that is no longer true (a
session merged with a stored session that changed since, a report's
difference to a hash that changed since; not acknowledged: plan it again
from what is stored now), -2 = an older entry of its stream is still
pending (not acknowledged: read it again once that one is applied), or an
error text ``ERR ...`` when Redis refused its write (not acknowledged;
redelivered, dead-lettered after ``max_deliveries``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from hashlib import sha1
from typing import Any

SKIPPED = 0
REPLAN = -1
WAIT = -2

# Marks a host's sessions-order hash keeps before the oldest tombstones of
# disconnected clients are folded into one floor mark (a reporter that never
# sends a snapshot would otherwise grow it by one field per connection).
MAX_ORDER_MARKS = 4096

#: The apply script's argument, by name. Top level: ``mark_ttl`` (seconds an
#: evaluation mark lives; 0 takes none) and ``entries`` (the entry maps, applied
#: in order). Each entry map has the names of ``common`` and those of its kind.
PROTOCOL: dict[str, tuple[str, ...]] = {
    # kind: 'report', 'session', 'snapshot' or 'dead_letter'; stream, group,
    # id: the stream entry, acknowledged with the write; mark: the host's
    # evaluation-pending key ('' for none).
    "common": ("kind", "stream", "group", "id", "mark"),
    # host_key, hosts_index, history_key: the host's hash, the index of hosts
    # and the host's history list; epoch and seq: the report's own (text, and
    # seq zero-padded), which tell a report sent twice; entry_ms: the entry's
    # Redis time (the index score); history_line and
    # history_length: the line pushed and the list's bound; dropped: reports
    # the agent lost since its last one; status: the report's status;
    # due_index, due_ms: the index of when hosts turn stale, and when this
    # one does unless it reports again ('' for never; see collector.keepalive);
    # base: '' when fields is the whole hash, else the position of the
    # write that fields and deleted are the difference to (see
    # collector.hashes); fields: field -> value; deleted: field names.
    "report": ("host_key", "hosts_index", "due_index", "history_key", "host", "epoch", "seq",
               "entry_ms", "due_ms",
               "history_line", "history_length", "dropped", "status", "base", "fields",
               "deleted"),
    # A report a later one of its batch supersedes: its history line only
    # (see collector.plan.superseded); names as in 'report'.
    "history": ("host_key", "history_key", "epoch", "seq", "dropped", "history_line",
                "history_length"),
    # sessions_key, order_key: the host's sessions hash and its ordering
    # marks; action: 'set' or 'del' of the client's session text; expect:
    # 'any', 'absent' or 'equal' (to expected) for what is stored now, so that
    # a merge planned on a stale read is refused; max_marks: see MAX_ORDER_MARKS.
    # epoch and seq (zero-padded) of the reporter: an event whose seq is not
    # above the last applied of the same epoch was sent twice (see repeated).
    "session": ("sessions_key", "order_key", "epoch", "seq", "action", "client", "text", "expect",
                "expected", "max_marks"),
    # sessions: the snapshot as a flat list (client, text, ...).
    "snapshot": ("sessions_key", "order_key", "epoch", "seq", "sessions"),
    # An entry with nothing to write (a report sent twice, a session event a
    # later snapshot of its batch replaces; see collector.plan): acknowledged only.
    "skip": (),
    # dead_letter_stream, maxlen: where the entry goes and that stream's
    # bound; fields: the dead letter's fields as a flat list.
    "dead_letter": ("dead_letter_stream", "maxlen", "fields"),
}

_HELPERS = """
-- Commands whose argument lists come from the caller, in slices, so that
-- no single call unpacks more than Lua's stack takes.
local function bulk(command, key, items)
  for i = 1, #items, 1000 do
    redis.call(command, key, unpack(items, i, math.min(i + 999, #items)))
  end
end
local function pad(number) return string.rep('0', 20 - #number) .. number end
-- An entry id as a string that orders as the id does.
local function position(id)
  local sep = string.find(id, '-', 1, true)
  return pad(string.sub(id, 1, sep - 1)) .. ':' .. pad(string.sub(id, sep + 1))
end
"""

APPLY = _HELPERS + """
local function push_history(e)
  if redis.call('LPUSH', e.history_key, e.history_line) > e.history_length then
    redis.call('LTRIM', e.history_key, 0, e.history_length - 1)
  end
end

local function report(e)
  local stored = redis.call('HMGET', e.host_key, 'stream_id', 'epoch', 'seq', 'dropped_total',
                            'stale', 'grace_until_ms', 'grace_until')
  local current = stored[1] and position(stored[1])
  if current and current >= e.position then return 0 end
  if stored[2] == e.epoch and stored[3] and pad(stored[3]) >= e.seq then return 0 end
  if e.base == '' then
    -- The whole hash is replaced: whatever the sweep or the keepalive's
    -- grace added since the last report goes with it.
    redis.call('DEL', e.host_key)
  elseif current ~= e.base then
    return -1
  else
    -- A difference: undo what the sweep and the keepalive's grace added,
    -- as the whole write would.
    bulk('HDEL', e.host_key, e.deleted)
    if stored[6] or stored[7] then
      redis.call('HDEL', e.host_key, 'grace_until_ms', 'grace_until')
    end
    if stored[5] ~= 'no' then
      redis.call('HSET', e.host_key, 'stale', 'no', 'status', e.status)
    end
  end
  local written = {'dropped_total', (tonumber(stored[4]) or 0) + e.dropped}
  for name, value in pairs(e.fields) do
    written[#written + 1] = name
    written[#written + 1] = value
  end
  bulk('HSET', e.host_key, written)
  redis.call('ZADD', e.hosts_index, e.entry_ms, e.host)
  if e.due_ms == '' then
    redis.call('ZREM', e.due_index, e.host)
  else
    redis.call('ZADD', e.due_index, e.due_ms, e.host)
  end
  push_history(e)
  return 1
end

-- True when the reporter sent this event before (it re-sends a batch whose
-- reply it lost): its seq is not above the last applied of its epoch.
-- Otherwise the event is recorded as the last applied.
local function repeated(e)
  local sent = redis.call('HGET', e.order_key, 'sent')
  if sent then
    local sep = string.find(sent, ':', 1, true)
    if string.sub(sent, 1, sep - 1) == e.epoch and string.sub(sent, sep + 1) >= e.seq then
      return true
    end
  end
  redis.call('HSET', e.order_key, 'sent', e.epoch .. ':' .. e.seq)
  return false
end

-- A report whose hash a later one of the same call writes: the same checks
-- as a report's, then only its history line and the reports its agent lost.
local function history(e)
  local stored = redis.call('HMGET', e.host_key, 'stream_id', 'epoch', 'seq')
  if stored[1] and position(stored[1]) >= e.position then return 0 end
  if stored[2] == e.epoch and stored[3] and pad(stored[3]) >= e.seq then return 0 end
  if e.dropped > 0 then redis.call('HINCRBY', e.host_key, 'dropped_total', e.dropped) end
  push_history(e)
  return 1
end

local function session(e)
  local mark = 'c:' .. e.client
  local marks = redis.call('HMGET', e.order_key, 'snapshot', mark, 'floor')
  local last = marks[2] or marks[3]
  if (marks[1] and marks[1] >= e.position) or (last and last >= e.position) then
    return 0
  end
  if e.expect ~= 'any' then
    local current = redis.call('HGET', e.sessions_key, e.client)
    if e.expect == 'absent' then
      if current then return -1 end
    elseif current ~= e.expected then
      return -1
    end
  end
  if repeated(e) then return 0 end
  if e.action == 'set' then
    redis.call('HSET', e.sessions_key, e.client, e.text)
  else
    redis.call('HDEL', e.sessions_key, e.client)
  end
  redis.call('HSET', e.order_key, mark, e.position)
  if e.action == 'del' and redis.call('HLEN', e.order_key) > e.max_marks then
    -- Fold the older half of the tombstones (marks of clients that are gone)
    -- into one floor: a late event of any absent client at or below it is old.
    local all = redis.call('HGETALL', e.order_key)
    local tombs = {}
    for i = 1, #all, 2 do
      local name = all[i]
      if string.sub(name, 1, 2) == 'c:'
         and redis.call('HEXISTS', e.sessions_key, string.sub(name, 3)) == 0 then
        tombs[#tombs + 1] = {all[i + 1], name}
      end
    end
    table.sort(tombs, function(a, b) return a[1] < b[1] end)
    local drop = {}
    local floor = redis.call('HGET', e.order_key, 'floor') or ''
    for i = 1, math.floor(#tombs / 2) do
      drop[#drop + 1] = tombs[i][2]
      if tombs[i][1] > floor then floor = tombs[i][1] end
    end
    if #drop > 0 then
      bulk('HDEL', e.order_key, drop)
      redis.call('HSET', e.order_key, 'floor', floor)
    end
  end
  return 1
end

-- A client whose own mark is newer than the snapshot keeps its current state:
-- a parallel collector already applied a later event for it.
local function snapshot(e)
  local snap = redis.call('HGET', e.order_key, 'snapshot')
  if (snap and snap >= e.position) or repeated(e) then return 0 end
  local all = redis.call('HGETALL', e.order_key)
  local newer, drop = {}, {}
  for i = 1, #all, 2 do
    local name, value = all[i], all[i + 1]
    if string.sub(name, 1, 2) == 'c:' then
      if value > e.position then newer[string.sub(name, 3)] = true else drop[#drop + 1] = name end
    elseif name == 'floor' and value <= e.position then
      drop[#drop + 1] = name
    end
  end
  local gone = {}
  for _, client in ipairs(redis.call('HKEYS', e.sessions_key)) do
    if not newer[client] then gone[#gone + 1] = client end
  end
  bulk('HDEL', e.sessions_key, gone)
  local kept = {}
  for i = 1, #e.sessions, 2 do
    if not newer[e.sessions[i]] then
      kept[#kept + 1] = e.sessions[i]
      kept[#kept + 1] = e.sessions[i + 1]
    end
  end
  bulk('HSET', e.sessions_key, kept)
  bulk('HDEL', e.order_key, drop)
  redis.call('HSET', e.order_key, 'snapshot', e.position)
  return 1
end

local function dead_letter(e)
  redis.call('XADD', e.dead_letter_stream, 'MAXLEN', '~', e.maxlen, '*', unpack(e.fields))
  return 1
end

local function skip(e) return 0 end

local apply = {report = report, history = history, session = session, snapshot = snapshot,
               skip = skip, dead_letter = dead_letter}

-- True while an entry of the stream older than e is pending: it must be
-- applied first.
local function behind(e)
  local first = redis.call('XPENDING', e.stream, e.group, '-', e.id, 1)[1]
  return first ~= nil and first[1] ~= e.id
end

local function run(e)
  if e.kind == 'dead_letter' then return dead_letter(e) end
  if behind(e) then return -2 end
  e.position = position(e.id)
  return apply[e.kind](e)
end

local call = cmsgpack.unpack(ARGV[1])
local results, marked, marks_seen = {}, {}, {}
-- The newest entry applied of each stream: every entry before it is
-- acknowledged, so the stream is trimmed up to it once the call is done.
local trim, trimmed = {}, {}
for n, e in ipairs(call.entries) do
  local ok, result = pcall(run, e)
  if not ok then
    if type(result) == 'table' and result.err then result = result.err end
    results[n] = 'ERR ' .. tostring(result)
    -- An error of the whole server (a replica, a dataset loading) would
    -- meet every entry after this one: they stay pending too.
    if string.find(results[n], 'READONLY ', 1, true)
       or string.find(results[n], 'LOADING ', 1, true) then
      break
    end
  else
    results[n] = result
    if result >= 0 then
      redis.call('XACK', e.stream, e.group, e.id)
      if e.kind ~= 'dead_letter' then
        if not trim[e.stream] then trimmed[#trimmed + 1] = e.stream end
        trim[e.stream] = e.id
      end
    end
    if result == 1 and e.mark ~= '' and call.mark_ttl > 0 and not marks_seen[e.mark] then
      marks_seen[e.mark] = true
      if redis.call('SET', e.mark, '1', 'NX', 'EX', call.mark_ttl) then
        marked[#marked + 1] = n
      end
    end
  end
end
for _, stream in ipairs(trimmed) do
  redis.call('XTRIM', stream, 'MINID', '~', trim[stream])
end
return {results, marked}
"""

# KEYS: host hash, due index. ARGV: host, last_seen_ms the sweep judged, its
# stale level, its status, when it is due next ('' for never: it leaves the
# index). Nothing when the host reported since the sweep read it: its report
# wrote the level and scheduled it. 1 when the level changed, else 0.
STALE = """
local stored = redis.call('HMGET', KEYS[1], 'last_seen_ms', 'stale')
if stored[1] ~= ARGV[2] then return 0 end
if ARGV[5] == '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
end
if stored[2] == ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'stale', ARGV[3], 'status', ARGV[4])
return 1
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


APPLY_SCRIPT = LuaScript("apply", APPLY)
ALL = (APPLY_SCRIPT,)


def position(entry_id: str) -> str:
    """A stream entry id as a string that orders as the id does (the
    script's ``position``)."""
    ms, _, seq = entry_id.partition("-")
    return f"{int(ms):020d}:{int(seq):020d}"


def padded(number: int) -> str:
    """``number`` zero-padded to 20 digits, as the script compares it."""
    return f"{number:020d}"
