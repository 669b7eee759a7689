"""When a revision's process is ready: the container's `readinessProbe`, or a connect.

Kubernetes' kubelet runs the probe in a cluster (and Knative's queue-proxy,
while a pod starts, runs it aggressively). Here: an `httpGet` probe is a GET of
its path (with its `httpHeaders`) that must answer 2xx or 3xx; a `tcpSocket`
probe, or none, is a connect (Knative's default). The probe's `port` names the
container's port, which here is always the process's `PORT`. Probes repeat every
50 ms, whatever `periodSeconds` says, since a cold start waits on them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import ClientError, ClientSession, ClientTimeout

READY_TIMEOUT = 20.0
PROBE_EVERY = 0.05  # Knative's queue-proxy probes this often while a pod starts


@dataclass(frozen=True, slots=True)
class Probe:
    """A readiness probe: GET `path` (2xx or 3xx is ready) or, with no path, a TCP connect."""

    path: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


def readiness_probe(container: Mapping) -> Probe:
    probe = container.get("readinessProbe")
    get = probe.get("httpGet") if isinstance(probe, Mapping) else None
    if not isinstance(get, Mapping):
        return Probe()  # tcpSocket, or none: a connect to PORT
    headers = tuple(
        (str(h["name"]), str(h.get("value", "")))
        for h in get.get("httpHeaders") or []
        if isinstance(h, Mapping) and "name" in h
    )
    path = str(get.get("path") or "/")
    return Probe(path=path if path.startswith("/") else "/" + path, headers=headers)


async def until_ready(port: int, proc: asyncio.subprocess.Process, probe: Probe) -> None:
    async with (
        asyncio.timeout(READY_TIMEOUT),
        ClientSession(timeout=ClientTimeout(total=1.0), trust_env=False) as session,
    ):
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"exited with code {proc.returncode} before it was ready")
            if await _probe_once(session, port, probe):
                return
            await asyncio.sleep(PROBE_EVERY)


async def _probe_once(session: ClientSession, port: int, probe: Probe) -> bool:
    if probe.path is None:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return True
        return False
    url = f"http://127.0.0.1:{port}{probe.path}"
    headers = {"User-Agent": "kube-probe/knative-xds", **dict(probe.headers)}
    try:
        async with session.get(url, headers=headers, allow_redirects=False) as r:
            return 200 <= r.status < 400  # what the kubelet counts as success
    except (ClientError, OSError, TimeoutError):
        return False
