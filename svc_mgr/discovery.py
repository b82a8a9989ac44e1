"""Keeps a RoutingTable in step with Consul through two blocking queries, whatever the number of services.

Consul refuses more than `http_max_conns_per_client` (200) connections from one address, so a blocking
query per service cannot scale; and Consul 1.8 has no endpoint that lists every instance of every
service with its address and health in one answer. So:

1. The watch is one blocking query on `/v1/health/state/any`, filtered to the checks of tagged services
   and to node checks. Its index moves on every registration, deregistration and check change, and its
   answer says which instances exist, under which service, and whether all their checks (and their
   node's) pass — `?passing`'s rule.
2. Checks carry no address or port. Those are kept in a book per instance, read without blocking only
   for instances that are new or were registered again (not when a check merely changes state): per
   node (`/v1/catalog/node-services/NODE`) when many of a node's instances are, per service
   (`/v1/health/service/NAME`) when few; READS_AT_ONCE at most.
3. The table is updated only for services whose routable instances changed, with one rebuild.
4. That answer holds every tagged check (3 MB at 10,000 instances), too slow to decode on every state
   change. A third blocking query on the same endpoint, filtered to checks that do not pass, moves on
   the same index with a small answer: it flips instances between routable and not at once, and the
   whole answer, when it follows, agrees (whichever of the two is newer decides).

A registration that brings a service a tag none of its instances had (a worker with a new model) shows in
the services watch's small answer before Consul has written the whole checks answer (100+ ms at 10,000
instances): the instances with the new tags are read at once (`/v1/health/service/NAME`, filtered to
them) and routed; whole answers older than that read keep them, a newer one decides.

Instances registered without any check never appear among checks, yet Consul counts them as passing. A
second blocking query, on `/v1/catalog/services` (its index moves on every registration and
deregistration), finds tagged services that have no checked instance; those are read whole with
`/v1/health/service/NAME?passing` on each of its changes, as a query per service would.

An empty answer after a full one, when Consul came back from an outage (a dev agent restarted empty) or
the ACL token filtered it, keeps the last table for `wrapper.empty_catalog_grace` seconds, in case the
workers are about to register again (or the token gets its rights back).
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import hashlib
import logging
import math
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import aiohttp
import msgspec
import orjson

from common.settings import ConsulSettings, WrapperSettings

from .consul_client import Answer, AsyncConsul, ConsulException, connect
from .entry import MARKER_TAG, EntryReader, Instance
from .routing import RoutingTable

log = logging.getLogger(__name__)

# an answer of an unexpected shape (KeyError, TypeError) is retried like an outage rather than ending the watch
_FAILURES = (aiohttp.ClientError, OSError, asyncio.TimeoutError, ConsulException, ValueError, KeyError, TypeError)

# the checks of our instances, and node checks (a failing node fails its instances, as with ?passing)
CHECKS_FILTER = f'"{MARKER_TAG}" in ServiceTags or ServiceID == ""'
# only the failing ones: Consul 1.8's filters have no `>`, so "changed since index N" cannot be asked
FAILING_FILTER = f'({CHECKS_FILTER}) and Status != "passing"'
READS_AT_ONCE = 3  # reads in flight at once: with the three watches, at most 6 connections to Consul
IDS_PER_READ = 16  # instances of one service read by their ids; more: the whole service
SAFE_ID = re.compile(r"[A-Za-z0-9_.:@/+-]{1,256}")  # ids quoted into a filter expression as they are
SAFE_TAG = re.compile(r'[^"\\\s]{1,300}')  # tags quoted into a filter expression: no quote, backslash or space
NODE_READ_ABOVE = 8  # more instances than this to read on one node: read the node, not each service
# An answer this big (the whole checks answer of some 3,000 instances) is followed by a whole
# wrapper.consul_min_interval before the watch asks again; a smaller one by its share of it (the services
# list of 1,000 services, 80 kB: 8 ms)
PACED_ANSWER_BYTES = 1024 * 1024

Key = tuple[str, str]  # (node, service id): an instance
_Read = TypeVar("_Read")  # what a read's answer is decoded into
# when an instance's checks were created, and its tags: changes when it is registered again (perhaps at
# another address, with other models), not when a check changes state
Registration = tuple[int, tuple[str, ...]]
Seen = tuple[str, Registration, bool]  # (service, registration, passing)
Book = dict[Key, tuple[Registration, Instance | None]]  # the registration an instance was read at, and what


class Check(msgspec.Struct):
    """What discovery reads of a check in a `/v1/health/state/any` answer. Decoding only these fields
    (msgspec skips Output, Definition and the rest unbuilt) takes a tenth of the memory of decoding whole
    dicts: at 10,000 instances the answer is 3 MB and whole dicts peaked near 100 MB (docs/performance.md)."""

    Node: str
    Status: str
    ServiceID: str = ""
    ServiceName: str = ""
    ServiceTags: tuple[str, ...] | None = None
    CreateIndex: int = 0


_ITEMS = msgspec.json.Decoder(list[msgspec.Raw] | None)
_CHECK = msgspec.json.Decoder(Check)


def items_in(raw: bytes) -> list[msgspec.Raw]:
    """The elements of a JSON array, undecoded: each a view of `raw`, one small object."""
    return _ITEMS.decode(raw) or []


def checks_of(items: Iterable[msgspec.Raw]) -> Iterator[Check]:
    """Each check decoded only when reached, and let go before the next one is. Decoded whole, the 10,000
    checks of a big answer are some 100,000 objects alive at once: they fill fresh pymalloc arenas (1 MiB
    each), and the few objects made meanwhile that outlive the answer (a new instance's, the watch's own)
    keep those arenas mapped when the rest is freed (docs/performance.md, "#13 memory: allocation order")."""
    for item in items:
        yield _CHECK.decode(item)


def checks_in(raw: bytes) -> Iterator[Check]:
    """A `/v1/health/state/any` answer, decoded into Checks one at a time."""
    return checks_of(items_in(raw))


def seen_in(checks: Iterable[Check], last: Mapping[Key, Seen] | None = None) -> dict[Key, Seen]:
    """Our instances in a `/v1/health/state/any` answer, each passing only if all its checks and its node's do.

    One pass building plain tuples: it runs over every tagged check on every change (docs/performance.md).
    Node names, service names and tag lists are shared, not kept once per instance. An instance as it was
    in `last` (the answer before) keeps `last`'s key and value objects, so that all of this answer's are let
    go as soon as they are read (see checks_of): kept, they would pin the heap pages of the answer."""
    last = last or {}
    keys: dict[Key, Key] = {key: key for key in last}
    shared_tags: dict[tuple[str, ...], tuple[str, ...]] = {}
    for _, (_, tags), _ in last.values():
        shared_tags.setdefault(tags, tags)
    found: dict[Key, Seen] = {}
    failing_nodes: set[str] = set()
    for c in checks:
        service_id = c.ServiceID
        if not service_id:
            if c.Status != "passing":
                failing_nodes.add(c.Node)
            continue
        if not c.ServiceTags or MARKER_TAG not in c.ServiceTags:
            continue
        tags = shared_tags.setdefault(c.ServiceTags, c.ServiceTags)
        key = keys.get((c.Node, service_id)) or (sys.intern(c.Node), service_id)
        seen = (c.ServiceName, (c.CreateIndex, tags), c.Status == "passing")
        other = found.get(key)
        if other is not None:  # several checks: the latest created, and passing only if all pass
            seen = (seen[0], max(seen[1], other[1]), seen[2] and other[2])
        found[key] = _kept(seen, last.get(key))
    if failing_nodes:
        for key, seen in found.items():
            if key[0] in failing_nodes:
                found[key] = _kept((seen[0], seen[1], False), last.get(key))
    return found


def _kept(seen: Seen, last: Seen | None) -> Seen:
    """`last` if equal to `seen`; else `seen`, its service name shared with other instances'."""
    return last if seen == last else (sys.intern(seen[0]), seen[1], seen[2])


def failing_in(checks: Iterable[dict[str, Any]]) -> tuple[frozenset[Key], frozenset[str]]:
    """(instances with a check that does not pass, nodes whose own check does not) in a FAILING_FILTER answer."""
    keys: set[Key] = set()
    nodes: set[str] = set()
    for c in checks:
        if c["ServiceID"]:
            keys.add((c["Node"], c["ServiceID"]))
        else:
            nodes.add(c["Node"])
    return frozenset(keys), frozenset(nodes)


def service_filter(ids: set[str]) -> str:
    """The filter of a read of one service's entries: only the instances needed when they are few, so that a
    new instance of a service with thousands costs a small answer; otherwise all of them."""
    if len(ids) > IDS_PER_READ or not all(SAFE_ID.fullmatch(i) for i in ids):
        return f'"{MARKER_TAG}" in Service.Tags'
    return f'"{MARKER_TAG}" in Service.Tags and (' + " or ".join(f'Service.ID == "{i}"' for i in sorted(ids)) + ")"


def new_tags(before: dict[str, frozenset[str]], now: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    """Per service in both services answers, the tags it gained (at most IDS_PER_READ, each safe to quote)."""
    gained = {service: tags - before[service] for service, tags in now.items() if service in before}
    return {service: new for service, new in gained.items()
            if new and len(new) <= IDS_PER_READ and all(SAFE_TAG.fullmatch(t) for t in new)}


def new_tags_filter(tags: frozenset[str]) -> str:
    """The filter of a read of a service's instances carrying any of these tags."""
    return f'"{MARKER_TAG}" in Service.Tags and (' + " or ".join(f'"{t}" in Service.Tags' for t in sorted(tags)) + ")"


def plan_reads(needed: Iterable[Key], seen: dict[Key, Seen]) -> tuple[set[str], set[str]]:
    """(nodes, services) to read so that every needed instance's address is known, in few small reads."""
    by_node: dict[str, list[Key]] = {}
    for key in needed:
        by_node.setdefault(key[0], []).append(key)
    nodes = {node for node, keys in by_node.items() if len(keys) > NODE_READ_ABOVE}
    services = {seen[key][0] for node, keys in by_node.items() if node not in nodes for key in keys}
    return nodes, services


class _NodeService(msgspec.Struct):
    """The fields of a node's service that parse_instance reads (Any: it judges their types itself); the rest
    (TaggedAddresses, Weights, Proxy, Connect, ...) is skipped while decoding: a node may hold thousands."""

    ID: Any = None
    Service: Any = None
    Tags: Any = None
    Address: Any = None
    Port: Any = None
    Meta: Any = None


class _NodeServices(msgspec.Struct):
    Node: dict[str, Any] | None = None
    Services: list[msgspec.Raw] | None = None  # each decoded when reached (see checks_of)


_NODE_SERVICES = msgspec.json.Decoder(_NodeServices | None)
_NODE_SERVICE = msgspec.json.Decoder(_NodeService)


def node_entries_in(raw: bytes) -> Iterator[dict[str, Any]]:
    """A raw `/v1/catalog/node-services/NODE` answer as `/v1/health/service` entries (what EntryReader reads),
    one entry decoded and built at a time."""
    answer = _NODE_SERVICES.decode(raw)
    if answer is not None:
        node = answer.Node or {}
        for service in answer.Services or ():
            yield {"Node": node, "Service": msgspec.structs.asdict(_NODE_SERVICE.decode(service))}


def json_list(raw: bytes) -> list[Any]:
    return orjson.loads(raw) or []


class _Outage:
    """Logs an outage once when it starts and once when it ends, not once per retry or per watch."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._failing: set[str] = set()  # the watches whose last query failed

    @property
    def down(self) -> bool:
        return bool(self._failing)

    def failed(self, watch: str, exc: BaseException) -> None:
        if not self._failing:
            log.warning("Consul at %s unreachable (%s: %s); serving from the last routing table, retrying",
                        self.address, exc.__class__.__name__, exc)
        self._failing.add(watch)

    def ok(self, watch: str) -> None:
        if watch in self._failing:
            self._failing.discard(watch)
            if not self._failing:
                log.info("Consul at %s reachable again", self.address)


class EmptyCatalogGrace:
    """Holds back, for `grace` seconds, an empty catalog that replaces a full one in a suspicious way:
    the first answer after Consul was unreachable or its index went backwards (a restarted agent, a new
    cluster), or an answer the ACL token filtered (Consul >= 1.11 says so in a header; before, an answer
    without even a node check shows it). Workers leaving one by one are applied at once."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.since: float | None = None

    def hold(self, empty: bool, table_has_routes: bool, why: str | None, now: float) -> bool:
        """True if this answer must not be applied (the last table stays). `why`: what makes it suspicious."""
        if not empty:
            if self.since is not None:
                log.info("instances are back in Consul's catalog; routing from it again")
            self.since = None
            return False
        if self.since is None:
            if not (table_has_routes and why and self.grace > 0):
                return False
            self.since = now
            log.warning("Consul's catalog has no instance tagged %s %s; keeping the last routing table for %g s "
                        "(wrapper.empty_catalog_grace) in case the workers register again", MARKER_TAG, why, self.grace)
        if now - self.since < self.grace:
            return True
        log.warning("Consul's catalog stayed empty for %g s; dropping every route", self.grace)
        self.since = None
        return False

    def remaining(self, now: float) -> float | None:
        return None if self.since is None else max(0.0, self.grace - (now - self.since))


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Decoding a whole catalog allocates some 100,000 containers that live a few milliseconds and form no
    cycle; with the collector on they get promoted and trigger full collections of the whole heap
    (measured at 10,000 instances: spikes of 100+ ms per answer)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def pause_after(size: int, min_interval: float) -> float:
    """Seconds a watch waits, after an answer of `size` bytes, before asking again.

    Blocking queries return only when Consul's index moves, so asking again at once never spins on an idle
    catalog; the pause only bounds what a storm of changes (thousands of workers starting) costs, and that
    cost is decoding the answer, proportional to its size. So the whole checks answer of a large catalog is
    read at most once per min_interval, while small answers (failing checks, the services list, a small
    catalog) come back at once: a registration is not held up by the change before it."""
    return min_interval * min(1.0, size / PACED_ANSWER_BYTES)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None elsewhere (musl, macOS)."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
        return trim
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    """Give the heap's free pages back to the system after a big answer was decoded and let go. glibc keeps
    them otherwise (a multi-MB answer is allocated from the heap once its mmap threshold grew), and the
    wrapper's RSS at 10,000 instances would stay at its peak. A few ms, at most once per min_interval."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _next_index(old: int, new: int) -> int:
    # Consul's rule for blocking queries: an index that went backwards (agent restarted) resets to 0.
    return new if new >= old else 0


class Discovery:
    def __init__(self, settings: ConsulSettings, table: RoutingTable, wrapper: WrapperSettings) -> None:
        self.settings = settings
        self.table = table
        self.wait = wrapper.consul_wait
        self.min_interval = wrapper.consul_min_interval
        self.outage = _Outage(settings.address)
        self.grace = EmptyCatalogGrace(wrapper.empty_catalog_grace)
        self.read_entry = EntryReader()  # malformed registrations: skipped, one warning per service id
        self._consul: AsyncConsul | None = None
        self._tasks: list[asyncio.Task] = []
        self._reads = asyncio.Semaphore(READS_AT_ONCE)
        self._last_digest = b""  # of the last whole checks answer applied: the answer itself is let go
        self._seen: dict[Key, Seen] = {}
        self._book: Book = {}
        self._keys_of: dict[str, set[Key]] = {}  # service -> its instances in _seen
        self._applied: dict[str, frozenset[Instance]] = {}  # service -> what the table routes to
        self._unchecked: dict[str, frozenset[tuple[Any, ...]]] = {}  # service -> what was routed
        self._seen_index = 0  # the index of the whole checks answer _seen was built from
        self._failing: tuple[frozenset[Key], frozenset[str]] = (frozenset(), frozenset())
        self._failing_index = 0
        self._tags: dict[str, frozenset[str]] = {}  # tagged service -> its tags, as the services watch last saw
        self._early: dict[Key, int] = {}  # instances read by their new tags -> the index they were read at
        self._checks_read = asyncio.Event()
        self._services_idle = asyncio.Event()  # clear while a services answer is applied (see _apply)
        self._services_idle.set()
        self._services_read = asyncio.Event()
        self.ready = asyncio.Event()
        self.heard_at: float | None = None  # monotonic time of Consul's last answer (metrics and /status show its age)

    async def start(self) -> None:
        self._consul = connect(self.settings)
        self._tasks = [
            asyncio.create_task(self._watch("/v1/health/state/any", {"filter": CHECKS_FILTER}, self._apply,
                                            self._checks_read), name="consul-watch-checks"),
            asyncio.create_task(self._watch("/v1/catalog/services", {}, self._apply_services,
                                            self._services_read), name="consul-watch-services"),
            asyncio.create_task(self._watch("/v1/health/state/any", {"filter": FAILING_FILTER}, self._apply_failing,
                                            asyncio.Event()), name="consul-watch-failing")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._consul is not None:
            await self._consul.close()

    async def _watch(self, path: str, params: dict[str, str],
                     apply: Callable[[Answer, bool], Awaitable[None]], read: asyncio.Event) -> None:
        """A blocking query, forever; failures back off and are reported once."""
        assert self._consul is not None
        name = f"{path}?filter={params['filter']}" if "filter" in params else path  # the outage is per watch
        index, backoff, last, lost, failing, pause = 0, 0.2, -math.inf, False, False, 0.0
        while True:
            # a burst of changes is read as one big answer per min_interval (see pause_after)
            await asyncio.sleep(max(0.0, last + pause - time.monotonic()) if index else 0)
            try:
                asked = time.monotonic()
                answer = await self._consul.read(path, index or None, self._wait(), params)
                last = self.heard_at = time.monotonic()
                size = len(answer.raw)
                # an index that did not move: Consul answered without blocking (a reset index, an ACL'd
                # answer, the wait ran out); pacing it keeps an anomaly from becoming a busy loop
                pause = pause_after(size, self.min_interval) if answer.index > index else self.min_interval
                try:
                    await apply(answer, lost or answer.index < index)
                    failing = False
                except Exception:  # a bug here must not end the watch for good: log it once, keep watching
                    if not failing:
                        log.exception("could not apply Consul's answer to %s; keeping the last routing table "
                                      "and watching on", path)
                    failing = True
                log.debug("%s at index %d: %d bytes after %.0f ms, applied in %.0f ms", path, answer.index,
                          len(answer.raw), 1000 * (last - asked), 1000 * (time.monotonic() - last))
            except _FAILURES as exc:
                self.outage.failed(name, exc)
                index, lost = 0, True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5)
                continue
            index, backoff, lost = _next_index(index, answer.index), 0.2, False
            del answer  # not kept while the next query waits: the whole checks answer is megabytes
            if size >= PACED_ANSWER_BYTES:
                release_memory()
            self.outage.ok(name)
            read.set()
            if self._checks_read.is_set() and self._services_read.is_set():
                self.ready.set()

    def _wait(self) -> str:
        # while an empty catalog is held back, wake up when the grace period ends even if nothing changes
        remaining = self.grace.remaining(time.monotonic())
        return self.wait if remaining is None else f"{max(1, math.ceil(remaining))}s"

    async def _apply(self, answer: Answer, reconnected: bool) -> None:
        digest = hashlib.blake2b(answer.raw, digest_size=16).digest()
        if digest == self._last_digest and self.grace.since is None:
            return  # the wait ran out, or only checks outside the filter changed
        # a registration moves both watches: route the new service by its own small read first, rather than
        # after decoding this whole answer (tens of ms at 10,000 instances, the loop blocked meanwhile)
        await self._services_idle.wait()
        with _no_cyclic_gc():
            items = items_in(answer.raw)
            seen = seen_in(checks_of(items), self._seen)
            blank = not items
            del items  # the answer's objects are all gone here: the next ones reuse their memory
            self._keep_early(seen, answer.index)
            diff = self._diff(seen, blank, answer.filtered_by_acls, reconnected)
            if diff is not None and not diff[1]:  # nothing to read: the table first, the cleaning after
                self._commit(seen, diff[0], digest, answer.index)
        if diff is not None and diff[1]:
            await self._read_addresses(diff[1], seen)
            self._commit(seen, diff[0], digest, answer.index)

    def _keep_early(self, seen: dict[Key, Seen], index: int) -> None:
        """Instances read early by their new tags stay against a whole answer older than that read."""
        for key, read_at in list(self._early.items()):
            if index >= read_at:
                del self._early[key]  # this answer is as new as the read: its word stands
            elif key not in seen and (early := self._seen.get(key)) is not None:
                seen[key] = early

    def _diff(self, seen: dict[Key, Seen], blank: bool, filtered_by_acls: bool, reconnected: bool
              ) -> tuple[set[tuple[Key, Seen]], set[Key]] | None:
        """(what changed since the last answer, the instances to read), or None if this answer is held back.
        `blank`: not even a node check, though every agent's node has one — unless the token hides it."""
        why = ("and says the ACL token hides some (X-Consul-Results-Filtered-By-ACLs)" if filtered_by_acls
               else "and not even a node check (does the ACL token still have node and service read?)" if blank
               else "since Consul came back (restarted empty?)" if reconnected else None)
        if self.grace.hold(not seen, bool(self._applied), why, time.monotonic()):
            return None
        changed = seen.items() ^ self._seen.items()  # (key, Seen) pairs that appeared or went away
        for key, _ in changed:
            if key not in seen:
                self._book.pop(key, None)  # the book keeps only instances Consul lists
        needed = {key for key, _ in changed if key in seen and self._book.get(key, (None,))[0] != seen[key][1]}
        if len(self._book) < len(seen):  # some instance a former read did not find
            needed |= seen.keys() - self._book.keys()
        return changed, needed

    def _commit(self, seen: dict[Key, Seen], changed: set[tuple[Key, Seen]], digest: bytes, index: int) -> None:
        for key, (service, _, _) in changed:
            keys = self._keys_of.setdefault(service, set())
            if key in seen and seen[key][0] == service:
                keys.add(key)
            else:
                keys.discard(key)
        self._seen, self._last_digest, self._seen_index = seen, digest, index
        services = {service for _, (service, _, _) in changed}
        if self._failing_index > index:  # a newer failing-checks answer came first: its word on states stands
            services |= self._flip({key for key, s in seen.items() if not s[2]} | self._on_failing(seen))
        self._update_table(services)

    async def _apply_failing(self, answer: Answer, reconnected: bool) -> None:
        """A small answer on every state change: flip the instances whose state it changes, at once."""
        if answer.index < self._seen_index or self.grace.since is not None:
            return  # the whole answer applied is newer, or an empty catalog is being held back
        old_keys, old_nodes = self._failing
        self._failing, self._failing_index = failing_in(answer.json() or ()), answer.index
        keys, nodes = self._failing
        candidates = old_keys | keys
        if old_nodes or nodes:
            candidates |= {key for key in self._seen if key[0] in old_nodes or key[0] in nodes}
        services = self._flip(candidates)
        if services:
            self._update_table(services)

    def _on_failing(self, seen: dict[Key, Seen]) -> set[Key]:
        keys, nodes = self._failing
        return set(keys) | ({key for key in seen if key[0] in nodes} if nodes else set())

    def _flip(self, candidates: Iterable[Key]) -> set[str]:
        """Set the state of these instances in _seen from the failing-checks answer; return their services."""
        keys, nodes = self._failing
        services: set[str] = set()
        for key in candidates:
            seen = self._seen.get(key)
            if seen is None:
                continue  # not known yet: the whole answer brings it, with its address
            passing = key not in keys and key[0] not in nodes
            if seen[2] != passing:
                self._seen[key] = (seen[0], seen[1], passing)
                services.add(seen[0])
        return services

    def _update_table(self, services: set[str]) -> None:
        changed: dict[str, frozenset[Instance]] = {}
        dropped: list[str] = []
        for service in services:
            routable = frozenset(inst for key in self._keys_of.get(service, ())
                                 if self._seen[key][2] and (inst := self._book.get(key, (None, None))[1]) is not None)
            # a service first routed whole by the services watch is the checks watch's from its first check on
            taken_over = bool(self._keys_of.get(service)) and self._unchecked.pop(service, None) is not None
            if not routable:
                if not self._keys_of.get(service):
                    self._keys_of.pop(service, None)
                if self._applied.pop(service, None) is not None or taken_over:
                    dropped.append(service)
            elif self._applied.get(service) != routable:
                changed[service] = self._applied[service] = routable
        if changed or dropped:
            self.table.update(changed, dropped)
            self._adopt(changed)

    def _adopt(self, changed: Iterable[str]) -> None:
        """Hold in the book the Instance objects the table routes to. The table keeps its own object when an
        update brings an equal one, so a service first routed by the services watch (a new service, before the
        checks answer lists it) was otherwise held twice: 8,000 of 10,000 instances over 1,000 services."""
        for service in changed:
            routed = self.table.routed(service)
            for key in self._keys_of.get(service, ()):
                booked = self._book.get(key)
                if booked is not None and booked[1] is not None and (kept := routed.get(booked[1].id)) is not None:
                    self._book[key] = (booked[0], kept)
            self._applied[service] = frozenset(routed.values())

    async def _apply_services(self, answer: Answer, reconnected: bool) -> None:
        """Route tagged services none of whose instances has a check: read whole, on every services change."""
        await self._checks_read.wait()  # which services have checked instances is known only then
        self._services_idle.clear()
        try:
            await self._route_unchecked(answer)
            await self._read_new_tags(answer)
        finally:
            self._services_idle.set()

    async def _read_new_tags(self, answer: Answer) -> None:
        """Route at once the instances that brought a checked service a new tag (see the module's docstring)."""
        tags = {name: frozenset(t or ()) for name, t in (answer.json() or {}).items() if MARKER_TAG in (t or ())}
        before, self._tags = self._tags, tags
        filters = {service: new_tags_filter(new) for service, new in new_tags(before, tags).items()
                   if service in self._keys_of}
        if not filters or self.grace.since is not None:
            return  # nothing new, or an empty catalog is being held back
        answers = await asyncio.gather(*(self._read_answer(f"/v1/health/service/{service}", {"filter": f})
                                         for service, f in filters.items()))
        services = {service for service, got in zip(filters, answers, strict=True)
                    if self._take_early(service, json_list(got.raw), got.index)}
        if services:
            self._update_table(services)

    def _take_early(self, service: str, entries: list[Any], index: int) -> bool:
        """Put instances of `service` read from /v1/health/service into _seen and _book as the whole checks
        answer would; True if any was new."""
        taken = False
        for entry in entries:
            node, instance_id = (entry.get("Node") or {}).get("Node"), (entry.get("Service") or {}).get("ID")
            if not isinstance(node, str) or not isinstance(instance_id, str):
                continue
            key = (node, instance_id)
            checks = entry.get("Checks") or ()
            created = max((c.get("CreateIndex", 0) for c in checks if c.get("ServiceID") == instance_id), default=None)
            if key in self._seen or created is None:
                continue  # known already, or without a check of its own (the unchecked path routes it)
            registration = (created, tuple(entry["Service"].get("Tags") or ()))
            self._seen[key] = (service, registration, all(c.get("Status") == "passing" for c in checks))
            self._book[key] = (registration, self.read_entry(entry))
            self._keys_of.setdefault(service, set()).add(key)
            self._early[key] = index
            taken = True
        return taken

    def _instances_in(self, raw: bytes) -> list[Instance]:
        """A service's instances, made as soon as its read is decoded: made after all reads, they were made
        among all reads' entries, and pinned their pages once those were freed (1,000 new services:
        docs/performance.md, "#13 memory: allocation order")."""
        return [inst for inst in map(self.read_entry, json_list(raw)) if inst is not None]

    async def _route_unchecked(self, answer: Answer) -> None:
        tagged = {name for name, tags in (answer.json() or {}).items() if MARKER_TAG in (tags or ())}
        unchecked = tagged - self._keys_of.keys()
        reads = [self._read(f"/v1/health/service/{service}", f'"{MARKER_TAG}" in Service.Tags', self._instances_in,
                            passing="1")
                 for service in sorted(unchecked)]
        changed: dict[str, list[Instance]] = {}
        for service, instances in zip(sorted(unchecked), await asyncio.gather(*reads), strict=True):
            if service in self._keys_of:
                continue  # its checks arrived during the read: the checks watch routes it from now on
            signature = frozenset((inst.id, inst.base_url, inst.models, inst.capabilities) for inst in instances)
            if self._unchecked.get(service) != signature:
                changed[service], self._unchecked[service] = instances, signature
        gone = [service for service in self._unchecked if service not in unchecked]
        holding = self.grace.since is not None  # an empty catalog is held back: drop nothing meanwhile
        dropped = [service for service in gone if not holding and service not in self._keys_of]
        for service in gone:
            if not holding:
                del self._unchecked[service]  # now checked (the other watch routes it) or gone
        if changed or dropped:
            self.table.update(changed, dropped)

    async def _read_addresses(self, needed: set[Key], seen: dict[Key, Seen]) -> None:
        nodes, services = plan_reads(needed, seen)
        reads: list[Awaitable[Iterable[dict[str, Any]]]] = [
            self._read(f"/v1/catalog/node-services/{node}", f'"{MARKER_TAG}" in Tags', node_entries_in)
            for node in nodes]
        ids: dict[str, set[str]] = {}
        for node, service_id in needed:
            if node not in nodes:
                ids.setdefault(seen[(node, service_id)][0], set()).add(service_id)
        reads += [self._read(f"/v1/health/service/{service}", service_filter(ids[service]), json_list)
                  for service in services]
        canonical: dict[Any, Key] = {key: key for key in needed}  # the book shares the checks' key and id strings
        for entries in await asyncio.gather(*reads):
            for entry in entries:
                key = canonical.get(((entry.get("Node") or {}).get("Node"), (entry.get("Service") or {}).get("ID")))
                if key is not None:
                    inst = self.read_entry(entry)
                    if inst is not None:
                        inst.id = key[1]  # equal: the key was read from this entry
                    self._book[key] = (seen[key][1], inst)

    def registered(self) -> list[tuple[Instance, bool]]:
        """Every instance with checks that Consul lists (routable or not), and whether its checks pass."""
        return [(inst, passing) for key, (_, _, passing) in self._seen.items()
                if (inst := self._book.get(key, (None, None))[1]) is not None]

    async def _read_answer(self, path: str, params: dict[str, str]) -> Answer:
        assert self._consul is not None
        async with self._reads:
            return await self._consul.read(path, params=params)

    async def _read(self, path: str, filter: str, entries: Callable[[bytes], _Read], **params: str) -> _Read:
        """`entries` decodes the raw answer: a node's answer may be megabytes, decoded only in part."""
        assert self._consul is not None
        async with self._reads:
            answer = await self._consul.read(path, params={"filter": filter, **params})
        return entries(answer.raw)
