"""`knative-xds status` against a live control plane, and when there is none."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from knative_xds import cli
from knative_xds.resources import CLUSTER, LISTENER

from .protocol.conftest import Harness, start_harness


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = await start_harness()
    try:
        yield h
    finally:
        await h.close()


async def status(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    # In a thread: the command blocks, and the server it asks runs on this loop.
    code = await asyncio.to_thread(cli.main, ["status", *args])
    out, err = capsys.readouterr()
    return code, out, err


async def connected(h: Harness) -> tuple[str, str]:
    """A SotW gateway that accepted the clusters and rejected the listeners."""
    sotw = h.sotw("gw-sotw")
    await sotw.request(CLUSTER)
    clusters = await sotw.recv(CLUSTER)
    await sotw.ack(clusters)
    await sotw.request(LISTENER)
    listeners = await sotw.recv(LISTENER)
    await sotw.nack(listeners, "listener external: port\nin use")
    await h.caught_up(sotw)
    delta = h.delta("gw-delta")
    await delta.request(CLUSTER)
    await delta.recv(CLUSTER)
    await h.caught_up(delta)
    return clusters.version_info, listeners.version_info


async def test_the_table_shows_each_gateway_and_type(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    clusters, listeners = await connected(harness)
    code, out, _ = await status(capsys, "--xds-address", harness.address)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "GATEWAY", "ADDRESS", "PROTOCOL", "TYPE", "STATUS", "SENT", "ACKED", "LAST", "NACK",
    ]  # fmt: skip
    rows = [line.split() for line in lines[1:]]
    # The Delta gateway sorts first; its clusters are sent and not yet answered.
    assert rows[0][0] == "gw-delta" and rows[0][1].startswith("127.0.0.1:")
    assert rows[0][2:] == ["delta", "clusters", "STALE", clusters, "-", "-"]
    assert rows[1][0] == "gw-sotw"
    assert rows[1][2:] == ["sotw", "clusters", "SYNCED", clusters, clusters, "-"]
    # Its own columns only once; the NACK on one line, whatever its newlines.
    assert rows[2][:5] == ["listeners", "NACKED", listeners, "-", "listener"]
    assert lines[3].endswith("listener external: port in use")


async def test_json_carries_the_same_for_scripts(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    clusters, listeners = await connected(harness)
    code, out, _ = await status(capsys, "--xds-address", harness.address, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["control_plane"] == harness.address
    gateways = {g["gateway"]: g for g in data["gateways"]}
    sotw = gateways["gw-sotw"]
    assert sotw["protocol"] == "sotw" and sotw["cluster"] == "gateways"
    assert sotw["types"]["clusters"]["status"] == "SYNCED"
    assert sotw["types"]["clusters"]["acked"] == clusters
    nack = sotw["types"]["listeners"]
    assert nack["status"] == "NACKED"
    assert nack["last_nack"] == "listener external: port\nin use"
    assert nack["last_nack_version"] == listeners == nack["sent"]
    assert gateways["gw-delta"]["types"]["clusters"]["status"] == "STALE"


async def test_no_gateway_connected_is_said_plainly(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await status(capsys, "--xds-address", harness.address)
    assert (code, out) == (0, f"no gateway is connected to {harness.address}\n")


def test_nothing_answering_is_one_line_and_exit_code_2() -> None:
    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
        done = subprocess.run(
            [sys.executable, "-m", "knative_xds.cli", "status", "--xds-address", address],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        f"no control plane answers at {address}: is `knative-xds serve` running? "
        "(--xds-address to point elsewhere)\n"
    )
