"""Hand-off to the alerter: one rq evaluation job per changed host, coalesced.

For every host whose state changed in a batch, :meth:`Evaluations.request`
takes the host's "evaluation pending" mark (``SET
KeySpace.evaluation_pending(host) 1 NX EX ttl``); only a host whose mark was
free gets a job, and the job deletes the mark first thing, so at most one
evaluation per host waits in the queue. The job is named by its import path
(:data:`wire.keys.EVALUATE_JOB`): the collector never imports the alerter.

Every report of a host ends in a job, and rq's ``Queue.enqueue_many``
spends 110–200 µs of our CPU on each (building a ``Job``, serialising and
compressing its call, formatting its times, typing-protocol checks,
redis-py's pipeline): about an eighth of the collector's CPU when it works
off a backlog. So, with an rq version listed in :data:`VERIFIED_RQ_VERSIONS`,
rq enqueues the jobs of the first two hosts into a pipeline that is never
executed, and the commands it queued there become templates: each host gets
one, the first host's with the values that differ between the two
recordings (the compressed call, the description) taken from one rq
``Job`` given the host's arguments and description, once per host and
process. Each value is read off that Job as the recordings showed it to be
stored: as the attribute is, or as a zlib stream of it (else through
``Job.to_dict()``, which compresses and formats every field of the job and
costs several times as much). Where both recordings show a value (or the
call it compresses) to be the host id between a fixed beginning and end,
as a host id of the wire contract, which neither JSON nor repr escapes,
always is, a host's value is that frame around its id, without a Job or
rq's serializer: a third less work for a host new to the process. A job is
then sent from its host's template
with a fresh job id and the batch's time in place of the recorded ones, the
whole batch run by one Lua script, as atomic as rq's ``MULTI``/``EXEC`` and
with one reply rather than one per command: about 15 µs per job.
:meth:`Evaluations.prepare` gives those commands to the collector, which
sends them behind its scripts without waiting; :meth:`Evaluations.enqueue`
sends and waits. Commands that change nothing for a job whose id is new are
left out and the pushes onto the queue joined (see :func:`_simplify`), so
Redis ends up holding what ``enqueue_many`` would have left, apart from ids,
times and how the call is compressed; the tests compare the two and run the
jobs on a real worker. Nothing of rq's storage format is assumed here but
what the recordings show; an rq version not listed, or a recording of
another shape than expected, falls back to ``Queue.enqueue_many``.
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import msgpack
import redis
import rq
from rq import Queue
from rq.job import Job, JobStatus
from rq.queue import EnqueueData
from rq.utils import now, utcformat

from collector import rawpipe
from wire.keys import EVALUATE_JOB, RQ_SERIALIZER, KeySpace

logger = logging.getLogger(__name__)

# An evaluation nobody picked up within an hour is worthless: the next state
# change enqueues a fresh one. Results are not needed, failures are kept for
# a week so a sysop can see them in rq's failed registry.
JOB_TTL_S = 3600
FAILURE_TTL_S = 7 * 86_400

# rq versions whose enqueue the template path was checked against (the tests
# compare what both paths leave in Redis and run the jobs with an rq worker).
# Another version gets Queue.enqueue_many until it is checked and listed.
VERIFIED_RQ_VERSIONS = frozenset({"3.0.0"})

# Templates kept; a fleet has far fewer hosts, this only bounds the memory a
# flood of made-up host ids could take (the oldest are dropped first).
MAX_TEMPLATES = 20_000


class _Command(NamedTuple):
    """One command of a recorded enqueue, with the places its job id and time go."""

    args: tuple[bytes, ...]
    ids: tuple[tuple[int, bytes, bytes], ...]  # (position, text before the id, text after)
    stamps: tuple[int, ...]  # positions holding the enqueue time

    def build(self, job_id: bytes, stamp: bytes) -> tuple[bytes, ...]:
        """The command for the job ``job_id`` enqueued at ``stamp``."""
        args = list(self.args)
        for position, before, after in self.ids:
            args[position] = before + job_id + after
        for position in self.stamps:
            args[position] = stamp
        return tuple(args)


class _Template(NamedTuple):
    """What enqueuing one host's job takes."""

    commands: tuple[_Command, ...]
    pushes: tuple[tuple[bytes, bytes], ...]  # (command, list) the bare job id is pushed on


class _Slot(NamedTuple):
    """A place in a template that holds one of the host's values."""

    command: int  # index in the template's commands
    position: int  # index in that command's arguments
    field: str  # the field of rq's Job.to_dict() that fills it


class PreparedJobs(NamedTuple):
    """Evaluation jobs as commands not sent yet (see :meth:`Evaluations.prepare`)."""

    hosts: list[str]
    commands: list[tuple[Any, ...]]


def _raise_errors(replies: Sequence[Any]) -> None:
    """Raise the first error among the replies to a batch of jobs' commands
    (the error of a command the script ran is the script's)."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


class _Unexpected(Exception):
    """rq's recorded enqueue does not have the shape the template path relies on."""


class Evaluations:
    """Enqueue evaluation jobs on ``KeySpace.evaluate_queue()``."""

    def __init__(self, client: Any, keys: KeySpace, mark_ttl_s: int = 60) -> None:
        self.client = client
        self.keys = keys
        self.mark_ttl_s = mark_ttl_s
        self.queue = Queue(keys.evaluate_queue(), connection=client, serializer=RQ_SERIALIZER)
        #: Whether jobs go out from recorded templates (else through enqueue_many).
        self.lean = rq.__version__ in VERIFIED_RQ_VERSIONS
        if not self.lean:
            logger.info("rq %s is not among the versions the lean enqueue was checked "
                        "against (%s); using Queue.enqueue_many", rq.__version__,
                        ", ".join(sorted(VERIFIED_RQ_VERSIONS)))
        self._templates: dict[str, _Template] = {}
        # What the first recording found: the commands that do not concern
        # the job (rq's set of queues), and the recorded host (template
        # derivation's reference).
        self._preamble: tuple[tuple[bytes, ...], ...] = ()
        self._probe: tuple[str, _Template, Job] | None = None
        # Where hosts' templates differ, once two recordings told (None:
        # not yet, or they did not, and every host is recorded).
        self._slots: tuple[_Slot, ...] | None = None
        self._learnt = False
        # How each slot's value is read off a Job without Job.to_dict(), once
        # the two recordings showed it (None: through to_dict).
        self._readers: dict[str, _Reader] | None = None
        # Each slot's value as the host's id between a fixed beginning and
        # end, once the two recordings showed it (None: read off a Job).
        self._frames: dict[str, _Frame] | None = None
        # One rq Job reused for every derived host: only its call's arguments
        # and its description depend on the host (see _job_options), and
        # building a Job costs more than the rest of a derivation.
        self._scratch: Job | None = None
        self._encode: Callable[[Any], bytes] = client.get_encoder().encode

    def request(self, hosts: Iterable[str]) -> int:
        """Enqueue an evaluation of each host unless one already waits; the count enqueued."""
        wanted = sorted(set(hosts))
        if not wanted:
            return 0
        replies = rawpipe.execute(self.client, [
            ("SET", self.keys.evaluation_pending(host), "1", "NX", "EX", self.mark_ttl_s)
            for host in wanted])
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return self.enqueue([h for h, took in zip(wanted, replies, strict=True) if took])

    def enqueue(self, hosts: Iterable[str]) -> int:
        """Enqueue one job per host (their marks already taken); the count."""
        batch = sorted(set(hosts))
        if not batch:
            return 0
        try:
            prepared = self.prepare(batch)
            if prepared is None:
                self.queue.enqueue_many([self._data(host) for host in batch])
            else:
                _raise_errors(rawpipe.execute(self.client, prepared.commands))
        except redis.RedisError:
            self._free_marks(batch)
            raise
        logger.debug("enqueued evaluation of %s host(s)", len(batch))
        return len(batch)

    def prepare(self, hosts: Iterable[str]) -> PreparedJobs | None:
        """The commands that enqueue one job per host (marks taken), for the
        caller to send on a connection of its own choosing and to hand the
        replies to :meth:`finish`; None when the jobs must go through
        :meth:`enqueue` instead (an rq version the templates do not serve)."""
        batch = sorted(set(hosts))
        if not batch or not self.lean:
            return None
        commands = self._template_commands(batch)
        return None if commands is None else PreparedJobs(batch, commands)

    def finish(self, prepared: PreparedJobs, replies: Sequence[Any]) -> None:
        """Check the replies to ``prepared``'s commands; on an error free the
        hosts' marks and raise it."""
        try:
            _raise_errors(replies)
        except redis.RedisError:
            self._free_marks(prepared.hosts)
            raise
        logger.debug("enqueued evaluation of %s host(s)", len(prepared.hosts))

    def _free_marks(self, hosts: Sequence[str]) -> None:
        # So that the next change can try again instead of waiting out their
        # TTL; if Redis is gone this fails too and the marks simply expire.
        try:
            self.client.delete(*(self.keys.evaluation_pending(h) for h in hosts))
        except redis.RedisError:
            pass

    @staticmethod
    def _data(host: str) -> EnqueueData:
        return Queue.prepare_data(EVALUATE_JOB, **_job_options(host))

    def _template_commands(self, batch: Sequence[str]) -> list[tuple[Any, ...]] | None:
        """The commands enqueuing ``batch``'s jobs from templates; None (and
        the templates given up) when rq's enqueue turns out to be of another
        shape."""
        templates = [self._templates.get(host) for host in batch]
        missing = [host for host, template in zip(batch, templates, strict=True)
                   if template is None]
        if missing:
            try:
                made = {host: self._template(host) for host in missing}
            except _Unexpected as exc:
                logger.warning("rq %s enqueues in an unexpected way (%s); using "
                               "Queue.enqueue_many from now on", rq.__version__, exc)
                self.lean = False
                return None
            self._templates.update(made)
            while len(self._templates) > MAX_TEMPLATES:
                del self._templates[next(iter(self._templates))]
            templates = [template or made[host]
                         for host, template in zip(batch, templates, strict=True)]
        # One time for the whole batch: rq stamps each job a few µs apart,
        # which tells nobody anything.
        stamp = utcformat(now()).encode()
        commands: list[tuple[Any, ...]] = list(self._preamble)
        pushes: dict[tuple[bytes, bytes], list[bytes]] = {}
        for template, job_id in zip(templates, _job_ids(len(templates)), strict=True):
            assert template is not None
            commands += [command.build(job_id, stamp) for command in template.commands]
            for push in template.pushes:
                pushes.setdefault(push, []).append(job_id)
        commands += [(name, key, *ids) for (name, key), ids in pushes.items()]
        # One script runs them all: as atomic as rq's MULTI/EXEC, with one
        # reply instead of one per command (reading a reply costs more than
        # sending its command), and one packed argument instead of some
        # forty per job.
        return [("EVAL", _RUN_COMMANDS, 0, _pack_commands(commands))]

    def _template(self, host: str) -> _Template:
        """The template of a host not seen yet.

        The first two hosts are recorded; from what differs between them
        (the call and the description) the others are derived, with the
        values from ``to_dict`` of one rq Job (made by ``create_job`` once,
        then given each host's arguments and description), for a fraction of
        a recording's cost. If the two recordings do not say how, every host
        is recorded.
        """
        if self._slots is not None:
            return self._derive(host, self._slots)
        template, job = self._record(host)
        if not self._learnt:
            if self._probe is None:
                self._probe = (host, template, job)
            else:
                self._slots = self._learn(self._probe, (host, template, job))
                self._learnt = True
                if self._slots is None:
                    logger.debug("rq's enqueue of two hosts differs unexpectedly; "
                                 "recording each host's")
        return template

    def _record(self, host: str) -> tuple[_Template, Job]:
        """Let rq enqueue the host's job into a pipeline never executed; keep the commands.

        A recorded command that names the job id belongs to the job; the
        others (rq's set of queues) are sent once per batch. The job's
        creation and enqueue times are found by value and become the batch's
        time. Raises :class:`_Unexpected` when the recording has another
        shape than the one this was written for. (rq's debug log mentions
        the recorded jobs, which are never sent.)
        """
        encode = self._encode
        # The same kind of pipeline rq makes for itself in enqueue_many.
        pipe = self.client.pipeline()
        try:
            jobs = self.queue.enqueue_many([self._data(host)], pipeline=pipe)
            recorded = [tuple(encode(arg) for arg in command)
                        for command, _options in pipe.command_stack]
        finally:
            pipe.reset()
        if len(jobs) != 1:
            raise _Unexpected(f"{len(jobs)} jobs for one")
        job = jobs[0]
        job_id = job.id.encode()
        stamps = {encode(utcformat(moment)) for moment in (job.created_at, job.enqueued_at)
                  if moment is not None}
        preamble: list[tuple[bytes, ...]] = []
        job_commands: list[_Command] = []
        found: set[bytes] = set()
        for args in recorded:
            compiled = _compile(args, job_id, stamps)
            found.update(args[position] for position in compiled.stamps)
            if compiled.ids:
                job_commands.append(compiled)
            elif compiled.stamps:
                raise _Unexpected("a command outside the job holds its time")
            else:
                preamble.append(args)
        if not job_commands:
            raise _Unexpected("no command names the job")
        if not stamps or found != stamps:
            raise _Unexpected("the job's times are not where they were expected")
        if self._probe is None:
            self._preamble = tuple(preamble)
        elif self._preamble != tuple(preamble):
            raise _Unexpected("the commands outside the job differ between hosts")
        return _simplify(job_commands, job_id), job

    def _learn(self, first: tuple[str, _Template, Job],
               second: tuple[str, _Template, Job]) -> tuple[_Slot, ...] | None:
        """Where two hosts' templates differ, and which field of rq's ``Job.to_dict`` fills
        each place; None unless the templates have one shape, each place one field, and
        deriving both hosts' templates gives them back."""
        encode = self._encode
        (_, one, one_job), (_, other, other_job) = first, second
        if one.pushes != other.pushes or len(one.commands) != len(other.commands):
            return None
        one_values = {name: encode(value) for name, value in one_job.to_dict().items()}
        other_values = {name: encode(value) for name, value in other_job.to_dict().items()}
        slots: list[_Slot] = []
        for index, (a, b) in enumerate(zip(one.commands, other.commands, strict=True)):
            if (len(a.args), a.ids, a.stamps) != (len(b.args), b.ids, b.stamps):
                return None
            fixed = {position for position, _, _ in a.ids} | set(a.stamps)
            for position, (x, y) in enumerate(zip(a.args, b.args, strict=True)):
                if position in fixed or x == y:
                    continue
                fields = [name for name, value in one_values.items()
                          if value == x and other_values.get(name) == y]
                if len(fields) != 1:
                    return None
                slots.append(_Slot(index, position, fields[0]))
        if not slots:
            return None
        found = tuple(slots)
        # Elsewhere the templates are alike but for the ids and times.
        for host, template, _ in (first, second):
            derived = self._derive(host, found).commands
            if any(derived[index].args[position] != template.commands[index].args[position]
                   for index, position, _ in found):
                return None
        self._readers = _readers({slot.field for slot in found},
                                 ((one_job, one_values), (other_job, other_values)), encode)
        if self._readers is not None:
            self._frames = _frames(self._readers, ((first[0], one_values),
                                                   (second[0], other_values)))
        return found

    def _derive(self, host: str, slots: tuple[_Slot, ...]) -> _Template:
        """The host's template: the first recorded one with this host's values in ``slots``."""
        assert self._probe is not None
        reference = self._probe[1]
        frames = self._frames
        if frames is not None and _PLAIN_HOST.fullmatch(host):
            # The id in place of the recorded host's: no Job, no serializer.
            plain = host.encode()
            values = {field: frame.value(plain) for field, frame in frames.items()}
        else:
            values = self._job_values(host)
        changed: dict[int, list[bytes]] = {}
        for index, position, field in slots:
            if field not in values:
                raise _Unexpected(f"rq's job has no {field!r} for host {host!r}")
            args = changed.setdefault(index, list(reference.commands[index].args))
            args[position] = values[field]
        # The reference's commands, those with a slot replaced (tuple.__new__:
        # a NamedTuple's own __new__ is a Python function).
        commands = list(reference.commands)
        for index, args in changed.items():
            command = commands[index]
            commands[index] = _new_tuple(_Command, (tuple(args), command.ids, command.stamps))
        return _new_tuple(_Template, (tuple(commands), reference.pushes))

    def _job_values(self, host: str) -> dict[str, bytes]:
        """The values rq's Job of ``host`` stores, read off one scratch Job."""
        options = _job_options(host)
        if self._scratch is None:
            self._scratch = self.queue.create_job(EVALUATE_JOB, status=JobStatus.QUEUED,
                                                  **options)
        else:
            self._scratch.args = options["args"]
            self._scratch.description = options["description"]
        encode = self._encode
        if self._readers is not None:
            return {field: read(self._scratch, field, encode)
                    for field, read in self._readers.items()}
        return {field: encode(value) for field, value in self._scratch.to_dict().items()}


# Runs the commands packed in its argument, in order (Redis's cmsgpack reads
# bytes packed as msgpack raw strings, which msgpack-python's packer makes
# with use_bin_type=False). A command that fails stops the script with its
# error; those before it stay done, as in a MULTI/EXEC.
_RUN_COMMANDS = """
local commands = cmsgpack.unpack(ARGV[1])
for _, command in ipairs(commands) do
    redis.call(unpack(command))
end
return #commands
"""
_pack_commands = msgpack.Packer(use_bin_type=False).pack


def _job_ids(count: int) -> list[bytes]:
    """``count`` new job ids, as rq's Job makes them: str(uuid.uuid4()).

    Formatted here from one read of random bytes: uuid.uuid4() reads the
    system's randomness and builds a UUID object for each, several times
    what the rest of a job's commands cost."""
    ids = []
    random = bytearray(os.urandom(16 * count))
    for start in range(0, 16 * count, 16):
        # The version (4) and the variant (RFC 4122) bits, as uuid4() sets them.
        random[start + 6] = (random[start + 6] & 0x0F) | 0x40
        random[start + 8] = (random[start + 8] & 0x3F) | 0x80
        text = random[start:start + 16].hex()
        ids.append(f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}".encode())
    return ids


# A slot's value read off a Job (with the client's encoder) as to_dict would give it.
_Reader = Callable[[Job, str, Callable[[Any], bytes]], bytes]


def _as_is(job: Job, field: str, encode: Callable[[Any], bytes]) -> bytes:
    """The job's attribute ``field`` as it is (the description)."""
    return encode(getattr(job, field))


_new_tuple = tuple.__new__

# Host ids whose text neither JSON nor repr escapes: in rq's stored call and
# in the description they stand as they are (the wire contract's ids all do).
_PLAIN_HOST = re.compile(r"[A-Za-z0-9._-]+")


class _Frame(NamedTuple):
    """A slot's value for any plain host id, as the two recordings showed it:
    the id between ``before`` and ``after`` (of the value itself, or of the
    call it is the zlib stream of)."""

    before: bytes
    after: bytes
    compressed: bool

    def value(self, host: bytes) -> bytes:
        plain = self.before + host + self.after
        return _deflate(plain) if self.compressed else plain


def _frames(readers: dict[str, _Reader],
            probes: tuple[tuple[str, dict[str, bytes]], tuple[str, dict[str, bytes]]],
            ) -> dict[str, _Frame] | None:
    """Each slot's value as a frame around the host id, if both recorded hosts
    (plain ids) show it in exactly one place of the value (or of the call it
    compresses) with all else alike; None otherwise (values are then read off
    a Job)."""
    (one, one_values), (other, other_values) = probes
    if not (_PLAIN_HOST.fullmatch(one) and _PLAIN_HOST.fullmatch(other)):
        return None
    one_id, other_id = one.encode(), other.encode()
    frames = {}
    for field, reader in readers.items():
        compressed = reader is _compressed
        one_plain, other_plain = one_values.get(field), other_values.get(field)
        if compressed:
            one_plain = _decompressed(one_plain or b"")
            other_plain = _decompressed(other_plain or b"")
        if one_plain is None or other_plain is None:
            return None
        fits = []
        at = one_plain.find(one_id)
        while at >= 0:
            before, after = one_plain[:at], one_plain[at + len(one_id):]
            if before + other_id + after == other_plain:
                fits.append((before, after))
            at = one_plain.find(one_id, at + 1)
        if len(fits) != 1:
            return None
        frames[field] = _Frame(*fits[0], compressed)
    return frames


def _compressed(job: Job, field: str, encode: Callable[[Any], bytes]) -> bytes:
    """The job's attribute ``field`` (bytes) as a zlib stream (the call, which
    rq stores compressed and reads with zlib.decompress).

    Not zlib.compress: it sets up a 256 KiB state, which for a call of some
    sixty bytes costs ten times what the rest of a derivation does. A
    512-byte window, the least memory and no compression (a call of a host
    id shrinks by a few bytes at most) give a stream that decompresses to the
    same bytes in an eighth of the time; the stream differs from rq's, the
    call does not.
    """
    return _deflate(getattr(job, field))


def _deflate(data: bytes) -> bytes:
    """``data`` as a zlib stream, made cheaply (see _compressed)."""
    compressor = zlib.compressobj(0, zlib.DEFLATED, 9, 1)
    return compressor.compress(data) + compressor.flush()


def _decompressed(data: bytes) -> bytes | None:
    try:
        return zlib.decompress(data)
    except zlib.error:
        return None


def _readers(fields: Iterable[str], probes: Iterable[tuple[Job, dict[str, bytes]]],
             encode: Callable[[Any], bytes]) -> dict[str, _Reader] | None:
    """How to read each of ``fields`` off a Job without to_dict, as both
    ``probes`` (a job and its to_dict, encoded) show; None if one is not
    shown (derivations then go through to_dict)."""
    readers: dict[str, _Reader] = {}
    probes = list(probes)
    for field in fields:
        attributes = [getattr(job, field, None) for job, _ in probes]
        if all(attribute is not None and encode(attribute) == values.get(field)
               for attribute, (_, values) in zip(attributes, probes, strict=True)):
            readers[field] = _as_is
        elif all(type(attribute) is bytes and _decompressed(values.get(field, b"")) == attribute
                 for attribute, (_, values) in zip(attributes, probes, strict=True)):
            readers[field] = _compressed
        else:
            return None
    return readers


def _job_options(host: str) -> dict[str, Any]:
    """What the collector asks of rq for a host's evaluation job, besides the function."""
    return {"args": (host,), "description": f"evaluate {host}", "result_ttl": 0,
            "ttl": JOB_TTL_S, "failure_ttl": FAILURE_TTL_S}


def _compile(args: tuple[bytes, ...], job_id: bytes, stamps: set[bytes]) -> _Command:
    """``args`` with the places of ``job_id`` and of the ``stamps`` marked."""
    ids: list[tuple[int, bytes, bytes]] = []
    for position, arg in enumerate(args):
        if job_id in arg:
            if arg.count(job_id) > 1:
                raise _Unexpected("an argument names the job id twice")
            before, after = arg.split(job_id)
            ids.append((position, before, after))
    at = tuple(position for position, arg in enumerate(args) if arg in stamps)
    return _Command(args, tuple(ids), at)


def _simplify(commands: list[_Command], job_id: bytes) -> _Template:
    """The job's commands less those that change nothing, its pushes apart.

    The job id is new (a random UUID), so no key named after it exists
    before the commands run. Left out, because the end state is the same:

    * an HSET whose field/value pairs all come again in the next command on
      its key, an HSET (rq sets the status, then saves the hash with it);
    * an EXPIRE of a key named after the job that no other command names: it
      does not exist (rq expires the dependents and dependencies keys, which
      only a job with dependencies has).

    A push of the bare job id onto a list is taken out, to be joined with the
    other jobs' into one RPUSH/LPUSH per list (same order, same result).
    """
    kept: list[_Command] = []
    pushes: list[tuple[bytes, bytes]] = []
    for index, command in enumerate(commands):
        name, args = command.args[0].upper(), command.args
        later = commands[index + 1:]
        if name == b"HSET" and len(args) % 2 == 0:
            following = next((c.args for c in later if args[1] in c.args), None)
            if (following is not None and following[0].upper() == b"HSET"
                    and following[1] == args[1] and len(following) % 2 == 0
                    and _pairs(args) <= _pairs(following)):
                continue
        if (name in (b"EXPIRE", b"PEXPIRE") and len(args) >= 2 and job_id in args[1]
                and not any(args[1] in other.args for other in commands
                            if other.args[0].upper() not in (b"EXPIRE", b"PEXPIRE"))):
            continue
        if (name in (b"RPUSH", b"LPUSH") and len(args) == 3 and args[2] == job_id
                and job_id not in args[1]):
            pushes.append((name, args[1]))
            continue
        kept.append(command)
    return _Template(tuple(kept), tuple(pushes))


def _pairs(hset: tuple[bytes, ...]) -> set[tuple[bytes, bytes]]:
    return set(zip(hset[2::2], hset[3::2], strict=True))
