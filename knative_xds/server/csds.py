"""Client Status Discovery Service: what each connected gateway was sent and has accepted.

`envoy.service.status.v3.ClientStatusDiscoveryService`, served on the ADS port so
standard xDS tooling (and `knative-xds status`) can ask it. One `ClientConfig`
per open ADS stream, with one `GenericXdsConfig` per resource type the stream
subscribed to (its `name` is empty: the entry is about the type as a whole).

Per type, from the stream's `Subscription` and what this module saw sent:

- `NOT_SENT` / `REQUESTED`: subscribed, nothing sent yet;
- `STALE` / `REQUESTED`: a response is in flight, not yet answered;
- `SYNCED` / `ACKED`: the latest response was accepted;
- `ERROR` / `NACKED`: the latest response was rejected; `error_state` says why
  (truncated) and which version was rejected, `version_info` is the version the
  gateway keeps running.

Node metadata carries what an xDS node does not: `knative_xds.peer` (the
stream's remote address as gRPC names it), `knative_xds.protocol` (`sotw` or
`delta`) and `knative_xds.sent` (per type URL, the version last sent). Node
matchers select by node id (exact, prefix, suffix, contains).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import grpc
from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from envoy.type.matcher.v3 import node_pb2
from google.protobuf import struct_pb2, timestamp_pb2

from ..resources import PUSH_ORDER
from .callbacks import Callbacks, StreamStatus
from .subscription import Subscription

# A NACK's text comes from the client and can be megabytes; operators need its start.
MAX_ERROR_CHARS = 1024
PEER_KEY = "knative_xds.peer"
PROTOCOL_KEY = "knative_xds.protocol"
SENT_KEY = "knative_xds.sent"

ConfigStatus = csds_pb2.ConfigStatus
ResourceStatus = dump_pb2.ClientResourceStatus


@dataclass(frozen=True, slots=True)
class Sent:
    """The latest response of one type on one stream."""

    version: str
    at: float


class SentLog(Callbacks):
    """What version each stream was last sent per type: the subscription keeps only
    what is in flight and what was accepted, not what a NACK rejected."""

    def __init__(self) -> None:
        self.sent: dict[int, dict[str, Sent]] = {}

    def on_response(
        self,
        status: StreamStatus,
        type_url: str,
        version: str,
        resource_count: int,
        byte_count: int,
    ) -> None:
        self.sent.setdefault(status.id, {})[type_url] = Sent(version, time.time())

    def on_stream_close(self, status: StreamStatus) -> None:
        self.sent.pop(status.id, None)


def type_config(sub: Subscription, sent: Sent | None) -> csds_pb2.ClientConfig.GenericXdsConfig:
    """One type's state on one stream (pure: the subscription is only read)."""
    config = csds_pb2.ClientConfig.GenericXdsConfig(type_url=sub.type_url)
    nack = sub.last_nack
    last = sent.at if sent is not None else 0.0
    if not sub.responded or sent is None:
        config.config_status = ConfigStatus.NOT_SENT
        config.client_status = ResourceStatus.REQUESTED
    elif sub.inflight:
        config.config_status = ConfigStatus.STALE
        config.client_status = ResourceStatus.REQUESTED
        config.version_info = sub.acked_version
    elif nack is not None and nack.nonce == sub.last_nonce:
        config.config_status = ConfigStatus.ERROR
        config.client_status = ResourceStatus.NACKED
        config.version_info = nack.version
        config.error_state.CopyFrom(
            dump_pb2.UpdateFailureState(
                last_update_attempt=_timestamp(nack.at),
                details=truncated(nack.message),
                version_info=sent.version,
            )
        )
        last = max(last, nack.at)
    else:
        config.config_status = ConfigStatus.SYNCED
        config.client_status = ResourceStatus.ACKED
        config.version_info = sub.acked_version
    if last:
        config.last_updated.CopyFrom(_timestamp(last))
    return config


def client_config(status: StreamStatus, sent: dict[str, Sent]) -> csds_pb2.ClientConfig:
    metadata = struct_pb2.Struct()
    metadata.update(
        {
            PEER_KEY: status.peer,
            PROTOCOL_KEY: "delta" if status.delta else "sotw",
            # CSDS has no field for a version in flight or rejected-and-replaced.
            SENT_KEY: {type_url: s.version for type_url, s in sent.items()},
        }
    )
    config = csds_pb2.ClientConfig(
        node=base_pb2.Node(id=status.node_id, cluster=status.cluster, metadata=metadata)
    )
    subs = dict(status.subs)  # the stream may add a type while this is built
    for type_url in sorted(subs, key=_push_rank):
        config.generic_xds_configs.append(type_config(subs[type_url], sent.get(type_url)))
    return config


def truncated(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


class UnsupportedMatcher(ValueError):
    """A node matcher this server cannot evaluate."""


def matches(matchers: Iterable[node_pb2.NodeMatcher], node_id: str) -> bool:
    """Does any matcher select `node_id`? No matcher at all selects every node."""
    results = [_matches(m, node_id) for m in matchers]  # each one checked, even after a hit
    return not results or any(results)


def _matches(matcher: node_pb2.NodeMatcher, node_id: str) -> bool:
    if matcher.node_metadatas:
        raise UnsupportedMatcher("node_metadatas matchers are not supported; match on node_id")
    if not matcher.HasField("node_id"):
        return True
    m = matcher.node_id
    pattern = m.WhichOneof("match_pattern")
    value = getattr(m, pattern) if pattern else ""
    subject = node_id.lower() if m.ignore_case else node_id
    value = value.lower() if m.ignore_case and isinstance(value, str) else value
    if pattern == "exact":
        return subject == value
    if pattern == "prefix":
        return subject.startswith(value)
    if pattern == "suffix":
        return subject.endswith(value)
    if pattern == "contains":
        return value in subject
    raise UnsupportedMatcher(
        f"node_id matcher {pattern or '(empty)'} is not supported; use exact, prefix, suffix "
        "or contains"
    )


class ClientStatus(csds_pb2_grpc.ClientStatusDiscoveryServiceServicer):
    """Answers from the ADS server's open streams; `sent` must observe that server."""

    def __init__(self, streams: dict, sent: SentLog) -> None:
        self._streams = streams
        self._sent = sent

    def response(self, request: csds_pb2.ClientStatusRequest) -> csds_pb2.ClientStatusResponse:
        matches(request.node_matchers, "")  # a matcher that cannot be evaluated is refused
        out = csds_pb2.ClientStatusResponse()
        # By node id, then by age: what an operator scans for.
        streams = sorted(self._streams.values(), key=lambda s: (s.status.node_id, s.status.id))
        for stream in streams:
            status: StreamStatus = stream.status
            if not status.node_id:
                continue  # no request read yet: nothing to say about it
            if matches(request.node_matchers, status.node_id):
                out.config.append(client_config(status, self._sent.sent.get(status.id, {})))
        return out

    async def FetchClientStatus(
        self, request: csds_pb2.ClientStatusRequest, context: grpc.aio.ServicerContext
    ) -> csds_pb2.ClientStatusResponse:
        try:
            return self.response(request)
        except UnsupportedMatcher as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            raise  # not reached: abort raises

    async def StreamClientStatus(
        self, request_iterator: AsyncIterator, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[csds_pb2.ClientStatusResponse]:
        async for request in request_iterator:
            try:
                response = self.response(request)
            except UnsupportedMatcher as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
                return
            yield response


def add_to(server: grpc.aio.Server, ads) -> ClientStatus:
    """Serve CSDS for `ads` (an AdsServer) on `server`, which also serves its ADS."""
    sent = SentLog()
    ads.observe(sent)
    service = ClientStatus(ads.streams, sent)
    csds_pb2_grpc.add_ClientStatusDiscoveryServiceServicer_to_server(service, server)
    return service


def _push_rank(type_url: str) -> int:
    return PUSH_ORDER.index(type_url) if type_url in PUSH_ORDER else len(PUSH_ORDER)


def _timestamp(at: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(at * 1e9))
    return stamp
