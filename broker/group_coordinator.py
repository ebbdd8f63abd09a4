"""The classic consumer-group protocol: membership, rebalances, and committed offsets.

One ``Group`` per group id walks Kafka's states -- Empty, PreparingRebalance,
CompletingRebalance, Stable, Dead.  A rebalance completes when every known
member has (re)joined or the rebalance timeout passes; the coordinator then
picks a protocol every member supports, bumps the generation, and answers
all pending JoinGroups (the leader gets the member list).  The leader's
SyncGroup hands out assignments; followers that sync before or after it get
theirs.  Members that stop heartbeating for their session timeout are
removed.  Committed offsets are written durably (conditional PUT of the
group's document in the metadata store) before a commit is acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from metadata.store import ConflictError, GroupOffsetsStore
from protocol.errors import ErrorCode

log = logging.getLogger("keel.groups")

EMPTY = "Empty"
PREPARING = "PreparingRebalance"
COMPLETING = "CompletingRebalance"
STABLE = "Stable"
DEAD = "Dead"

MIN_SESSION_TIMEOUT_MS = 1_000
MAX_SESSION_TIMEOUT_MS = 300_000
MAX_METADATA_BYTES = 4096
INITIAL_REBALANCE_DELAY_MS = 100
EXPIRY_CHECK_SECONDS = 0.25
REBALANCE_POLL_SECONDS = 0.02


@dataclass(slots=True)
class JoinResult:
    error: ErrorCode
    generation: int = -1
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader: str = ""
    member_id: str = ""
    members: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class SyncResult:
    error: ErrorCode
    assignment: bytes = b""
    protocol_type: str | None = None
    protocol_name: str | None = None


@dataclass(slots=True, eq=False)
class Member:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocol_type: str
    protocols: list[tuple[str, bytes]]
    assignment: bytes = b""
    last_seen: float = field(default_factory=time.monotonic)
    join_waiter: asyncio.Future[JoinResult] | None = None
    sync_waiter: asyncio.Future[SyncResult] | None = None

    def metadata_for(self, protocol: str) -> bytes:
        for name, metadata in self.protocols:
            if name == protocol:
                return metadata
        return b""


@dataclass(slots=True)
class CommittedOffset:
    offset: int
    leader_epoch: int
    metadata: str | None
    commit_ms: int


@dataclass(slots=True, eq=False)
class Group:
    group_id: str
    state: str = EMPTY
    generation: int = 0
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader: str | None = None
    members: dict[str, Member] = field(default_factory=dict)
    pending_members: set[str] = field(default_factory=set)  # ids handed out with MEMBER_ID_REQUIRED
    static_members: dict[str, str] = field(default_factory=dict)  # group.instance.id -> member id
    offsets: dict[tuple[str, int], CommittedOffset] = field(default_factory=dict)
    offsets_etag: str | None = None
    rebalance_task: asyncio.Task[None] | None = None
    join_not_before: float = 0.0
    commit_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def all_joined(self) -> bool:
        return all(m.join_waiter is not None for m in self.members.values())

    def rebalance_timeout(self) -> float:
        return max((m.rebalance_timeout_ms for m in self.members.values()), default=0) / 1000

    def select_protocol(self) -> str | None:
        members = list(self.members.values())
        if not members:
            return None
        common = set(name for name, _ in members[0].protocols)
        for m in members[1:]:
            common &= {name for name, _ in m.protocols}
        if not common:
            return None
        votes: Counter[str] = Counter()
        for m in members:
            votes[next(name for name, _ in m.protocols if name in common)] += 1
        # Most votes wins; ties go to the protocol the most members list earliest (deterministic).
        return max(votes, key=lambda name: (votes[name], -min(
            [i for m in members for i, (n, _) in enumerate(m.protocols) if n == name])))

    def supports(self, protocol_type: str, protocols: list[tuple[str, bytes]]) -> bool:
        if not self.members:
            return bool(protocols)
        if protocol_type != self.protocol_type:
            return False
        names = {name for name, _ in protocols}
        common = set.intersection(*({n for n, _ in m.protocols} for m in self.members.values()))
        return bool(names & common)


class GroupCoordinator:
    def __init__(self, store: GroupOffsetsStore, initial_rebalance_delay_ms: int = INITIAL_REBALANCE_DELAY_MS) -> None:
        self.store = store
        self.groups: dict[str, Group] = {}
        self.initial_delay = initial_rebalance_delay_ms / 1000
        self._expiry_task: asyncio.Task[None] | None = None
        self._loading: dict[str, asyncio.Future[tuple[dict[tuple[str, int], list[Any]], str | None]]] = {}

    async def start(self) -> None:
        self._expiry_task = asyncio.create_task(self._expire_loop(), name="keel-group-expiry")

    async def load(self, group_id: str, fresh: bool = False) -> Group:
        """The group, with its committed offsets read from the store when this coordinator first sees it.
        ``fresh`` re-reads the offsets of a group already held: brokers' views of who is alive differ for
        a moment, so another broker may have coordinated the group and taken commits meanwhile."""
        group = self.groups.get(group_id)
        if group is not None:
            if fresh:
                await self._reread_offsets(group)
            return group
        loading = self._loading.get(group_id)
        if loading is None:
            loading = self._loading[group_id] = asyncio.ensure_future(self.store.read(group_id))
        try:
            offsets, etag = await asyncio.shield(loading)
        finally:
            self._loading.pop(group_id, None)
        group = self.groups.get(group_id)
        if group is None:
            group = Group(group_id)
            group.offsets = {key: CommittedOffset(*value) for key, value in offsets.items()}
            group.offsets_etag = etag
            if etag is not None:  # a group nobody ever committed for does not exist yet
                self.groups[group_id] = group
        return group

    async def _reread_offsets(self, group: Group) -> None:
        async with group.commit_lock:
            offsets, etag = await self.store.read(group.group_id)
            group.offsets = {key: CommittedOffset(*value) for key, value in offsets.items()}
            group.offsets_etag = etag

    async def load_all(self, owned: Callable[[str], bool]) -> None:
        """Loads every stored group this coordinator owns (for ListGroups)."""
        for group_id in await self.store.list_ids():
            if owned(group_id) and group_id not in self.groups:
                await self.load(group_id)

    def forget_unowned(self, owned: Callable[[str], bool]) -> None:
        """Drops groups whose coordinator is now another broker; their members will rejoin there."""
        for group_id in [g for g in self.groups if not owned(g)]:
            group = self.groups.pop(group_id)
            if group.rebalance_task is not None:
                group.rebalance_task.cancel()
            for member in group.members.values():
                for waiter in (member.join_waiter, member.sync_waiter):
                    if waiter is not None and not waiter.done():
                        waiter.set_result(JoinResult(ErrorCode.NOT_COORDINATOR) if waiter is member.join_waiter
                                          else SyncResult(ErrorCode.NOT_COORDINATOR))
            log.info("group %s: coordination moved to another broker", group_id)

    async def stop(self) -> None:
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry_task
        for group in self.groups.values():
            if group.rebalance_task is not None:
                group.rebalance_task.cancel()

    def group(self, group_id: str) -> Group:
        group = self.groups.get(group_id)
        if group is None:
            group = self.groups[group_id] = Group(group_id)
        return group

    # Join ------------------------------------------------------------------------

    async def join(self, group_id: str, member_id: str, group_instance_id: str | None, client_id: str,
                   client_host: str, session_timeout_ms: int, rebalance_timeout_ms: int, protocol_type: str,
                   protocols: list[tuple[str, bytes]], require_known_member_id: bool) -> JoinResult:
        if not group_id:
            return JoinResult(ErrorCode.INVALID_GROUP_ID)
        if not MIN_SESSION_TIMEOUT_MS <= session_timeout_ms <= MAX_SESSION_TIMEOUT_MS:
            return JoinResult(ErrorCode.INVALID_SESSION_TIMEOUT)
        group = self.group(group_id)
        if group.state == DEAD:
            return JoinResult(ErrorCode.COORDINATOR_NOT_AVAILABLE)
        if not group.supports(protocol_type, protocols):
            return JoinResult(ErrorCode.INCONSISTENT_GROUP_PROTOCOL)

        if group_instance_id is not None:
            old_id = group.static_members.get(group_instance_id)
            if member_id and old_id is not None and member_id != old_id:
                return JoinResult(ErrorCode.FENCED_INSTANCE_ID)
            if not member_id or old_id is None:
                new_id = f"{group_instance_id}-{uuid.uuid4()}"
                leader_before = group.leader
                if old_id is not None:
                    self._replace_static(group, old_id, new_id)
                member_id = new_id
                group.static_members[group_instance_id] = member_id
                if old_id is not None and group.state == STABLE:
                    rejoined = self._static_rejoin(group, member_id, leader_before, session_timeout_ms,
                                                   rebalance_timeout_ms, protocols)
                    if rejoined is not None:
                        return rejoined
        elif not member_id:
            member_id = f"{client_id or 'member'}-{uuid.uuid4()}"
            if require_known_member_id:
                group.pending_members.add(member_id)
                return JoinResult(ErrorCode.MEMBER_ID_REQUIRED, member_id=member_id)
        elif member_id not in group.members and member_id not in group.pending_members:
            return JoinResult(ErrorCode.UNKNOWN_MEMBER_ID, member_id=member_id)

        group.pending_members.discard(member_id)
        member = group.members.get(member_id)
        if member is None:
            member = Member(member_id, group_instance_id, client_id, client_host, session_timeout_ms,
                            rebalance_timeout_ms, protocol_type, protocols)
            group.members[member_id] = member
            if group.leader is None:
                group.leader = member_id
            group.protocol_type = protocol_type
        else:
            member.protocols = protocols
            member.session_timeout_ms = session_timeout_ms
            member.rebalance_timeout_ms = rebalance_timeout_ms
        member.last_seen = time.monotonic()
        if member.join_waiter is not None and not member.join_waiter.done():
            member.join_waiter.set_result(JoinResult(ErrorCode.UNKNOWN_MEMBER_ID))  # superseded
        waiter: asyncio.Future[JoinResult] = asyncio.get_running_loop().create_future()
        member.join_waiter = waiter
        self._prepare_rebalance(group, f"member {member_id} joined")
        self._maybe_complete_join(group)
        return await waiter

    def _static_rejoin(self, group: Group, member_id: str, leader_before: str | None, session_timeout_ms: int,
                       rebalance_timeout_ms: int, protocols: list[tuple[str, bytes]]) -> JoinResult | None:
        """A known static member restarted while the group is stable (KIP-345): it gets its old
        assignment back in the current generation and nobody rebalances -- unless its new
        protocols would change the group's protocol, then None (the caller rebalances)."""
        member = group.members[member_id]
        member.protocols = protocols
        member.session_timeout_ms = session_timeout_ms
        member.rebalance_timeout_ms = rebalance_timeout_ms
        member.last_seen = time.monotonic()
        if group.select_protocol() != group.protocol_name:
            return None
        log.info("group %s: static member %s rejoined as %s without a rebalance", group.group_id,
                 member.group_instance_id, member_id)
        # The leader id from before the replacement, as Kafka answers: a restarted leader must not
        # compute a new assignment that a stable group would never hand out.
        return JoinResult(ErrorCode.NONE, group.generation, group.protocol_type, group.protocol_name,
                          leader_before or "", member_id, [])

    def _replace_static(self, group: Group, old_id: str, new_id: str) -> None:
        old = group.members.pop(old_id, None)
        if old is None:
            return
        old.member_id = new_id
        group.members[new_id] = old
        if group.leader == old_id:
            group.leader = new_id
        for waiter in (old.join_waiter, old.sync_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(JoinResult(ErrorCode.FENCED_INSTANCE_ID) if waiter is old.join_waiter
                                  else SyncResult(ErrorCode.FENCED_INSTANCE_ID))
        old.join_waiter = old.sync_waiter = None

    def _prepare_rebalance(self, group: Group, reason: str) -> None:
        if group.state == PREPARING:
            return
        if group.state == COMPLETING:
            for m in group.members.values():  # the leader's assignment is moot now
                if m.sync_waiter is not None and not m.sync_waiter.done():
                    m.sync_waiter.set_result(SyncResult(ErrorCode.REBALANCE_IN_PROGRESS))
                m.sync_waiter = None
        # An empty group waits a moment before its first generation so that members starting
        # together land in one generation (Kafka's group.initial.rebalance.delay.ms).
        now = time.monotonic()
        group.join_not_before = now + (self.initial_delay if group.state == EMPTY else 0.0)
        group.state = PREPARING
        log.info("group %s: preparing rebalance (%s)", group.group_id, reason)
        group.rebalance_task = asyncio.create_task(self._rebalance_deadline(group, now + group.rebalance_timeout()))

    async def _rebalance_deadline(self, group: Group, deadline: float) -> None:
        while group.state == PREPARING:
            now = time.monotonic()
            if now >= group.join_not_before and group.all_joined():
                self._complete_join(group)
                return
            if now >= max(deadline, group.join_not_before):
                for member_id, member in list(group.members.items()):
                    if member.join_waiter is None:
                        log.info("group %s: member %s did not rejoin in time", group.group_id, member_id)
                        self._remove_member(group, member_id)
                self._complete_join(group)
                return
            await asyncio.sleep(REBALANCE_POLL_SECONDS)

    def _maybe_complete_join(self, group: Group) -> None:
        if group.state == PREPARING and group.all_joined() and time.monotonic() >= group.join_not_before:
            self._complete_join(group)

    def _complete_join(self, group: Group) -> None:
        if group.state != PREPARING:
            return
        if group.rebalance_task is not None and group.rebalance_task is not asyncio.current_task():
            group.rebalance_task.cancel()
        group.rebalance_task = None
        if not group.members:
            group.generation += 1
            group.state = EMPTY
            group.protocol_name = None
            group.leader = None
            return
        group.generation += 1
        group.protocol_name = group.select_protocol()
        if group.leader not in group.members:
            group.leader = next(iter(group.members))
        group.state = COMPLETING
        log.info("group %s: generation %d with %d members, protocol %s, leader %s", group.group_id,
                 group.generation, len(group.members), group.protocol_name, group.leader)
        leader_view = [{"member_id": m.member_id, "group_instance_id": m.group_instance_id,
                        "metadata": m.metadata_for(group.protocol_name or "")} for m in group.members.values()]
        for member in group.members.values():
            member.last_seen = time.monotonic()
            waiter, member.join_waiter = member.join_waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(JoinResult(
                    ErrorCode.NONE, group.generation, group.protocol_type, group.protocol_name,
                    group.leader or "", member.member_id,
                    leader_view if member.member_id == group.leader else []))

    # Sync ------------------------------------------------------------------------

    async def sync(self, group_id: str, generation: int, member_id: str, group_instance_id: str | None,
                   assignments: dict[str, bytes]) -> SyncResult:
        group = self.groups.get(group_id)
        if group is None or member_id not in group.members:
            return SyncResult(ErrorCode.UNKNOWN_MEMBER_ID)
        error = self._check_static(group, member_id, group_instance_id)
        if error:
            return SyncResult(error)
        if generation != group.generation:
            return SyncResult(ErrorCode.ILLEGAL_GENERATION)
        member = group.members[member_id]
        member.last_seen = time.monotonic()
        if group.state == PREPARING:
            return SyncResult(ErrorCode.REBALANCE_IN_PROGRESS)
        if group.state == STABLE:
            return self._sync_result(group, member)
        if member_id == group.leader:
            for m in group.members.values():
                m.assignment = bytes(assignments.get(m.member_id, b""))
            group.state = STABLE
            for m in group.members.values():
                waiter, m.sync_waiter = m.sync_waiter, None
                if waiter is not None and not waiter.done():
                    waiter.set_result(self._sync_result(group, m))
            return self._sync_result(group, member)
        waiter = asyncio.get_running_loop().create_future()
        member.sync_waiter = waiter
        return await waiter

    def _sync_result(self, group: Group, member: Member) -> SyncResult:
        return SyncResult(ErrorCode.NONE, member.assignment, group.protocol_type, group.protocol_name)

    def _check_static(self, group: Group, member_id: str, group_instance_id: str | None) -> ErrorCode:
        if group_instance_id is not None and group.static_members.get(group_instance_id) != member_id:
            return ErrorCode.FENCED_INSTANCE_ID
        return ErrorCode.NONE

    # Heartbeat and leave ------------------------------------------------------------

    def heartbeat(self, group_id: str, generation: int, member_id: str, group_instance_id: str | None) -> ErrorCode:
        group = self.groups.get(group_id)
        if group is None or member_id not in group.members:
            return ErrorCode.UNKNOWN_MEMBER_ID
        error = self._check_static(group, member_id, group_instance_id)
        if error:
            return error
        group.members[member_id].last_seen = time.monotonic()
        if group.state == PREPARING:
            return ErrorCode.REBALANCE_IN_PROGRESS
        if generation != group.generation:
            return ErrorCode.ILLEGAL_GENERATION
        return ErrorCode.NONE

    def leave(self, group_id: str, members: list[tuple[str, str | None]]) -> tuple[ErrorCode, list[ErrorCode]]:
        group = self.groups.get(group_id)
        if group is None:
            return ErrorCode.NONE, [ErrorCode.UNKNOWN_MEMBER_ID] * len(members)
        results = []
        for member_id, instance_id in members:
            if instance_id is not None:
                known = group.static_members.get(instance_id)
                if known is None:
                    results.append(ErrorCode.UNKNOWN_MEMBER_ID)
                    continue
                if member_id and member_id != known:
                    results.append(ErrorCode.FENCED_INSTANCE_ID)
                    continue
                member_id = known
            if member_id not in group.members:
                results.append(ErrorCode.UNKNOWN_MEMBER_ID)
                continue
            log.info("group %s: member %s left", group_id, member_id)
            self._remove_member(group, member_id)
            results.append(ErrorCode.NONE)
            self._after_departure(group, f"member {member_id} left")
        return ErrorCode.NONE, results

    def _remove_member(self, group: Group, member_id: str) -> None:
        member = group.members.pop(member_id, None)
        if member is None:
            return
        if member.group_instance_id is not None and group.static_members.get(member.group_instance_id) == member_id:
            del group.static_members[member.group_instance_id]
        for waiter in (member.join_waiter, member.sync_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(JoinResult(ErrorCode.UNKNOWN_MEMBER_ID) if waiter is member.join_waiter
                                  else SyncResult(ErrorCode.UNKNOWN_MEMBER_ID))
        if group.leader == member_id:
            group.leader = next(iter(group.members), None)

    def _after_departure(self, group: Group, reason: str) -> None:
        if group.state in (STABLE, COMPLETING, EMPTY):
            if not group.members:
                group.state = EMPTY
                group.generation += 1
                group.protocol_name = None
                group.leader = None
                return
            self._prepare_rebalance(group, reason)
        self._maybe_complete_join(group)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_CHECK_SECONDS)
            now = time.monotonic()
            for group in list(self.groups.values()):
                for member_id, member in list(group.members.items()):
                    if member.join_waiter is not None:
                        continue  # waiting in a rebalance counts as alive
                    if now - member.last_seen > member.session_timeout_ms / 1000:
                        log.info("group %s: member %s session expired", group.group_id, member_id)
                        self._remove_member(group, member_id)
                        self._after_departure(group, f"member {member_id} expired")

    # Offsets ---------------------------------------------------------------------------

    def validate_commit(self, group_id: str, generation: int, member_id: str,
                        group_instance_id: str | None) -> ErrorCode:
        group = self.groups.get(group_id)
        if generation < 0 and not member_id:
            if group is not None and group.members:
                return ErrorCode.UNKNOWN_MEMBER_ID
            return ErrorCode.NONE  # a standalone (simple) consumer
        if group is None or member_id not in group.members:
            return ErrorCode.UNKNOWN_MEMBER_ID
        error = self._check_static(group, member_id, group_instance_id)
        if error:
            return error
        if generation != group.generation:
            return ErrorCode.ILLEGAL_GENERATION
        if group.state == COMPLETING:
            return ErrorCode.REBALANCE_IN_PROGRESS
        group.members[member_id].last_seen = time.monotonic()
        return ErrorCode.NONE

    async def commit(self, group_id: str, offsets: dict[tuple[str, int], CommittedOffset]) -> None:
        """Makes the offsets durable, then visible.  Raises on storage failure."""
        group = self.group(group_id)
        async with group.commit_lock:
            merged = dict(group.offsets)
            merged.update(offsets)
            while True:
                try:
                    group.offsets_etag = await self.store.write(
                        group_id, _offsets_doc(merged), group.offsets_etag)
                    break
                except ConflictError:
                    # Another coordinator wrote the document: merge onto theirs.  Where both took a
                    # commit for one partition, the one received last wins, as it would on one broker
                    # (a commit delayed by a slow store must not undo a later one).
                    current, etag = await self.store.read(group_id)
                    # The stored document and its ETag together: should the next write fail, the
                    # group still holds a consistent view (never an old map under a newer ETag).
                    group.offsets = {k: CommittedOffset(*v) for k, v in current.items()}
                    group.offsets_etag = etag
                    merged = dict(group.offsets)
                    for key, offset in offsets.items():
                        stored = merged.get(key)
                        if stored is None or stored.commit_ms <= offset.commit_ms:
                            merged[key] = offset
            group.offsets = merged

    def committed(self, group_id: str) -> dict[tuple[str, int], CommittedOffset]:
        group = self.groups.get(group_id)
        return group.offsets if group is not None else {}

    async def delete_offsets(self, group_id: str, keys: list[tuple[str, int]]) -> None:
        group = self.groups.get(group_id)
        if group is None:
            return
        async with group.commit_lock:
            merged = {k: v for k, v in group.offsets.items() if k not in set(keys)}
            group.offsets_etag = await self.store.write(group_id, _offsets_doc(merged),
                                                                     group.offsets_etag)
            group.offsets = merged

    async def delete_group(self, group_id: str) -> ErrorCode:
        group = self.groups.get(group_id)
        if group is None or (group.state == EMPTY and not group.offsets and group.generation == 0):
            return ErrorCode.GROUP_ID_NOT_FOUND
        if group.members:
            return ErrorCode.NON_EMPTY_GROUP
        async with group.commit_lock:
            await self.store.delete(group_id)
            group.state = DEAD
            del self.groups[group_id]
        return ErrorCode.NONE


def _offsets_doc(offsets: dict[tuple[str, int], CommittedOffset]) -> dict[tuple[str, int], list[Any]]:
    return {key: [o.offset, o.leader_epoch, o.metadata, o.commit_ms] for key, o in offsets.items()}
