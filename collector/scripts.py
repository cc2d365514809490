"""The Lua scripts that write the state, and the table of names they take.

:data:`APPLY` applies a list of stream entries in one call. For each entry it
checks the message's ordering key against what is stored, writes the state
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

Ordering keys are ``epoch:seq`` with both numbers zero-padded to 20 digits,
so that comparing them as strings orders them exactly (Lua's numbers are
doubles and would lose precision above 2**53).

An entry's result: 0 = older or replayed (acknowledged, nothing written),
1 = applied, -1 = planned on a view of the state that is no longer true (a
session merged with a stored session that changed since, a report's
difference to a hash that changed since; not acknowledged: plan it again
from what is stored now), or an error text ``ERR ...`` when Redis refused
its write (not acknowledged; redelivered, dead-lettered after
``max_deliveries``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from hashlib import sha1
from typing import Any

SKIPPED = 0
APPLIED = 1
REPLAN = -1

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
    # and the host's history list; order: the report's ordering key;
    # entry_ms: the entry's Redis time (the index score); history_line and
    # history_length: the line pushed and the list's bound; dropped: reports
    # the agent lost since its last one; status: the report's status;
    # base: '' when fields is the whole hash, else the ordering key of the
    # write that fields and deleted are the difference to (see
    # collector.hashes); fields: field -> value; deleted: field names.
    "report": ("host_key", "hosts_index", "history_key", "host", "order", "entry_ms",
               "history_line", "history_length", "dropped", "status", "base", "fields",
               "deleted"),
    # sessions_key, order_key: the host's sessions hash and its ordering
    # marks; action: 'set' or 'del' of the client's session text; expect:
    # 'any', 'absent' or 'equal' (to expected) for what is stored now, so that
    # a merge planned on a stale read is refused; max_marks: see MAX_ORDER_MARKS.
    "session": ("sessions_key", "order_key", "order", "action", "client", "text", "expect",
                "expected", "max_marks"),
    # sessions: the snapshot as a flat list (client, text, ...).
    "snapshot": ("sessions_key", "order_key", "order", "sessions"),
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
"""

APPLY = _HELPERS + """
local function report(e)
  local stored = redis.call('HMGET', e.host_key, 'epoch', 'seq', 'dropped_total', 'stale',
                            'grace_until_ms', 'grace_until')
  local current = stored[1] and stored[2] and pad(stored[1]) .. ':' .. pad(stored[2])
  if current and current >= e.order then return 0 end
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
    if stored[5] or stored[6] then
      redis.call('HDEL', e.host_key, 'grace_until_ms', 'grace_until')
    end
    if stored[4] ~= 'no' then
      redis.call('HSET', e.host_key, 'stale', 'no', 'status', e.status)
    end
  end
  local written = {'dropped_total', (tonumber(stored[3]) or 0) + e.dropped}
  for name, value in pairs(e.fields) do
    written[#written + 1] = name
    written[#written + 1] = value
  end
  bulk('HSET', e.host_key, written)
  redis.call('ZADD', e.hosts_index, e.entry_ms, e.host)
  if redis.call('LPUSH', e.history_key, e.history_line) > e.history_length then
    redis.call('LTRIM', e.history_key, 0, e.history_length - 1)
  end
  return 1
end

local function session(e)
  local mark = 'c:' .. e.client
  local marks = redis.call('HMGET', e.order_key, 'snapshot', mark, 'floor')
  local last = marks[2] or marks[3]
  if (marks[1] and marks[1] >= e.order) or (last and last >= e.order) then
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
  if e.action == 'set' then
    redis.call('HSET', e.sessions_key, e.client, e.text)
  else
    redis.call('HDEL', e.sessions_key, e.client)
  end
  redis.call('HSET', e.order_key, mark, e.order)
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
  if snap and snap >= e.order then return 0 end
  local all = redis.call('HGETALL', e.order_key)
  local newer, drop = {}, {}
  for i = 1, #all, 2 do
    local name, value = all[i], all[i + 1]
    if string.sub(name, 1, 2) == 'c:' then
      if value > e.order then newer[string.sub(name, 3)] = true else drop[#drop + 1] = name end
    elseif name == 'floor' and value <= e.order then
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
  redis.call('HSET', e.order_key, 'snapshot', e.order)
  return 1
end

local function dead_letter(e)
  redis.call('XADD', e.dead_letter_stream, 'MAXLEN', '~', e.maxlen, '*', unpack(e.fields))
  return 1
end

local apply = {report = report, session = session, snapshot = snapshot,
               dead_letter = dead_letter}
local call = cmsgpack.unpack(ARGV[1])
local results, marked, marks_seen = {}, {}, {}
-- Entries to acknowledge, one XACK per stream and group after the writes.
local acks, ack_order = {}, {}
local function ack(e)
  local name = e.stream .. '\0' .. e.group
  if not acks[name] then
    acks[name] = {}
    ack_order[#ack_order + 1] = {name, e.stream, e.group}
  end
  table.insert(acks[name], e.id)
end
for n, e in ipairs(call.entries) do
  local ok, result = pcall(apply[e.kind], e)
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
    if result ~= -1 then ack(e) end
    if result == 1 and e.mark ~= '' and call.mark_ttl > 0 and not marks_seen[e.mark] then
      marks_seen[e.mark] = true
      if redis.call('SET', e.mark, '1', 'NX', 'EX', call.mark_ttl) then
        marked[#marked + 1] = n
      end
    end
  end
end
for _, item in ipairs(ack_order) do
  local ids = acks[item[1]]
  for i = 1, #ids, 1000 do
    redis.call('XACK', item[2], item[3], unpack(ids, i, math.min(i + 999, #ids)))
  end
end
return {results, marked}
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


def order_key(epoch: int, seq: int) -> str:
    """The string ordering key of ``(epoch, seq)``."""
    return f"{epoch:020d}:{seq:020d}"
