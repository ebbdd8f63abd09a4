"""Consumer-group membership APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
ListGroups, DescribeGroups and DeleteGroups.  The state machine lives in ``broker.group_coordinator``."""

from __future__ import annotations

from broker.handlers.base import Api, Message, RequestContext
from objectstore.base import ObjectStoreError
from protocol.errors import ErrorCode

GROUP_KEY_TYPE = 0


async def coordinated(ctx: RequestContext, group_id: str, fresh_offsets: bool = False) -> ErrorCode:
    """NOT_COORDINATOR unless this broker coordinates the group (whose state is then loaded;
    ``fresh_offsets`` re-reads its committed offsets from the store)."""
    if not ctx.broker.coordinates(group_id):
        return ErrorCode.NOT_COORDINATOR
    try:
        await ctx.broker.groups.load(group_id, fresh=fresh_offsets)
    except ObjectStoreError:
        return ErrorCode.COORDINATOR_NOT_AVAILABLE  # the group's stored offsets cannot be read now: retry
    return ErrorCode.NONE


def _find(ctx: RequestContext, key: str, key_type: int) -> Message:
    if key_type != GROUP_KEY_TYPE:
        return {"error_code": ErrorCode.COORDINATOR_NOT_AVAILABLE, "node_id": -1, "host": "", "port": -1,
                "error_message": "Keel coordinates consumer groups only (no transactions)"}
    coordinator = ctx.broker.coordinator_for(key)
    if coordinator is None:
        return {"error_code": ErrorCode.COORDINATOR_NOT_AVAILABLE, "node_id": -1, "host": "", "port": -1,
                "error_message": "no live broker"}
    return {"error_code": ErrorCode.NONE, "node_id": coordinator.broker_id, "host": coordinator.host,
            "port": coordinator.port, "error_message": None}


async def find_coordinator(ctx: RequestContext, request: Message) -> Message:
    key_type = request.get("key_type", GROUP_KEY_TYPE)
    if ctx.version >= 4:
        return {"throttle_time_ms": 0,
                "coordinators": [{"key": key, **_find(ctx, key, key_type)} for key in request["coordinator_keys"]]}
    return {"throttle_time_ms": 0, **_find(ctx, request["key"], key_type)}


async def join_group(ctx: RequestContext, request: Message) -> Message:
    error = await coordinated(ctx, request["group_id"])
    if error:
        return {"throttle_time_ms": 0, "error_code": error, "generation_id": -1, "member_id": request["member_id"],
                "leader": "", "members": []}
    result = await ctx.broker.groups.join(
        group_id=request["group_id"],
        member_id=request["member_id"],
        group_instance_id=request.get("group_instance_id"),
        client_id=ctx.header.client_id or "",
        client_host=ctx.peer.rsplit(":", 1)[0],
        session_timeout_ms=request["session_timeout_ms"],
        rebalance_timeout_ms=request["rebalance_timeout_ms"] if ctx.version >= 1 else request["session_timeout_ms"],
        protocol_type=request["protocol_type"],
        protocols=[(p["name"], bytes(p["metadata"])) for p in request["protocols"]],
        require_known_member_id=ctx.version >= 4,
    )
    return {"throttle_time_ms": 0, "error_code": result.error, "generation_id": result.generation,
            "protocol_type": result.protocol_type, "protocol_name": result.protocol_name, "leader": result.leader,
            "member_id": result.member_id, "members": result.members}


async def sync_group(ctx: RequestContext, request: Message) -> Message:
    error = await coordinated(ctx, request["group_id"])
    if error:
        return {"throttle_time_ms": 0, "error_code": error, "assignment": b""}
    result = await ctx.broker.groups.sync(
        request["group_id"], request["generation_id"], request["member_id"], request.get("group_instance_id"),
        {a["member_id"]: bytes(a["assignment"]) for a in request["assignments"]})
    return {"throttle_time_ms": 0, "error_code": result.error, "protocol_type": result.protocol_type,
            "protocol_name": result.protocol_name, "assignment": result.assignment}


async def heartbeat(ctx: RequestContext, request: Message) -> Message:
    error = await coordinated(ctx, request["group_id"])
    if error:
        return {"throttle_time_ms": 0, "error_code": error}
    error = ctx.broker.groups.heartbeat(request["group_id"], request["generation_id"], request["member_id"],
                                        request.get("group_instance_id"))
    return {"throttle_time_ms": 0, "error_code": error}


async def leave_group(ctx: RequestContext, request: Message) -> Message:
    error = await coordinated(ctx, request["group_id"])
    if error:
        return {"throttle_time_ms": 0, "error_code": error, "members": []}
    if ctx.version <= 2:
        members = [(request["member_id"], None)]
    else:
        members = [(m["member_id"], m.get("group_instance_id")) for m in request["members"]]
    error, results = ctx.broker.groups.leave(request["group_id"], members)
    if ctx.version <= 2:
        return {"throttle_time_ms": 0, "error_code": results[0] if results else error}
    return {"throttle_time_ms": 0, "error_code": error, "members": [
        {"member_id": member_id, "group_instance_id": instance_id, "error_code": code}
        for (member_id, instance_id), code in zip(members, results, strict=True)]}


async def list_groups(ctx: RequestContext, request: Message) -> Message:
    await ctx.broker.groups.load_all(ctx.broker.coordinates)
    states = {s.lower() for s in request.get("states_filter") or []}
    types = {t.lower() for t in request.get("types_filter") or []}
    groups = []
    for group in ctx.broker.groups.groups.values():
        if states and group.state.lower() not in states:
            continue
        if types and "classic" not in types:
            continue
        groups.append({"group_id": group.group_id, "protocol_type": group.protocol_type or "",
                       "group_state": group.state, "group_type": "classic"})
    return {"throttle_time_ms": 0, "error_code": ErrorCode.NONE, "groups": groups}


async def describe_groups(ctx: RequestContext, request: Message) -> Message:
    out = []
    for group_id in request["groups"]:
        error = await coordinated(ctx, group_id)
        if error:
            out.append({"error_code": error, "group_id": group_id, "group_state": "", "protocol_type": "",
                        "protocol_data": "", "members": []})
            continue
        group = ctx.broker.groups.groups.get(group_id)
        if group is None:
            out.append({"error_code": ErrorCode.NONE, "group_id": group_id, "group_state": "Dead",
                        "protocol_type": "", "protocol_data": "", "members": []})
            continue
        out.append({
            "error_code": ErrorCode.NONE, "group_id": group_id, "group_state": group.state,
            "protocol_type": group.protocol_type or "", "protocol_data": group.protocol_name or "",
            "members": [{"member_id": m.member_id, "group_instance_id": m.group_instance_id,
                         "client_id": m.client_id, "client_host": m.client_host,
                         "member_metadata": m.metadata_for(group.protocol_name or ""),
                         "member_assignment": m.assignment} for m in group.members.values()],
        })
    return {"throttle_time_ms": 0, "groups": out}


async def delete_groups(ctx: RequestContext, request: Message) -> Message:
    results = []
    for group_id in request["groups_names"]:
        error = await coordinated(ctx, group_id)
        if not error:
            error = await ctx.broker.groups.delete_group(group_id)
        results.append({"group_id": group_id, "error_code": error})
    return {"throttle_time_ms": 0, "results": results}


FIND_COORDINATOR = Api(10, "FindCoordinator", 0, 6, find_coordinator)
JOIN_GROUP = Api(11, "JoinGroup", 0, 9, join_group)
HEARTBEAT = Api(12, "Heartbeat", 0, 4, heartbeat)
LEAVE_GROUP = Api(13, "LeaveGroup", 0, 5, leave_group)
SYNC_GROUP = Api(14, "SyncGroup", 0, 5, sync_group)
DESCRIBE_GROUPS = Api(15, "DescribeGroups", 0, 5, describe_groups)
LIST_GROUPS = Api(16, "ListGroups", 0, 5, list_groups)
DELETE_GROUPS = Api(42, "DeleteGroups", 0, 2, delete_groups)
APIS = (FIND_COORDINATOR, JOIN_GROUP, HEARTBEAT, LEAVE_GROUP, SYNC_GROUP, DESCRIBE_GROUPS, LIST_GROUPS, DELETE_GROUPS)
