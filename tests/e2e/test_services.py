"""Knative Services in a watched folder, through the real Envoy: edits make revisions.

The folder is read as `serve --config` reads it: the file source, then the serving
stage (Knative's controllers, locally) with its revision history in a state folder.
Echo apps answer as each revision; the EndpointSlices point at them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from knative_xds import synth as s
from knative_xds.serving import ServingSource, history_for
from knative_xds.sources.file import FileSource

from . import gateway as gateway_module

HOST = "web.default.example.com"
Obj = dict[str, Any]


def web_service(message: str, traffic: list[Obj] | None = None) -> Obj:
    container = {
        "image": "example.com/web",
        "env": [{"name": "MESSAGE", "value": message}],
    }
    spec: Obj = {"template": {"spec": {"containers": [container]}}}
    if traffic is not None:
        spec["traffic"] = traffic
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": spec,
    }


@pytest.fixture
def served_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The gateway's folder read through the serving stage, its history in a state folder."""
    with history_for(tmp_path / "state", tmp_path / "knative") as history:
        monkeypatch.setattr(
            gateway_module,
            "FileSource",
            lambda folder: ServingSource(FileSource(folder), history),
        )
        yield history


async def test_a_service_edit_creates_the_next_revision_and_a_traffic_block_splits_them(
    sotw_gateway, served_files
):
    gw = sotw_gateway
    ports = {name: await gw.app(name) for name in ("web-00001", "web-00002")}
    slices = [s.endpoint_slice(n, ["127.0.0.1"], p, suffix=n[-1]) for n, p in ports.items()]

    await gw.start([web_service("one"), slices[0]])
    await gw.wait_served(HOST, "web-00001")

    # A template edit: the next revision is made, and the Service's traffic follows it.
    gw.write([web_service("two"), *slices])
    await gw.wait_served(HOST, "web-00002")
    names = [e.name for e in served_files.revisions("default", "web")]
    assert names == ["web-00001", "web-00002"], "the history holds both"

    # A traffic block naming both: the earlier revision stayed, so the split can name it.
    split = [
        {"revisionName": "web-00001", "percent": 50},
        {"latestRevision": True, "percent": 50},
    ]
    gw.write([web_service("two", split), *slices])

    async def both_answer() -> bool:
        return set(await gw.tally(HOST, 40)) == {"web-00001", "web-00002"}

    await gw.wait_until(both_answer, what="both revisions to answer")
    counts: Counter = await gw.tally(HOST, 400)
    assert set(counts) == {"web-00001", "web-00002"}, counts
    # 50/50 over 400: each side's count is 200 +- 10 (one sd); 140 is six sds off.
    assert min(counts.values()) >= 140, counts
    names = [e.name for e in served_files.revisions("default", "web")]
    assert names == ["web-00001", "web-00002"], "traffic alone makes no revision"


async def test_a_bad_service_edit_keeps_the_last_good_revision_serving(sotw_gateway, served_files):
    gw = sotw_gateway
    ports = {name: await gw.app(name) for name in ("web-00001", "web-00002")}
    slices = [s.endpoint_slice(n, ["127.0.0.1"], p, suffix=n[-1]) for n, p in ports.items()]
    await gw.start([web_service("one"), *slices])
    await gw.wait_served(HOST, "web-00001")

    # Refused (traffic adds up to 60): nothing changes. Then a good edit: the first
    # change seen must be that one, numbered as if the bad edit never was.
    gw.write([web_service("two", [{"latestRevision": True, "percent": 60}]), *slices])
    assert gw.plane is not None

    def refused() -> bool:
        return any(p.field == "spec.traffic" for p in gw.plane.problems())

    await gw.wait_until(refused, what="the bad Service to be reported")
    [problem] = [p for p in gw.plane.problems() if p.field == "spec.traffic"]
    assert problem.origin.endswith("objects.yaml") and problem.key == "default/web"
    assert (await gw.get(HOST)).revision == "web-00001", "the last good output serves"

    gw.write([web_service("two"), *slices])
    await gw.wait_served(HOST, "web-00002")
    assert not refused(), "fixed: the problem is gone"


async def test_a_restart_keeps_the_revision_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    state, folder = tmp_path / "state", tmp_path / "knative"
    names = ("web-00001", "web-00002", "web-00003")

    async def run_once(message: str) -> str | None:
        # A new control plane and a new history on the same folders: a restart.
        with history_for(state, folder) as history:
            monkeypatch.setattr(
                gateway_module, "FileSource", lambda d: ServingSource(FileSource(d), history)
            )
            gw = gateway_module.Gateway(tmp_path)
            try:
                ports = {n: await gw.app(n) for n in names}
                slices = [
                    s.endpoint_slice(n, ["127.0.0.1"], p, suffix=n[-1]) for n, p in ports.items()
                ]
                await gw.start([web_service(message), *slices])
                answered: list[str | None] = []

                async def served() -> bool:
                    reply = await gw.get(HOST)
                    answered.append(reply.revision)
                    return reply.status == 200

                await gw.wait_until(served, what=f"{HOST} to answer")
                return answered[-1]
            finally:
                await gw.close()

    # Each run edits the template while nothing runs: the next number, never 00001 again.
    assert await run_once("one") == "web-00001"
    assert await run_once("two") == "web-00002"
    assert await run_once("three") == "web-00003"
