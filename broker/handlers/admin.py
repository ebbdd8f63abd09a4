"""Admin APIs: CreatePartitions, DescribeConfigs, AlterConfigs, IncrementalAlterConfigs, DescribeCluster.

Topic changes are read-modify-write cycles on the topic's metadata document
with compare-and-swap (a lost race re-reads and re-decides), and only once the
document is stored does this broker apply the change in memory, so a
``kill -9`` at any point leaves either the old or the new topic, never a mix.
Broker settings come from flags, environment and TOML only: they can be
described but not altered.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from weakref import WeakKeyDictionary

from broker import topic_configs
from broker.config import Settings
from broker.core import Broker, valid_topic_name
from broker.handlers.base import Api, Message, RequestContext
from broker.handlers.metadata import broker_list
from broker.handlers.topics import MAX_PARTITIONS
from broker.topic_configs import TopicConfig
from metadata.store import ConflictError, TopicRecord
from objectstore.base import NotFound, ObjectStoreError
from protocol.errors import ErrorCode

log = logging.getLogger("keel.admin")

# ConfigResource types
TOPIC = 2
BROKER = 4

# ConfigSource ids
DYNAMIC_TOPIC_CONFIG = 1
STATIC_BROKER_CONFIG = 4
DEFAULT_CONFIG = 5

# ConfigType ids
BOOLEAN, STRING, INT, LONG, LIST = 1, 2, 3, 5, 7

# IncrementalAlterConfigs operations
SET, DELETE, APPEND, SUBTRACT = 0, 1, 2, 3

# Topic config -> (the broker config that supplies its default, config type)
TOPIC_CONFIG_INFO: dict[str, tuple[str, int]] = {
    "cleanup.policy": ("log.cleanup.policy", LIST),
    "compression.type": ("compression.type", STRING),
    "max.message.bytes": ("message.max.bytes", INT),
    "message.timestamp.type": ("log.message.timestamp.type", STRING),
    "retention.ms": ("log.retention.ms", LONG),
    "retention.bytes": ("log.retention.bytes", LONG),
    "segment.bytes": ("log.segment.bytes", INT),
    "min.insync.replicas": ("min.insync.replicas", INT),
}
_DEFAULT_SETTINGS = Settings()
_UPDATE_LOCKS: WeakKeyDictionary[Broker, asyncio.Lock] = WeakKeyDictionary()


class Rejected(Exception):
    """A resource's change is refused with this error code and message."""

    def __init__(self, error: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.error = error
        self.message = message


# Storage: compare-and-swap on the topic document ------------------------------------


async def update_topic(broker: Broker, name: str, change: Callable[[TopicRecord], None],
                       validate_only: bool) -> TopicRecord:
    """Applies ``change`` to the stored topic with CAS, then to this broker's view.

    ``change`` may raise ``Rejected``; it runs again on a fresh copy after a lost race.
    """
    unknown = Rejected(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"The topic '{name}' does not exist.")
    if not valid_topic_name(name) or name not in broker.topics:
        raise unknown
    lock = _UPDATE_LOCKS.setdefault(broker, asyncio.Lock())
    async with lock:
        while True:
            try:
                record, etag = await broker.meta.read_topic(name)
            except NotFound:
                raise unknown from None
            current = broker.topics.get(name)
            if current is None or current.topic_id != record.topic_id:
                raise unknown
            change(record)
            if validate_only:
                return record
            try:
                await broker.meta.update_topic(record, etag)
            except ConflictError:
                log.info("topic %s changed concurrently; retrying", name)
                continue
            await _apply(broker, current, record)
            return record


async def _apply(broker: Broker, current: TopicRecord, stored: TopicRecord) -> None:
    current.configs = dict(stored.configs)
    broker.topic_configs[current.name] = TopicConfig.from_configs(stored.configs, broker.settings)
    if stored.partitions > current.partitions:
        await broker.add_partitions(current.name, stored.partitions)


async def _guarded(broker: Broker, name: str, change: Callable[[TopicRecord], None],
                   validate_only: bool) -> tuple[ErrorCode, str | None]:
    try:
        await update_topic(broker, name, change, validate_only)
    except Rejected as exc:
        return exc.error, exc.message
    except ObjectStoreError as exc:
        log.error("updating topic %s failed: %s", name, exc)
        return ErrorCode.UNKNOWN_SERVER_ERROR, f"metadata store error: {exc}"
    return ErrorCode.NONE, None


# CreatePartitions ----------------------------------------------------------------------


def _partition_change(count: int, assignments: list[Message] | None, broker_id: int,
                      ) -> Callable[[TopicRecord], None]:
    def change(record: TopicRecord) -> None:
        current = record.partitions
        if count < current:
            raise Rejected(ErrorCode.INVALID_PARTITIONS,
                           f"Topic currently has {current} partitions, which is higher than the requested {count}.")
        if count == current:
            raise Rejected(ErrorCode.INVALID_PARTITIONS, f"Topic already has {current} partitions.")
        if count > MAX_PARTITIONS:
            raise Rejected(ErrorCode.INVALID_PARTITIONS, f"partition count must be at most {MAX_PARTITIONS}")
        if assignments is not None:
            if len(assignments) != count - current:
                raise Rejected(ErrorCode.INVALID_REPLICA_ASSIGNMENT,
                               f"Increasing the number of partitions by {count - current} but "
                               f"{len(assignments)} assignments provided.")
            for assignment in assignments:
                ids = assignment["broker_ids"]
                if not ids or any(i != broker_id for i in ids):
                    raise Rejected(ErrorCode.INVALID_REPLICA_ASSIGNMENT,
                                   f"replica assignment {ids} must name broker {broker_id} only")
        record.partitions = count
    return change


async def create_partitions(ctx: RequestContext, request: Message) -> Message:
    broker = ctx.broker
    names = Counter(topic["name"] for topic in request["topics"])
    results: list[Message] = []
    reported: set[str] = set()
    for topic in request["topics"]:
        name = topic["name"]
        if names[name] > 1:
            if name not in reported:
                reported.add(name)
                results.append({"name": name, "error_code": ErrorCode.INVALID_REQUEST,
                                "error_message": "Duplicate topic in request."})
            continue
        change = _partition_change(topic["count"], topic["assignments"], broker.settings.broker_id)
        error, message = await _guarded(broker, name, change, request["validate_only"])
        if error == ErrorCode.NONE and not request["validate_only"]:
            log.info("topic %s: partition count raised to %d", name, topic["count"])
        results.append({"name": name, "error_code": error, "error_message": message})
    return {"throttle_time_ms": 0, "results": results}


# DescribeConfigs -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    name: str
    value: str
    default: str
    config_type: int

    @property
    def source(self) -> int:
        return DEFAULT_CONFIG if self.value == self.default else STATIC_BROKER_CONFIG

    def synonyms(self) -> list[Message]:
        out = []
        if self.source == STATIC_BROKER_CONFIG:
            out.append({"name": self.name, "value": self.value, "source": STATIC_BROKER_CONFIG})
        out.append({"name": self.name, "value": self.default, "source": DEFAULT_CONFIG})
        return out


def broker_configs(settings: Settings) -> dict[str, BrokerConfig]:
    """The broker-level settings Keel really has, under Kafka's names."""
    def setting(name: str, attr: str, kind: int) -> BrokerConfig:
        def text(value: object) -> str:
            return str(value).lower() if isinstance(value, bool) else str(value)
        return BrokerConfig(name, text(getattr(settings, attr)), text(getattr(_DEFAULT_SETTINGS, attr)), kind)

    def fixed(name: str, value: str, kind: int) -> BrokerConfig:
        return BrokerConfig(name, value, value, kind)

    defaults = topic_configs.KNOWN_CONFIGS
    entries = [
        setting("broker.id", "broker_id", INT),
        setting("auto.create.topics.enable", "auto_create_topics", BOOLEAN),
        setting("num.partitions", "default_partitions", INT),
        fixed("default.replication.factor", "1", INT),
        setting("message.max.bytes", "max_message_bytes", INT),
        setting("socket.request.max.bytes", "max_request_bytes", INT),
        setting("log.segment.bytes", "segment_bytes", INT),
        fixed("log.retention.ms", defaults["retention.ms"], LONG),
        fixed("log.retention.bytes", defaults["retention.bytes"], LONG),
        fixed("log.cleanup.policy", defaults["cleanup.policy"], LIST),
        fixed("log.message.timestamp.type", defaults["message.timestamp.type"], STRING),
        fixed("compression.type", defaults["compression.type"], STRING),
        fixed("min.insync.replicas", defaults["min.insync.replicas"], INT),
    ]
    return {entry.name: entry for entry in entries}


def _entry(name: str, value: str, read_only: bool, source: int, config_type: int,
           synonyms: list[Message], include_synonyms: bool) -> Message:
    return {"name": name, "value": value, "read_only": read_only, "config_source": source,
            "is_sensitive": False, "synonyms": synonyms if include_synonyms else [],
            "config_type": config_type, "documentation": None}


def describe_topic(broker: Broker, record: TopicRecord, keys: list[str] | None,
                   include_synonyms: bool) -> list[Message]:
    by_broker = broker_configs(broker.settings)
    out = []
    for name, (value, is_default) in topic_configs.effective(record.configs, broker.settings).items():
        if keys is not None and name not in keys:
            continue
        synonym_name, config_type = TOPIC_CONFIG_INFO[name]
        supplier = by_broker.get(synonym_name)
        synonyms = [] if is_default else [{"name": name, "value": value, "source": DYNAMIC_TOPIC_CONFIG}]
        if supplier is not None:
            synonyms += supplier.synonyms()
        if not is_default:
            source = DYNAMIC_TOPIC_CONFIG
        else:
            source = supplier.source if supplier is not None else DEFAULT_CONFIG
        out.append(_entry(name, value, False, source, config_type, synonyms, include_synonyms))
    return out


def describe_broker(broker: Broker, keys: list[str] | None, include_synonyms: bool) -> list[Message]:
    return [_entry(c.name, c.value, True, c.source, c.config_type, c.synonyms(), include_synonyms)
            for c in broker_configs(broker.settings).values() if keys is None or c.name in keys]


def _broker_resource_error(broker: Broker, name: str) -> str | None:
    if name == "" or name == str(broker.settings.broker_id):
        return None
    return f"Unexpected broker id, expected {broker.settings.broker_id} or empty string, but received {name}"


async def describe_configs(ctx: RequestContext, request: Message) -> Message:
    broker = ctx.broker
    include_synonyms = bool(request.get("include_synonyms"))
    results = []
    for resource in request["resources"]:
        rtype, name, keys = resource["resource_type"], resource["resource_name"], resource["configuration_keys"]
        result: Message = {"error_code": ErrorCode.NONE, "error_message": None, "resource_type": rtype,
                           "resource_name": name, "configs": []}
        if rtype == TOPIC:
            record = broker.topics.get(name)
            if not valid_topic_name(name):
                result.update(error_code=ErrorCode.INVALID_TOPIC_EXCEPTION, error_message=f"illegal topic name {name!r}")
            elif record is None:
                result.update(error_code=ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                              error_message=f"The topic '{name}' does not exist.")
            else:
                result["configs"] = describe_topic(broker, record, keys, include_synonyms)
        elif rtype == BROKER:
            problem = _broker_resource_error(broker, name)
            if problem is not None:
                result.update(error_code=ErrorCode.INVALID_REQUEST, error_message=problem)
            elif name:  # "" asks for cluster-wide dynamic defaults, and Keel has none
                result["configs"] = describe_broker(broker, keys, include_synonyms)
        else:
            result.update(error_code=ErrorCode.INVALID_REQUEST,
                          error_message=f"resource type {rtype} is not supported by Keel")
        results.append(result)
    return {"throttle_time_ms": 0, "results": results}


# AlterConfigs and IncrementalAlterConfigs --------------------------------------------------

BROKER_CONFIGS_STATIC = "broker configs are static in Keel; use flags/env/TOML"


def _response(resource: Message, error: ErrorCode = ErrorCode.NONE, message: str | None = None) -> Message:
    return {"error_code": error, "error_message": message, "resource_type": resource["resource_type"],
            "resource_name": resource["resource_name"]}


def _validated(configs: dict[str, str | None]) -> dict[str, str]:
    try:
        return topic_configs.validate(configs)
    except topic_configs.InvalidConfigError as exc:
        raise Rejected(ErrorCode.INVALID_CONFIG, str(exc)) from None


def _check_names(configs: list[Message]) -> None:
    counts = Counter(c["name"] for c in configs)
    duplicates = sorted(name for name, n in counts.items() if n > 1)
    if duplicates:
        raise Rejected(ErrorCode.INVALID_REQUEST, f"Error due to duplicate config keys: {', '.join(duplicates)}")
    for name in counts:
        if name not in topic_configs.KNOWN_CONFIGS:
            raise Rejected(ErrorCode.INVALID_CONFIG, f"unknown or unsupported topic config {name!r}")


async def _alter(ctx: RequestContext, request: Message,
                 plan: Callable[[Settings, list[Message]], Callable[[TopicRecord], None]]) -> Message:
    """Shared by both alter APIs: per-resource checks, then ``plan``'s change applied with CAS."""
    broker = ctx.broker
    seen = Counter((r["resource_type"], r["resource_name"]) for r in request["resources"])
    responses = []
    for resource in request["resources"]:
        rtype, name = resource["resource_type"], resource["resource_name"]
        if seen[(rtype, name)] > 1:
            responses.append(_response(resource, ErrorCode.INVALID_REQUEST, "Duplicate resource in request."))
        elif rtype == BROKER:
            responses.append(_response(resource, ErrorCode.INVALID_REQUEST, BROKER_CONFIGS_STATIC))
        elif rtype != TOPIC:
            responses.append(_response(resource, ErrorCode.INVALID_REQUEST,
                                       f"resource type {rtype} is not supported by Keel"))
        else:
            try:
                _check_names(resource["configs"])
                change = plan(broker.settings, resource["configs"])
            except Rejected as exc:
                responses.append(_response(resource, exc.error, exc.message))
                continue
            error, message = await _guarded(broker, name, change, request["validate_only"])
            if error == ErrorCode.NONE and not request["validate_only"]:
                log.info("topic %s: configs now %s", name, broker.topics[name].configs)
            responses.append(_response(resource, error, message))
    return {"throttle_time_ms": 0, "responses": responses}


def _replace_plan(settings: Settings, configs: list[Message]) -> Callable[[TopicRecord], None]:
    """AlterConfigs: the listed configs become the whole set; the rest revert to defaults."""
    wanted = _validated({c["name"]: c["value"] for c in configs})

    def change(record: TopicRecord) -> None:
        record.configs = dict(wanted)
    return change


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _incremental_plan(settings: Settings, configs: list[Message]) -> Callable[[TopicRecord], None]:
    for c in configs:
        op, name = c["config_operation"], c["name"]
        if op not in (SET, DELETE, APPEND, SUBTRACT):
            raise Rejected(ErrorCode.INVALID_REQUEST, f"unknown config operation {op} for {name}")
        if op in (APPEND, SUBTRACT) and TOPIC_CONFIG_INFO[name][1] != LIST:
            verb = "append" if op == APPEND else "subtract"
            raise Rejected(ErrorCode.INVALID_CONFIG, f"Config value {verb} is not allowed for config key: {name}")
        if op != DELETE and c["value"] is None:
            raise Rejected(ErrorCode.INVALID_REQUEST, f"Null value not supported for : {name}")

    def change(record: TopicRecord) -> None:
        new = dict(record.configs)
        current = topic_configs.effective(record.configs, settings)
        for c in configs:
            op, name, value = c["config_operation"], c["name"], c["value"]
            if op == SET:
                new[name] = value
            elif op == DELETE:
                new.pop(name, None)
            else:
                items = _split(new[name] if name in new else current[name][0])
                given = _split(value)
                if op == APPEND:
                    items += [item for item in given if item not in items]
                else:
                    items = [item for item in items if item not in given]
                new[name] = ",".join(items)
        record.configs = _validated(dict(new))
    return change


async def alter_configs(ctx: RequestContext, request: Message) -> Message:
    return await _alter(ctx, request, _replace_plan)


async def incremental_alter_configs(ctx: RequestContext, request: Message) -> Message:
    return await _alter(ctx, request, _incremental_plan)


# DescribeCluster -------------------------------------------------------------------------

BROKERS_ENDPOINT = 1
CONTROLLERS_ENDPOINT = 2


async def describe_cluster(ctx: RequestContext, request: Message) -> Message:
    endpoint = request.get("endpoint_type", BROKERS_ENDPOINT) if ctx.version >= 1 else BROKERS_ENDPOINT
    response: Message = {"throttle_time_ms": 0, "error_code": ErrorCode.NONE, "error_message": None,
                         "endpoint_type": endpoint, "cluster_id": ctx.broker.cluster_id,
                         "controller_id": ctx.broker.settings.broker_id, "brokers": []}
    if endpoint == CONTROLLERS_ENDPOINT:
        response.update(error_code=ErrorCode.MISMATCHED_ENDPOINT_TYPE,
                        error_message="The request was sent to a broker endpoint, but controllers were requested.")
    elif endpoint != BROKERS_ENDPOINT:
        response.update(error_code=ErrorCode.UNSUPPORTED_ENDPOINT_TYPE,
                        error_message=f"endpoint type {endpoint} is not supported")
    else:
        response["brokers"] = [{"broker_id": b["node_id"], "host": b["host"], "port": b["port"], "rack": b["rack"]}
                               for b in broker_list(ctx)]
    return response


CREATE_PARTITIONS = Api(37, "CreatePartitions", 0, 3, create_partitions)
DESCRIBE_CONFIGS = Api(32, "DescribeConfigs", 1, 4, describe_configs)
ALTER_CONFIGS = Api(33, "AlterConfigs", 0, 2, alter_configs)
INCREMENTAL_ALTER_CONFIGS = Api(44, "IncrementalAlterConfigs", 0, 1, incremental_alter_configs)
DESCRIBE_CLUSTER = Api(60, "DescribeCluster", 0, 1, describe_cluster)
APIS = (CREATE_PARTITIONS, DESCRIBE_CONFIGS, ALTER_CONFIGS, INCREMENTAL_ALTER_CONFIGS, DESCRIBE_CLUSTER)
