"""The wire to the Kubernetes API server: configuration, list pages and watch streams.

`connect` finds the configuration the way kubectl and client-go do (the pod's
service account inside a cluster, else a kubeconfig) and yields an `HttpApi`:
plain GETs of list pages and of newline-delimited watch streams, authenticated
by an ApiClient of the official client's `kubernetes.aio`. The status side
writes through the same session: get, create and replace one object (a Lease)
and merge-patch a status subresource. Only bodies as dicts cross this boundary;
transport failures and error statuses come out as `ApiError` (410 Gone as
`Expired`), which the reflectors retry.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from kubernetes.aio.client import ApiClient, Configuration
from kubernetes.aio.config import ConfigException, load_incluster_config, load_kube_config

from .. import __version__
from .kube_watch import ApiError, Collection, Expired

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
# One object read or written: generous for an API server under load, short of hanging.
_OBJECT_TIMEOUT = aiohttp.ClientTimeout(total=30)


def object_path(
    api_version: str, plural: str, namespace: str, name: str, subresource: str = ""
) -> str:
    """The path of one namespaced object (`subresource`: e.g. "status")."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    tail = f"/{subresource}" if subresource else ""
    return f"{base}/namespaces/{namespace}/{plural}/{name}{tail}"


class ClusterConfigError(RuntimeError):
    """Neither an in-cluster service account nor a usable kubeconfig was found."""


@asynccontextmanager
async def connect(
    *, kubeconfig: str | None = None, context: str | None = None, idle_timeout: float = 120.0
) -> AsyncIterator[HttpApi]:
    """An API connection: the pod's service account inside a cluster, else the kubeconfig
    (`kubeconfig`, else $KUBECONFIG, else ~/.kube/config)."""
    configuration = Configuration()
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            where = "in-cluster service account"
        else:
            path = (
                kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
            )
            # persist_config=False: never write refreshed credentials into the user's file.
            await load_kube_config(  # type: ignore[no-untyped-call]
                config_file=path,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
            where = f"kubeconfig {path}"
    except (ConfigException, OSError) as e:
        raise ClusterConfigError(f"no Kubernetes configuration: {e}") from e
    log.info("Kubernetes API at %s (%s)", configuration.host, where)
    client = ApiClient(configuration)
    client.user_agent = f"knative-xds/{__version__}"
    try:
        yield HttpApi(client, idle_timeout=idle_timeout)
    finally:
        await client.close()  # type: ignore[no-untyped-call]


class HttpApi:
    """`KubeApi` over HTTP, authenticated by an ApiClient of the official `kubernetes.aio`."""

    def __init__(self, client: ApiClient, *, idle_timeout: float = 120.0) -> None:
        self._client = client
        # No byte (not even a bookmark) for this long: the connection is taken for
        # dead and the watch reopened, which a half-open TCP connection needs.
        self._idle = idle_timeout

    async def list_page(
        self, collection: Collection, *, limit: int, continue_token: str | None
    ) -> Mapping[str, Any]:
        query = [*collection.selectors(), ("limit", str(limit))]
        if continue_token:
            query.append(("continue", continue_token))
        timeout = aiohttp.ClientTimeout(total=60)
        response = await self._get(collection.path, query, timeout)
        try:
            return _json_object(await _read(response), "list")
        finally:
            response.release()

    async def watch(
        self, collection: Collection, *, resource_version: str, timeout_seconds: int
    ) -> AsyncGenerator[Mapping[str, Any], None]:
        query = [
            *collection.selectors(),
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout_seconds)),
        ]
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self._idle)
        response = await self._get(collection.path, query, timeout)
        try:
            async for line in _lines(response):
                yield _json_object(line, "watch event")
        except TimeoutError:
            log.debug("%s: no data for %.0f s; reopening the watch", collection, self._idle)
        except aiohttp.ClientError as e:
            raise ApiError(0, f"watch stream cut short: {e or type(e).__name__}") from e
        finally:
            # Closing (not releasing) drops a stream we stop reading half-way.
            response.close()

    # -- single objects (the status side) ----------------------------------------------

    async def get(self, path: str) -> Mapping[str, Any]:
        """One object; ApiError 404 when there is none."""
        return await self._object("GET", path)

    async def create(self, path: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """POST `body` to the collection at `path`; ApiError 409 when it already exists."""
        return await self._object("POST", path, body)

    async def replace(self, path: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """PUT `body`; with its metadata.resourceVersion, ApiError 409 when that is stale."""
        return await self._object("PUT", path, body)

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> Mapping[str, Any]:
        """A JSON merge patch (RFC 7386): maps merge, lists and values replace, null removes."""
        return await self._object("PATCH", path, patch, content_type=MERGE_PATCH)

    async def _object(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        content_type: str = "application/json",
    ) -> Mapping[str, Any]:
        response = await self._send(
            method, path, [], _OBJECT_TIMEOUT, body=body, content_type=content_type
        )
        try:
            return _json_object(await _read(response), f"{method} {path} response")
        finally:
            response.release()

    async def _get(
        self, path: str, query: list[tuple[str, str]], timeout: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        return await self._send("GET", path, query, timeout)

    async def _send(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        timeout: aiohttp.ClientTimeout,
        *,
        body: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> aiohttp.ClientResponse:
        """The response of a request answered 2xx (the caller releases it), else ApiError."""
        header_params = {"Accept": "application/json"}
        if body is not None:
            header_params["Content-Type"] = content_type
        try:
            # This refreshes the credentials when they are due: it reads the rotated
            # service-account token, or runs a kubeconfig's exec plugin.
            method, url, headers, _, _ = await self._client.param_serialize(
                method,
                path,
                query_params=query,
                header_params=header_params,
                auth_settings=["BearerToken"],
            )
        except (ConfigException, OSError) as e:
            raise ApiError(0, f"cannot get credentials: {e}") from e
        try:
            # The client's REST layer JSON-encodes `body` for any JSON content type.
            rest = await self._client.call_api(
                method,
                url,
                header_params=headers,
                body=dict(body) if body is not None else None,
                _request_timeout=timeout,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise ApiError(0, f"cannot reach the API server: {e or type(e).__name__}") from e
        response: aiohttp.ClientResponse = rest.response
        if not 200 <= response.status < 300:
            try:
                body = await response.read()
            except (aiohttp.ClientError, TimeoutError):
                body = b""
            finally:
                response.release()
            raise _http_error(response.status, response.reason or "", body)
        return response


async def _read(response: aiohttp.ClientResponse) -> bytes:
    try:
        return await response.read()
    except (aiohttp.ClientError, TimeoutError) as e:
        raise ApiError(0, f"response cut short: {e or type(e).__name__}") from e


async def _lines(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """Newline-delimited JSON, whatever the chunking and however long one event is."""
    pending = bytearray()
    async for chunk in response.content.iter_any():
        pending += chunk
        start = 0
        while (end := pending.find(b"\n", start)) >= 0:
            if end > start:
                yield bytes(pending[start:end])
            start = end + 1
        del pending[:start]
    if pending.strip():
        yield bytes(pending)


def _json_object(data: bytes, what: str) -> Mapping[str, Any]:
    try:
        parsed = json.loads(data)
    except ValueError as e:
        raise ApiError(0, f"malformed {what}: {e}") from None
    if not isinstance(parsed, Mapping):
        raise ApiError(0, f"malformed {what}: not a JSON object")
    return parsed


def _http_error(status: int, reason: str, body: bytes) -> ApiError:
    message = reason
    try:
        parsed = json.loads(body)
        if isinstance(parsed, Mapping) and parsed.get("message"):
            message = str(parsed["message"])
    except ValueError:
        message = body.decode(errors="replace").strip()[:200] or reason
    return (Expired if status == 410 else ApiError)(status, message)
