"""Topic configuration: which Kafka topic configs Keel knows, their defaults, and validation.

Configs are stored as strings in the topic's metadata document (as Kafka
stores them); ``TopicConfig`` is the parsed view the broker acts on.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.config import Settings

# name -> (default as Kafka reports it, honoured by Keel)
KNOWN_CONFIGS: dict[str, str] = {
    "cleanup.policy": "delete",
    "compression.type": "producer",
    "max.message.bytes": "",  # filled from settings
    "message.timestamp.type": "CreateTime",
    "retention.ms": "604800000",
    "retention.bytes": "-1",
    "segment.bytes": "",  # filled from settings
    "min.insync.replicas": "1",
}


class InvalidConfigError(ValueError):
    pass


def validate(configs: dict[str, str | None]) -> dict[str, str]:
    """The configs to store, or InvalidConfigError naming the first problem."""
    out: dict[str, str] = {}
    for name, value in configs.items():
        if name not in KNOWN_CONFIGS:
            raise InvalidConfigError(f"unknown or unsupported topic config {name!r}")
        if value is None:
            continue
        if name == "cleanup.policy" and value != "delete":
            raise InvalidConfigError("only cleanup.policy=delete is supported")
        if name == "compression.type" and value != "producer":
            raise InvalidConfigError("only compression.type=producer is supported (batches are stored as sent)")
        if name == "message.timestamp.type" and value not in ("CreateTime", "LogAppendTime"):
            raise InvalidConfigError("message.timestamp.type must be CreateTime or LogAppendTime")
        if name in ("max.message.bytes", "retention.ms", "retention.bytes", "segment.bytes", "min.insync.replicas"):
            try:
                int(value)
            except ValueError as exc:
                raise InvalidConfigError(f"{name} must be an integer") from exc
        out[name] = value
    return out


def effective(configs: dict[str, str], settings: Settings) -> dict[str, tuple[str, bool]]:
    """Every known config -> (value, is_default)."""
    defaults = dict(KNOWN_CONFIGS)
    defaults["max.message.bytes"] = str(settings.max_message_bytes)
    defaults["segment.bytes"] = str(settings.segment_bytes)
    return {name: (configs[name], False) if name in configs else (default, True)
            for name, default in defaults.items()}


@dataclass(frozen=True, slots=True)
class TopicConfig:
    max_message_bytes: int
    log_append_time: bool
    retention_ms: int
    retention_bytes: int

    @classmethod
    def from_configs(cls, configs: dict[str, str], settings: Settings) -> TopicConfig:
        values = {name: value for name, (value, _default) in effective(configs, settings).items()}
        return cls(
            max_message_bytes=int(values["max.message.bytes"]),
            log_append_time=values["message.timestamp.type"] == "LogAppendTime",
            retention_ms=int(values["retention.ms"]),
            retention_bytes=int(values["retention.bytes"]),
        )
