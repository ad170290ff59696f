"""The sync loop: turn a stream of cluster states into as few, as small transactions as
possible. Sources call `Proxier.replace_*`/`update_*` (through the daemon's Sink); the loop
batches bursts, recompiles only the Services that changed and applies the scoped diff. It
also repairs foreign changes it learns of from commit notifications and generation ids
(`watch_commits`, `repair`) and writes the record (docs/ruleset.md, "What the kernel holds")."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import dataclasses
import errno
import gc
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from nftproxy import applying, verifying
from nftproxy.config import NodeConfig
from nftproxy.conntrack import Family, Stale
from nftproxy.kernel.backend import Backend
from nftproxy.kernel.errors import NetlinkError, NftError, Unsupported
from nftproxy.kernel.netlink import MAX_NOTIFIED, Committed, Lost
from nftproxy.logs import DETAIL
from nftproxy.model import EndpointSlice, Service, ServiceName, SharedValues, SliceName
from nftproxy.ruleset.compile import Fragment, Names, compile_service
from nftproxy.ruleset.desired import DesiredState, Ruleset, Scope, bulk_build
from nftproxy.ruleset.diff import AppliedState, SkeletonMismatch, check_skeleton, diff
from nftproxy.ruleset.schema import RECORD, Atom, SetDef, is_record
from nftproxy.ruleset.transaction import (
    AddChain,
    AddElements,
    AddSet,
    DeleteChain,
    DeleteElements,
    DeleteSet,
    Transaction,
    render_element,
)

__all__ = [
    "DEFAULT_VERIFY_PERIOD",
    "SYNC_ERRORS",
    "Proxier",
    "SyncLimiter",
    "SyncResult",
    "SyncStats",
    "stale_udp_endpoints",
    "udp_frontend_flows",
]

log = logging.getLogger("nftproxy.sync")

# What a sync may fail with; it is then retried as a full sync, with backoff. KeepRefused:
# the inputs are incomplete and the change would need a new generation (see applying).
SYNC_ERRORS = (NftError, OSError, SkeletonMismatch, applying.KeepRefused)


@dataclass(frozen=True, slots=True)
class SyncResult:
    mode: str  # "noop", "incremental", "generation"
    changes: int
    seconds: float
    services: int


@dataclass(slots=True)
class SyncStats:
    """Counters an observer (logs, metrics) reads."""

    syncs: int = 0
    full_syncs: int = 0
    partial_syncs: int = 0
    failures: int = 0
    last_sync: SyncResult | None = None
    last_success_at: float = 0.0
    external_changes: int = 0
    # Called after each successful sync.
    listeners: list[Callable[[SyncResult], None]] = field(default_factory=list)
    # Called when changes are queued for the next sync: (services changed, slices changed).
    queue_listeners: list[Callable[[int, int], None]] = field(default_factory=list)
    # Called after each failed sync, with what failed.
    failure_listeners: list[Callable[[Exception], None]] = field(default_factory=list)
    # Called on every turn of the sync loop (at least every tick): it is not stuck.
    tick_listeners: list[Callable[[], None]] = field(default_factory=list)


class SyncLimiter:
    """kube-proxy's sync rate limit: at most `burst` syncs back to back, then one per
    `min_interval` (a token bucket: a token a `min_interval`, holding at most `burst`).

    After a quiet spell the first changes are applied at once; a storm of changes is
    batched into one sync per `min_interval`. kube-proxy uses a burst of 2.
    """

    def __init__(self, min_interval: float, burst: int = 2) -> None:
        if burst < 1:
            raise ValueError("the sync burst must be at least 1")
        self.min_interval = min_interval
        self.burst = burst
        self._tokens = float(burst)
        self._at: float | None = None

    def _refill(self, now: float) -> None:
        if self._at is not None and self.min_interval > 0:
            gained = (now - self._at) / self.min_interval
            self._tokens = min(float(self.burst), self._tokens + gained)
        else:
            self._tokens = float(self.burst)
        self._at = now

    def ready_at(self, now: float) -> float:
        """When the next sync may start (`now` or later)."""
        self._refill(now)
        if self._tokens >= 1.0:
            return now
        return now + (1.0 - self._tokens) * self.min_interval

    def take(self, now: float) -> None:
        """A sync starts now."""
        self._refill(now)
        self._tokens = max(0.0, self._tokens - 1.0)


# Seconds between comparisons of every set with the desired state, made whether or not
# anyone seems to have changed the table: the safety net under the commit notifications.
# kube-proxy's nftables mode resyncs on its own only hourly; every 5 minutes repairs what
# the notifications missed sooner, for one comparison (see verifying) per 5 minutes.
DEFAULT_VERIFY_PERIOD = 300.0


class Proxier:
    """Owns the desired state of one network namespace and keeps the kernel equal to it."""

    def __init__(
        self,
        backend: Backend,
        node: NodeConfig,
        *,
        min_sync_period: float = 1.0,
        sync_burst: int = 2,
        verify_period: float = DEFAULT_VERIFY_PERIOD,
        max_backoff: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.node = node
        self.min_sync_period = min_sync_period
        self.limiter = SyncLimiter(min_sync_period, sync_burst)
        self.verify_period = verify_period
        self.max_backoff = max_backoff
        self.clock = clock
        self.stats = SyncStats()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._services: dict[ServiceName, Service] = {}
        self._slices: dict[SliceName, EndpointSlice] = {}
        # A tuple, not a dict, per Service: nearly every Service has one slice, and dicts
        # are large.
        self._by_service: dict[ServiceName, tuple[EndpointSlice, ...]] = {}
        self._dirty: set[ServiceName] = set()
        self._desired: DesiredState | None = None
        self._applied: AppliedState | None = None
        self._need_full = True
        # The generation id after our last commit; None when unknown.
        self._kernel_generation: int | None = None
        self._commits = 0  # commits of the sync under way
        self._repair_due = False
        self._rebuild = False  # the next full sync builds a new generation at once
        self._repair_gap = 0.5
        # What the commit monitor saw (see watch_commits), and what it means: the sets
        # someone else changed since the last repair (None: any of them may have).
        self._monitoring = False
        self._seen_lock = threading.Lock()
        self._seen: list[Committed] = []
        self._lost = False
        self._foreign_structure = False
        self._foreign_sets: set[str] | None = set()
        self._foreign_elements: dict[str, list[tuple[bool, bytes]]] = {}
        # The generation ids our commits led to (the last 4096), and the kernel's ids of
        # the threads we commit from, learnt from those.
        self._own_generations: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._own_pids: set[int] = set()
        self._monitor: Any = None
        self._monitor_paused = False
        self._conflicts: set[str] = set()  # as last logged
        self._peak = 0  # Services and slices, most since memory was last given back
        self.keep = False  # see set_keep
        # The record our table holds, as far as we know (None: none).
        self._record: verifying.Record | None = None
        self._last_verify_at = float("-inf")
        self._backoff = 0.0
        self._retry_at = float("-inf")
        # Set by the daemon to remove conntrack entries of UDP endpoints that went away.
        self.clear_stale_udp: Callable[[list[Stale]], object] | None = None
        # Set by the daemon to read the node's addresses again (it calls update_node when
        # they changed); the loop calls it before each full sync and periodic comparison.
        self.refresh_node: Callable[[], object] | None = None
        # The desired state took new node addresses in place (see set_node): sync them.
        self._node_changed = False

    # --- inputs (any thread) --------------------------------------------------------------

    def replace_all(
        self, services: Mapping[ServiceName, Service], slices: Mapping[SliceName, EndpointSlice]
    ) -> None:
        """A complete new picture (a re-list or a directory reload); only differences count."""
        with self._lock:
            changed = (self._replace_services(services), self._replace_slices(slices))
        self._queued(*changed)

    def replace_services(self, services: Mapping[ServiceName, Service]) -> None:
        """Every Service (a re-list); EndpointSlices stay as they are."""
        with self._lock:
            changed = self._replace_services(services)
        self._queued(changed, 0)

    def replace_slices(self, slices: Mapping[SliceName, EndpointSlice]) -> None:
        """Every EndpointSlice (a re-list); Services stay as they are."""
        with self._lock:
            changed = self._replace_slices(slices)
        self._queued(0, changed)

    def _replace_services(self, services: Mapping[ServiceName, Service]) -> int:
        changed = 0
        for sid in self._services.keys() - services.keys():
            changed += self._set_service(sid, None)
        for sid, svc in services.items():
            changed += self._set_service(sid, svc)
        return changed

    def _replace_slices(self, slices: Mapping[SliceName, EndpointSlice]) -> int:
        changed = 0
        for key in self._slices.keys() - slices.keys():
            changed += self._set_slice(key, None)
        for key, sl in slices.items():
            changed += self._set_slice(key, sl)
        return changed

    def update_service(self, sid: ServiceName, svc: Service | None) -> None:
        with self._lock:
            changed = self._set_service(sid, svc)
        self._queued(changed, 0)

    def update_slice(self, key: SliceName, sl: EndpointSlice | None) -> None:
        with self._lock:
            changed = self._set_slice(key, sl)
        self._queued(0, changed)

    def set_node(self, node: NodeConfig) -> None:
        """New node facts. When only its addresses changed, and with them at most which
        ones accept NodePorts, the next sync changes just those elements; anything else
        (zone, options) recompiles everything in a full sync."""
        with self._lock:
            self._set_node(node)
        self._queued(0, 0, force=True)

    def update_node(self, **changes: Any) -> None:
        """`set_node` with these fields of the current node changed (one read-modify-write:
        the Node object and the interface addresses are followed by different threads)."""
        with self._lock:
            self._set_node(replace(self.node, **changes))
        self._queued(0, 0, force=True)

    def _set_node(self, node: NodeConfig) -> None:
        if node == self.node:
            return
        self.node = node
        desired = self._desired
        if desired is not None and not self._need_full and desired.set_node(node):
            self._node_changed = True
        else:
            self._need_full = True

    def set_keep(self, keep: bool) -> None:
        """Whether the inputs are known to be incomplete (a manifest that does not parse):
        full syncs and repairs then only add and replace, never delete, so that what the
        unknown inputs describe stays as the table holds it (see applying.keeping). When
        they are complete again, a full sync deletes what is left over."""
        with self._lock:
            if keep == self.keep:
                return
            self.keep = keep
            if not keep:
                self._need_full = True
        if keep:
            log.warning("some inputs are unreadable: nothing is deleted until they are fixed")
        else:
            log.info("every input reads again: a full sync deletes what they no longer hold")
            self._wake.set()

    def services(self) -> list[Service]:
        with self._lock:
            return list(self._services.values())

    def slices_of(self, sid: ServiceName) -> list[EndpointSlice]:
        with self._lock:
            return list(self._by_service.get(sid, ()))

    @property
    def ruleset(self) -> Ruleset | None:
        """The desired ruleset as of the last sync (None before the first)."""
        return None if self._desired is None else self._desired.ruleset

    def _queued(self, services: int, slices: int, *, force: bool = False) -> None:
        if services or slices or force:
            for listener in self.stats.queue_listeners:
                listener(services, slices)
        self._wake_if_dirty()
        if force:
            self._wake.set()

    def request_full_sync(self) -> None:
        with self._lock:
            self._need_full = True
        self._wake.set()

    def _wake_if_dirty(self) -> None:
        if self._dirty:
            self._wake.set()

    def _set_service(self, sid: ServiceName, svc: Service | None) -> int:
        if self._services.get(sid) == svc:
            return 0
        if svc is None:
            self._services.pop(sid, None)
        else:
            self._services[sid] = svc
        self._dirty.add(sid)
        return 1

    def _set_slice(self, key: SliceName, sl: EndpointSlice | None) -> int:
        old = self._slices.get(key)
        if old == sl:
            return 0
        if old is not None:
            sid = old.service
            others = tuple([s for s in self._by_service.get(sid, ()) if s is not old])
            if others:
                self._by_service[sid] = others
            else:
                self._by_service.pop(sid, None)
            self._dirty.add(sid)
        if sl is None:
            self._slices.pop(key, None)
        else:
            self._slices[key] = sl
            sid = sl.service
            self._by_service[sid] = (*self._by_service.get(sid, ()), sl)
            self._dirty.add(sid)
        return 1

    # --- syncing (the loop's thread) ------------------------------------------------------

    def _build(self, names: Names) -> Ruleset:
        # The old state is not needed to build the new one: holding both would double the
        # largest thing the daemon keeps for the length of a full sync.
        self._desired = None
        desired = DesiredState(self.node, names, track_changes=False)
        with bulk_build():
            for sid, svc in self._services.items():
                desired.set_service(sid, self._compile(sid, svc, names))
        desired.track_changes = True
        desired.take_changes()
        self._desired = desired
        return desired.ruleset

    def _compile(self, sid: ServiceName, svc: Service, names: Names) -> Fragment:
        return compile_service(svc, self._by_service.get(sid, ()), self.node, names)

    def sync(self) -> SyncResult:
        """One sync now: partial when possible, full after a failure or at start."""
        start = time.perf_counter()
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            self._node_changed = False
            # When most Services changed (a first list, a re-list after a long outage) one
            # generation build is cheaper than recompiling each into the old state.
            need_full = (
                self._need_full
                or self._desired is None
                or self._applied is None
                or len(dirty) > max(1000, len(self._services) // 4)
            )
            self._commits = 0
            failed: Exception | None = None
            if need_full:
                self._pause_monitor()
            try:
                result = self._full_sync() if need_full else self._partial_sync(dirty)
            except SYNC_ERRORS as exc:
                # Whatever half happened, the next attempt starts from what the kernel says.
                self._dirty |= dirty
                self._need_full = True
                self._applied = None
                self._kernel_generation = None
                self.stats.failures += 1
                self._backoff = min(self.max_backoff, max(1.0, self._backoff * 2))
                self._retry_at = self.clock() + self._backoff
                log.error("sync failed (retry in %.0fs): %s", self._backoff, exc)
                failed = exc
            else:
                self._write_record()
            finally:
                self._resume_monitor()
        if failed is not None:
            for on_failure in self.stats.failure_listeners:
                on_failure(failed)
            raise failed
        self._backoff = 0.0
        result = SyncResult(
            result.mode, result.changes, time.perf_counter() - start, result.services
        )
        self.stats.syncs += 1
        self.stats.last_sync = result
        self.stats.last_success_at = time.time()
        if result.mode == "generation" or need_full:
            self.stats.full_syncs += 1
        else:
            self.stats.partial_syncs += 1
        self._warn_conflicts()
        self._give_back_memory_if_shrunk()
        for listener in self.stats.listeners:
            listener(result)
        return result

    def _give_back_memory_if_shrunk(self) -> None:
        """When the cluster shrank to under half of its size since the last time, give
        the memory of what went away back to the system: Python keeps freed memory in
        arenas that a few survivors (cached values, large dict tables) pin, and glibc
        keeps freed heap. bench/restart.py's shrink phase measures what comes back
        (docs/benchmarks.md)."""
        size = len(self._services) + len(self._slices)
        self._peak = max(self._peak, size)
        if self._peak < 1000 or size * 2 > self._peak:
            return
        self._peak = size
        with self._lock:
            # Dicts never shrink their tables when entries go.
            self._services = dict(self._services)
            self._slices = dict(self._slices)
            self._by_service = dict(self._by_service)
        self.backend.forget_caches()
        SharedValues.clear_all()
        gc.collect()
        _trim_malloc()
        log.info("gave memory back to the system after the cluster shrank to %d objects", size)

    def _warn_conflicts(self) -> None:
        """Log addresses and ports several Services claim, once each time that changes."""
        desired = self._desired
        now = set(desired.conflict_warnings()) if desired is not None else set()
        for warning in sorted(now - self._conflicts):
            log.warning("%s", warning)
        for gone in sorted(self._conflicts - now):
            log.info("resolved: %s", gone.partition(" is claimed")[0])
        self._conflicts = now

    # --- what the kernel holds ------------------------------------------------------------

    def _generation(self) -> int | None:
        """The kernel's nftables generation id (it moves with every commit, anyone's)."""
        try:
            return self.backend.generation()
        except (OSError, NftError):  # Unsupported included
            return None

    def _commit(self, tx: Transaction, sets: Mapping[str, SetDef]) -> None:
        """Run one transaction, knowing the generation id it leads to: a commit of ours
        that the commit monitor must not take for someone else's.

        Element batches carry the generation id our last commit led to, so the kernel
        refuses them if anyone committed since, and each leaves it exactly one higher: no
        need to read it (a read right after a commit that deleted elements waits for the
        kernel's cleanup, which slowed every sync in bench/api.py). Text commits (chains)
        read it before and after."""
        gen = self._kernel_generation
        if gen is None or not self.backend.batches(tx, sets):
            gen = self._generation()
            if gen != self._kernel_generation and self._kernel_generation is not None:
                self._unaccounted()  # someone else committed since our last commit
        try:
            checked = self.backend.apply(tx, sets, generation=gen)
        except NetlinkError as exc:
            if exc.errno != errno.ERESTART:
                raise
            # Someone else committed since our last commit: whether to our table, the
            # monitor tells (without it, or while it is paused, the table is compared).
            self._unaccounted()
            gen = self._generation()
            checked = self.backend.apply(tx, sets, generation=gen)
        self._commits += 1
        after = (gen + 1) & 0xFFFFFFFF if checked and gen is not None else self._generation()
        self._kernel_generation = after
        if gen is not None and after == (gen + 1) & 0xFFFFFFFF:
            self._own(after)
        else:
            self._unaccounted()  # someone else committed too: which one was ours?

    def _unaccounted(self) -> None:
        """Someone else committed around a commit of ours. The commit monitor tells what
        they touched; without it (or while it is paused) the table is compared."""
        if not self._monitoring or self._monitor_paused:
            self._repair_due = True

    def _own(self, generation: int) -> None:
        self._own_generations[generation] = None
        if len(self._own_generations) > 4096:
            self._own_generations.popitem(last=False)

    def _ours(self, generation: int, pid: int) -> bool:
        """For the commit monitor (its thread): a transaction we know as ours, by its
        generation id or by the thread that committed it."""
        return generation in self._own_generations or pid in self._own_pids

    def _pause_monitor(self) -> None:
        """No notifications during a full sync: the kernel would make, and the monitor
        read, one for each of its elements. Someone else committing meanwhile
        is noticed by the generation ids (see _commit), and the table is then compared."""
        if self._monitor is not None:
            self._monitor_paused = True
            self._monitor.pause()

    def _resume_monitor(self) -> None:
        if self._monitor is not None and self._monitor_paused:
            self._monitor.resume()
            self._monitor_paused = False
            now = self._generation()
            if now is None or now != self._kernel_generation:
                self._repair_due = True

    def _structure(self) -> AppliedState | None:
        return verifying.structure(self.backend)

    def _found_record(self, structure: AppliedState) -> verifying.Record | None:
        """The record the table holds (see verifying.Record), read once per full sync."""
        names = [n for n in structure.sets if is_record(n)]
        lister = self.backend
        return verifying.read_record(lister, names[0]) if len(names) == 1 else None

    def _prefetch(
        self, structure: AppliedState, found: verifying.Record | None
    ) -> verifying.Dumps | None:
        """Start dumping the table's sets, so that the kernel lists them while the desired
        state is built; not when the record says nobody committed since the last daemon
        did (it is then likely to vouch for the table: see _differences)."""
        if found is not None and found.generation == self._generation():
            return None
        lister = self.backend
        return lister.dump_sets(verifying.dumped_sets(structure))

    def _differences(
        self,
        structure: AppliedState,
        found: verifying.Record | None = None,
        dumps: verifying.Dumps | None = None,
    ) -> applying.Compare:
        lister = self.backend

        def compare(ruleset: Ruleset) -> Scope:
            desired = self._desired
            if (
                found is not None
                and desired is not None
                and desired.ruleset is ruleset
                and desired.names(RECORD) in structure.sets
                and (found.digest, found.generation) == (desired.digest, self._generation())
            ):
                # What the last daemon wrote is what we want, and nobody committed since
                # (the generation id is read now, after the build): no need to read the table.
                log.info("the table's record matches the desired state")
                return Scope(sets=set(ruleset.sets), chains=set(ruleset.chains))
            return verifying.differences(lister, ruleset, structure, dumps)

        return compare

    def _read_record(self) -> verifying.Record | None:
        structure = self._structure()
        return None if structure is None else self._found_record(structure)

    def _write_record(self) -> None:
        """After commits of ours, record the digest of the desired state and the generation
        id the record's own commit leads to; the kernel refuses that commit if anyone
        committed since our last one (see verifying.Record). Only a restart reads it."""
        desired, gen = self._desired, self._kernel_generation
        # Only after commits of ours: a sync that found nothing to change commits nothing.
        if desired is None or gen is None or self._repair_due or not self._commits:
            return
        name, digest = desired.names(RECORD), desired.digest
        if name not in desired.ruleset.sets or self._record == verifying.Record(digest, gen):
            return
        record = verifying.Record(digest, (gen + 1) & 0xFFFFFFFF)
        tx = Transaction(list(verifying.record_ops(name, record, replace=self._record is not None)))
        sets = {name: desired.ruleset.sets[name]}
        if not self.backend.batches(tx, sets):
            return  # only a batch is refused unless nobody committed since our last commit
        try:
            self.backend.apply(tx, sets, generation=gen)
        except (NftError, OSError) as exc:
            log.debug("the record was not written: %s", exc)
            self._record = self._read_record()
            return
        self._record = record
        self._kernel_generation = record.generation
        self._own(record.generation)

    def _full_sync(self, *, too_big: bool = False) -> SyncResult:
        # What anyone committed before now, this sync reads (or replaces) itself.
        self._kernel_generation = self._generation()
        structure = self._structure()
        # A repair found what only a new generation mends: no need to compare again.
        rebuild, self._rebuild = self._rebuild, False
        found: verifying.Record | None = None  # the table's record, when read
        if (too_big or rebuild) and structure is not None and structure.chains:
            top = max(applying.generations(structure), default=0)
            why = "too many changes for one transaction" if too_big else "our chains changed"
            if self.keep:
                raise applying.KeepRefused(f"the change needs a new generation ({why})")
            plan = applying.generation_plan(self._build, structure, top + 1, why)
        elif structure is None:
            # No cheap listing: read everything and apply only the difference.
            plan = applying.make_plan(self._build, applying.read_applied(self.backend))
        elif not structure.chains and not structure.sets:
            plan = applying.generation_plan(self._build, None, 1, "no nftproxy table yet")
        else:
            # A restart, a failure, a foreign change: the table is compared with the desired
            # state set by set and only what differs changes (nothing, when nothing does). A
            # new generation is built beside the current one, and flipped to atomically,
            # when the skeleton differs or the difference is too big for one transaction.
            found = self._found_record(structure)
            compare = self._differences(structure, found, self._prefetch(structure, found))
            plan = applying.make_plan(self._build, structure, compare=compare, keep=self.keep)
        applying.run_plan(self.backend, plan, self._commit)
        assert plan.desired is not None
        # A new generation has an empty record set; else ours changed nothing in it.
        self._record = None if plan.mode == "generation" else found
        # What the kernel holds now is the plan's desired state: no need to read it back.
        # Keep names and rule counts, not elements: partial syncs diff against the values
        # the desired state records before each change.
        state = AppliedState.of(plan.desired, elements=False)
        self._applied = state
        self._need_full = False
        self._repair_due = False
        self._last_verify_at = self.clock()
        done = applying.describe(plan.mode, plan.generation, plan.size(), plan.reason)
        log.info("full sync: %s", done)
        if self.clear_stale_udp is not None:
            self._clear_udp(udp_frontend_flows(plan.desired))
        return SyncResult(plan.mode, plan.size(), 0.0, len(self._services))

    def _clear_stale_udp(self, scope: Scope, ruleset: Ruleset) -> None:
        self._clear_udp(stale_udp_endpoints(scope, ruleset))

    def _clear_udp(self, stale: list[Stale]) -> None:
        clear = self.clear_stale_udp
        if stale and clear is not None:
            try:
                clear(stale)
            except OSError as exc:  # the rules are right; a leftover entry only ages out
                log.warning("could not clear stale UDP conntrack entries: %s", exc)

    def _partial_sync(self, dirty: Iterable[ServiceName]) -> SyncResult:
        desired, applied = self._desired, self._applied
        assert desired is not None and applied is not None
        touched = 0
        for sid in dirty:
            svc = self._services.get(sid)
            frag = None if svc is None else self._compile(sid, svc, desired.names)
            desired.set_service(sid, frag)
            touched += 1
        scope = desired.take_changes()
        tx = diff(desired.ruleset, applied, scope)
        if tx.size() > applying.MAX_INCREMENTAL:
            # Too big for one transaction: build a new generation instead, without holding
            # on to this state while the next one is built.
            self._need_full = True
            # The endpoints this change removed: a new generation cannot tell them.
            stale = stale_udp_endpoints(scope, desired.ruleset)
            del desired, scope, tx
            result = self._full_sync(too_big=True)
            self._clear_udp(stale)
            return result
        for part in tx.split():
            self._commit(part, desired.ruleset.sets)
            applied.record(part)
        if tx:
            log.log(
                DETAIL, "sync: %d service(s) changed, %d element/chain changes", touched, tx.size()
            )
            self._clear_stale_udp(scope, desired.ruleset)
        return SyncResult("incremental" if tx else "noop", tx.size(), 0.0, touched)

    def kernel_changed_by_others(self) -> bool:
        """True when someone else changed our table, or may have. With the commit monitor
        running, only transactions that touched our table count; without it, any commit
        of anyone since our last one (the kernel's generation id moved)."""
        if self._repair_due:
            return True
        if self._monitoring:
            self._note_foreign_commits()
            return (
                self._foreign_structure
                or self._foreign_sets is None
                or bool(self._foreign_sets)
                or bool(self._foreign_elements)
            )
        if self._kernel_generation is None:
            return False
        now = self._generation()
        return now is not None and now != self._kernel_generation

    def _note_foreign_commits(self) -> None:
        """Fold what the monitor saw into the sets to compare (None: all of them)."""
        with self._seen_lock:
            seen, self._seen = self._seen, []
            lost, self._lost = self._lost, False
        for committed in seen:
            if committed.generation in self._own_generations:
                self._own_pids.add(committed.pid)  # a thread of ours commits
                continue
            if committed.pid in self._own_pids:
                continue
            if committed.other:
                # Our chains, rules or set definitions: rules are not read back, so
                # nothing but a new generation is sure to put them right.
                self._foreign_structure = True
            if committed.other or self._foreign_sets is None:
                self._foreign_sets = None
                continue
            for name in committed.sets:
                changes = committed.elements.get(name)
                known = self._foreign_elements.setdefault(name, [])
                if changes is None or name in self._foreign_sets:
                    self._foreign_sets.add(name)  # too many to follow: compare it whole
                    del self._foreign_elements[name]
                else:
                    known.extend(changes)
                    if len(known) > 5 * MAX_NOTIFIED:  # a long stream of them: list it
                        self._foreign_sets.add(name)
                        del self._foreign_elements[name]
        if lost:
            # Notifications were dropped (mostly: a burst of our own, a generation build).
            # Anyone else's commit since our last one may have been among them.
            now = self._generation()
            if now is None or now != self._kernel_generation:
                self._foreign_sets = None

    def watch_commits(self, stop: threading.Event) -> bool:
        """Follow nftables' change notifications until `stop` (in a thread of its own):
        only transactions that touched our table, and were not ours, lead to a repair, and
        only of the sets they touched. False when the backend cannot (the generation id
        alone then tells, and every foreign commit anywhere costs a full comparison)."""
        try:
            monitor = self.backend.monitor(self._ours)
        except Unsupported:
            return False
        except OSError as exc:
            log.warning("cannot follow nftables notifications (%s): comparing on any commit", exc)
            return False
        self._monitoring = True
        self._monitor = monitor
        try:
            while not stop.is_set():
                try:
                    seen = monitor.read(0.5)
                except Lost:
                    with self._seen_lock:
                        self._lost = True
                    self._wake.set()
                    continue
                if seen:
                    with self._seen_lock:
                        self._seen.extend(seen)
                    self._wake.set()
        except OSError as exc:
            log.error("following nftables notifications failed (%s): comparing on commits", exc)
        finally:
            self._monitoring = False
            self._monitor = None
            monitor.close()
        return True

    def repair(self, *, everything: bool = False) -> SyncResult:
        """Compare the table with the desired state, element by element, and change what
        differs: in the sets someone else changed (as far as the commit monitor knows),
        else (or with `everything`) in all. A difference no element change can mend (our
        chains' rules, the skeleton, a missing table) schedules a full sync, which builds a
        new generation."""
        start = time.perf_counter()
        with self._lock:
            self._last_verify_at = self.clock()
            # Commits of others nobody could follow (no monitor, or it was paused).
            unaccounted, self._repair_due = self._repair_due, False
            only: set[str] | None = None
            notified: dict[str, list[tuple[bool, bytes]]] = {}
            if self._monitoring and not everything and not unaccounted:
                self._note_foreign_commits()
                only, notified = self._foreign_sets, self._foreign_elements
            structural, self._foreign_structure = self._foreign_structure, False
            self._foreign_sets, self._foreign_elements = set(), {}
            desired = self._desired
            if desired is None or self._need_full:
                return SyncResult("noop", 0, 0.0, 0)
            self._commits = 0
            self._kernel_generation = self._generation()  # what the comparison sees
            structure = self._structure()
            if structure is None:
                kernel = applying.read_applied(self.backend)
                matches = kernel is not None and kernel.matches(desired.ruleset)
                tx, why = Transaction(), "" if matches else "the table differs"
            elif structural:
                tx, why = Transaction(), "someone else changed its chains, rules or sets"
            else:
                tx, why = self._repair_tx(desired.ruleset, structure, only, notified)
                if self.keep:
                    tx, _ = applying.keeping(tx)
            if why:
                log.warning("the nftproxy table was changed by someone else: %s; rebuilding", why)
                self.stats.external_changes += 1
                self._need_full = self._rebuild = True
                self._wake.set()
                return SyncResult("full", 0, time.perf_counter() - start, 0)
            # Elements only: put back in place, in several commits if there are many (a
            # flushed map), each leaving the table less broken than the one before.
            for part in tx.split():
                for chunk in part.chunked(applying.MAX_INCREMENTAL):
                    self._commit(chunk, desired.ruleset.sets)
            self._write_record()
        if tx:
            self.stats.external_changes += 1
            log.warning("the nftproxy table was changed by someone else: repaired %s", _summary(tx))
        return SyncResult(
            "incremental" if tx else "noop", tx.size(), time.perf_counter() - start, 0
        )

    def _repair_tx(
        self,
        ruleset: Ruleset,
        structure: AppliedState,
        only: set[str] | None,
        notified: Mapping[str, list[tuple[bool, bytes]]],
    ) -> tuple[Transaction, str]:
        """The repair: sets in `only` (None: all) compared whole by listing them, the
        elements others were seen to change (`notified`) compared key by key."""
        try:
            check_skeleton(ruleset, structure)
            befores, whole = verifying.notified_differences(ruleset, notified)
            if only is not None:
                only = only | whole
            lister = self.backend
            scope = verifying.differences(lister, ruleset, structure, only=only)
            for name, before in befores.items():
                if only is not None and name not in only:
                    scope.before.setdefault(name, {}).update(before)
            return diff(ruleset, structure, scope), ""
        except SkeletonMismatch as exc:
            return Transaction(), str(exc)

    def run(self, stop: threading.Event, *, tick: float = 0.5) -> None:
        """Loop until `stop` is set. Leaves the rules in place on exit."""
        while not stop.is_set():
            for turned in self.stats.tick_listeners:
                turned()
            # Cleared before looking at the state: an input arriving after this point sets
            # it again, so the wait below cannot sleep through it.
            self._wake.clear()
            now = self.clock()
            due = self._need_full or bool(self._dirty) or self._node_changed
            if due:
                # Wait out the backoff after a failure, or the sync rate limit; inputs
                # arriving meanwhile are batched into the sync that follows.
                ready_at = max(self._retry_at, self.limiter.ready_at(now))
                if now < ready_at:
                    stop.wait(min(ready_at - now, tick))
                    continue
                self.limiter.take(now)
                if self._need_full:
                    self._refresh_node()
                # sync() logged the failure and scheduled the retry with backoff.
                with contextlib.suppress(*SYNC_ERRORS):
                    self.sync()
                continue
            self._check_foreign_changes(now)
            self._wake.wait(timeout=tick)

    def _check_foreign_changes(self, now: float) -> None:
        """Repair the table when someone else changed it (the commit monitor says so, or
        without it the generation id: one netlink round trip a tick), and every
        `verify_period`. A comparison of every set grows with the table, so under a
        stream of foreign changes repairs run at most once per twice their duration, and
        at least half a second apart."""
        since = now - self._last_verify_at
        periodic = self.verify_period > 0 and since >= self.verify_period
        if since < self._repair_gap or not (periodic or self.kernel_changed_by_others()):
            return
        if periodic:
            self._refresh_node()
        started = time.perf_counter()
        try:
            self.repair(everything=periodic)
        except (NftError, OSError) as exc:
            log.error("repairing the table failed: %s; full resync", exc)
            self.request_full_sync()
        self._repair_gap = max(0.5, 2 * (time.perf_counter() - started))

    def _refresh_node(self) -> None:
        """Have the daemon read the node's addresses again (no notification is lost for
        long: a full sync or a periodic comparison reads them anyway)."""
        refresh = self.refresh_node
        if refresh is not None:
            try:
                refresh()
            except OSError as exc:
                log.warning("could not read the node's addresses: %s", exc)


def _trim_malloc() -> None:
    """glibc's malloc_trim: return free heap pages to the system (elsewhere: nothing)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _summary(tx: Transaction) -> str:
    """What a repair changed, for the log: counts per set and chain, a few keys."""
    parts: list[str] = []
    for op in tx.ops:
        if isinstance(op, AddElements):
            shown = ", ".join(render_element(k, v) for k, v in op.items[:3])
            more = f" (+{len(op.items) - 3})" if len(op.items) > 3 else ""
            parts.append(f"{op.set}: added {{ {shown} }}{more}")
        elif isinstance(op, DeleteElements):
            shown = ", ".join(render_element(k, None) for k in op.keys[:3])
            more = f" (+{len(op.keys) - 3})" if len(op.keys) > 3 else ""
            parts.append(f"{op.set}: deleted {{ {shown} }}{more}")
        elif isinstance(op, AddChain | DeleteChain | AddSet | DeleteSet):
            parts.append(next(iter(op.render())).replace(" inet nftproxy", ""))
    return "; ".join(parts)


# Names.endpoints(): [generation prefix]["np-"]"endpoints"["-local"]<family>"-"<protocol>.
_UDP_ENDPOINT_MAP = re.compile(r"(?:^|-)(np-)?endpoints(?:-local)?([46])-udp$")


def _udp_endpoint_maps(names: Iterable[str]) -> Iterator[tuple[str, bool, Family]]:
    """The UDP endpoint maps among `names`: whether each is keyed by node port, its family."""
    for set_name in names:
        if m := _UDP_ENDPOINT_MAP.search(set_name):
            yield set_name, m[1] is not None, 4 if m[2] == "4" else 6


def _frontend_stale(
    frontend: tuple[Atom, ...], nodeport: bool, family: Family, ip: str | None, port: int | None
) -> Stale:
    if not nodeport:
        return Stale(str(frontend[0]), int(frontend[1]), ip, port)
    if ip is not None:
        return Stale(None, int(frontend[0]), ip, port)
    return Stale(None, int(frontend[0]), None, None, nodeport_family=family)


def stale_udp_endpoints(scope: Scope, ruleset: Ruleset) -> list[Stale]:
    """The UDP conntrack entries a change made wrong, from the values it replaced in UDP
    endpoint maps. UDP has no end of connection: a client that keeps sending from one
    source port keeps the translation (or the lack of one) its first datagram got. So:

    - an endpoint a frontend no longer uses: its entries must go, or clients keep sending
      to it;
    - a frontend that had no endpoint and now has some: its entries that were never NATed
      must go. A client that started before the Service was programmed (or while it had no
      endpoints and the datagram reached the node, a NodePort say) would otherwise bypass
      the rules for as long as it keeps sending (kube-proxy clears these too).
    """
    out: list[Stale] = []
    for set_name, nodeport, family in _udp_endpoint_maps(scope.before):
        before = scope.before[set_name]
        now = ruleset.elements.get(set_name, {})
        old_by_frontend: dict[tuple[Atom, ...], set[tuple[Atom, ...]]] = {}
        for key, value in before.items():
            old = old_by_frontend.setdefault(key[:-1], set())
            if isinstance(value, tuple):
                old.add(value)
        for frontend, old_values in old_by_frontend.items():
            current = set()
            bucket = 0
            while (value := now.get((*frontend, bucket))) is not None:
                if isinstance(value, tuple):
                    current.add(value)
                bucket += 1
            if not old_values and current:
                out.append(_frontend_stale(frontend, nodeport, family, None, None))
            for ip, port in sorted(old_values - current, key=str):
                out.append(_frontend_stale(frontend, nodeport, family, str(ip), int(port)))
    return list(dict.fromkeys(out))  # a frontend in a Local map too: once


def udp_frontend_flows(ruleset: Ruleset) -> list[Stale]:
    """Every UDP frontend with endpoints, for its entries answered by anything but one of
    them (never NATed, or NATed to an endpoint it no longer has): what a full sync (a start,
    a new generation) clears, since it cannot tell what changed before."""
    endpoints: dict[tuple[tuple[Atom, ...], bool, Family], set[tuple[str, int]]] = {}
    for set_name, nodeport, family in _udp_endpoint_maps(ruleset.elements):
        for key, value in ruleset.elements[set_name].items():
            if isinstance(value, tuple):
                ip, port = value
                endpoints.setdefault((key[:-1], nodeport, family), set()).add((str(ip), int(port)))
    out = []
    for (frontend, nodeport, family), current in endpoints.items():
        rule = _frontend_stale(frontend, nodeport, family, None, None)
        out.append(dataclasses.replace(rule, keep=frozenset(current)))
    return out
