"""The ``keel`` command: ``keel serve`` runs a broker (and later sub-commands inspect a cluster)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Sequence

from broker.config import Settings, build_parser, load_settings

log = logging.getLogger("keel")
GIL_SWITCH_SECONDS = 0.0005
SHUTDOWN_GRACE_SECONDS = 15.0  # beyond shutdown_timeout_ms: the final flush, WAL close, lease release


async def serve(settings: Settings) -> int:
    from broker.core import Broker  # noqa: PLC0415 - keep `keel --help` fast
    from broker.server import KafkaServer  # noqa: PLC0415

    broker = Broker(settings)
    await broker.start()
    server = KafkaServer(broker)
    await server.start()
    # Everything allocated so far (modules, settings, the recovered state) lives as long as the process:
    # out of the collector's way, so that a full collection does not walk it again under load.
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    failed = asyncio.create_task(_wait_failed(broker))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([failed, stopper], return_when=asyncio.FIRST_COMPLETED)
    log.info("shutting down")
    try:
        await asyncio.wait_for(_stop(server, broker), settings.shutdown_timeout_ms / 1000 + SHUTDOWN_GRACE_SECONDS)
    except TimeoutError:
        # Everything acknowledged is in the WAL: exiting now is no worse than a crash (the lease
        # expires and the partitions' next leaders replay it), and better than hanging forever.
        log.warning("graceful shutdown did not finish in time; exiting, unflushed data stays in the WAL")
    failed.cancel()
    stopper.cancel()
    return 1 if broker.failed is not None else 0


async def _stop(server: object, broker: object) -> None:
    await server.stop()  # type: ignore[attr-defined]
    await broker.stop()  # type: ignore[attr-defined]


async def _wait_failed(broker: object) -> None:
    while getattr(broker, "failed", None) is None:
        await asyncio.sleep(0.2)


def _run(coro_factory: object, settings: Settings) -> int:
    try:
        import uvloop  # noqa: PLC0415

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        return int(runner(serve(settings)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keel", description="Keel: a Kafka-compatible broker on object storage")
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser(commands.add_parser("serve", help="run a broker"))
    build_parser(commands.add_parser(
        "cluster", help="show brokers, the controller, and each partition's leader and epoch "
                        "(reads the same store as `serve` with the same settings)"))
    commands.add_parser("bench", help="run the end-to-end benchmark (python -m bench --help for its options)",
                        add_help=False)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from bench.harness import main as bench_main  # noqa: PLC0415

        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    settings = load_settings(args)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        # Worker threads (segment layout, local-store I/O) hold the GIL for at most this long before the
        # event loop gets it back; Python's default of 5 ms would show up directly in produce latency.
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        return _run(serve, settings)
    if args.command == "cluster":
        from broker.status import print_cluster  # noqa: PLC0415

        return asyncio.run(print_cluster(settings))
    return 2


if __name__ == "__main__":
    sys.exit(main())
