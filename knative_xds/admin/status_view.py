"""What /debug/status and /debug/config_dump answer, built from a ControlPlane.

/debug/status is a JSON object; its shape is kept stable for tools that read it:

    {
      "instance": str, "ready": bool, "snapshot": int | null,
      "resources": {"CDS": int, ...},           # per type short name, in the snapshot
      "problems": [str, ...],
      "sources": {scope: {"healthy": bool, "detail": str, "last_sync": float | null}},
      "streams": [...],                         # as before (kept for older readers)
      "kingresses": {...} | null,
      "nacks": [{"node", "type", "error", "version"}, ...],
      "withdrawals": [{"at": float, "removed": int, "before": int}, ...],  # > half at once
      "gateways": [                              # one per connected ADS stream
        {
          "stream": int, "node": str, "cluster": str, "peer": str,
          "protocol": "sotw" | "delta",
          "types": {
            "CDS": {
              "version_sent": str | null,        # last response's version_info
              "version_acked": str,              # "" until the first ACK
              "last_nack": {"version": str, "error": str, "at": float} | null
            }, ...
          }
        }, ...
      ]
    }

With `?node=ID` only that node's gateways are listed. NACK text is cut at
`NACK_TEXT` characters: a client chooses it, and it must not grow the page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from google.protobuf import json_format

from ..resources import SECRET, short
from ..server.subscription import Nack

if TYPE_CHECKING:
    from ..app import ControlPlane
    from ..server.stream import Stream

NACK_TEXT = 512
REDACTED = "[redacted]"
# Fields of a Secret that hold key material: never shown, whatever their form.
_SECRET_FIELDS = frozenset({"private_key", "password", "session_ticket_keys", "secret"})


def truncated(text: str, limit: int = NACK_TEXT) -> str:
    return (
        text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"
    )


def status(plane: ControlPlane, node: str | None = None) -> dict[str, Any]:
    snapshot = plane.cache.current()
    sent = plane.metrics.sent_versions
    streams = [s for s in plane.ads.streams.values() if node is None or s.status.node_id == node]
    return {
        "instance": plane.cache.instance,
        "ready": plane.loaded.is_set(),
        "snapshot": snapshot.serial if snapshot else None,
        "resources": {short(t): len(m) for t, m in snapshot.resources.items()} if snapshot else {},
        "problems": [str(p) for p in plane.pipeline.problems()],
        "sources": {
            scope: {"healthy": h.healthy, "detail": h.detail, "last_sync": h.last_sync}
            for scope, h in plane.pipeline.health.items()
        },
        "streams": [_stream(s) for s in streams],
        "kingresses": plane.reporter.summary() if plane.reporter is not None else None,
        "nacks": [
            {"node": n, "type": short(t), "error": truncated(k.message), "version": k.version}
            for (n, t), k in plane.ads.nacks.items()
            if node is None or n == node
        ],
        "withdrawals": [
            {"at": w.at, "removed": w.removed, "before": w.before}
            for w in getattr(plane.pipeline, "withdrawals", ())
        ],
        "gateways": [_gateway(s, sent.get(s.status.id, {})) for s in streams],
    }


def _stream(s: Stream) -> dict[str, Any]:
    return {
        "id": s.status.id,
        "node": s.status.node_id,
        "peer": s.status.peer,
        "protocol": "delta" if s.status.delta else "sotw",
        "types": {
            short(t): {
                "last_nonce": sub.last_nonce,
                "acked_version": sub.acked_version,
                "last_nack": truncated(sub.last_nack.message) if sub.last_nack else None,
            }
            for t, sub in s.subs.items()
        },
    }


def _gateway(s: Stream, sent: dict[str, str]) -> dict[str, Any]:
    return {
        "stream": s.status.id,
        "node": s.status.node_id,
        "cluster": s.status.cluster,
        "peer": s.status.peer,
        "protocol": "delta" if s.status.delta else "sotw",
        "types": {
            short(t): {
                "version_sent": sent.get(t),
                "version_acked": sub.acked_version,
                "last_nack": _nack(sub.last_nack),
            }
            for t, sub in s.subs.items()
        },
    }


def _nack(nack: Nack | None) -> dict[str, Any] | None:
    if nack is None:
        return None
    return {"version": nack.version, "error": truncated(nack.message), "at": nack.at}


def config_dump(plane: ControlPlane, node: str) -> dict[str, Any] | None:
    """What the newest stream of `node` was last sent, per type, decoded; None: not connected."""
    mine = [s for s in plane.ads.streams.values() if s.status.node_id == node]
    if not mine:
        return None
    stream = max(mine, key=lambda s: s.status.id)
    return {
        "node": node,
        "stream": stream.status.id,
        "protocol": "delta" if stream.status.delta else "sotw",
        "types": {
            short(t): {
                name: _decoded(resource.to_any(), redact=t == SECRET)
                for name, resource in sorted(sub.sent.items())
            }
            for t, sub in stream.subs.items()
        },
    }


def _decoded(packed: Any, *, redact: bool) -> dict[str, Any]:
    data = json_format.MessageToDict(packed, preserving_proto_field_name=True)
    return redacted(data) if redact else data


def redacted(value: Any) -> Any:
    """`value` with every key-material field replaced by a marker, at any depth."""
    if isinstance(value, dict):
        return {k: REDACTED if k in _SECRET_FIELDS else redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value
