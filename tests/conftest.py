"""Shared pytest fixtures: broker child processes that are always killed at teardown.

Integration tests start real ``keel serve`` processes; a leaked process would
hold a port and keep writing to a deleted directory, so every fixture here
owns the processes it starts and SIGKILLs them however the test ended. When a
test fails, the tail of each broker's log is printed into the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.broker_process import BrokerProcess
from s3server import SeaweedFS

BrokerFactory = Callable[..., BrokerProcess]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"_keel_report_{report.when}", report)
    return report


def _failed(node: pytest.Item) -> bool:
    return any(getattr(getattr(node, f"_keel_report_{when}", None), "failed", False)
               for when in ("setup", "call"))


class _Brokers:
    """Starts brokers with data directories under one base path; kills them all on close."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.started: list[BrokerProcess] = []

    def __call__(self, *, name: str | None = None, start: bool = True, **kwargs: Any) -> BrokerProcess:
        name = name or f"broker{len(self.started)}"
        proc = BrokerProcess(self.base / name / "data", log_path=self.base / name / "broker.log", **kwargs)
        self.started.append(proc)
        return proc.start() if start else proc

    def close(self, report_logs: bool) -> None:
        for proc in self.started:
            proc.kill()
            if report_logs:
                print(proc.log_tail())


@pytest.fixture
def broker_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerFactory]:
    """``broker_factory(extra_args=[...], env={...}, start=True)`` -> a started BrokerProcess."""
    brokers = _Brokers(tmp_path)
    try:
        yield brokers
    finally:
        brokers.close(report_logs=_failed(request.node))


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> BrokerProcess:
    """A fresh broker with an empty data directory, for this test only."""
    return broker_factory(name="broker")


@pytest.fixture(scope="module")
def module_broker(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One broker shared by a whole test module; tests must use their own topic names."""
    brokers = _Brokers(tmp_path_factory.mktemp("module-broker"))
    proc = brokers(name="broker")
    try:
        yield proc
    finally:
        brokers.close(report_logs=False)


@pytest.fixture(autouse=True)
def _module_broker_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the shared broker's log tail under each failing test that used it."""
    shared = request.getfixturevalue("module_broker") if "module_broker" in request.fixturenames else None
    yield
    if shared is not None and _failed(request.node):
        print(shared.log_tail())


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One real S3 server (SeaweedFS) for the whole session; tests use their own bucket prefixes."""
    with SeaweedFS(tmp_path_factory.mktemp("weed")) as server:
        yield server
