"""Small helpers shared by the unit tests: synth dicts → resolver input, proto asserts."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import text_format
from google.protobuf.message import Message

from knative_xds.model import ObjectKey, RawObject, Resolver, Update
from knative_xds.model.resolve import Ident
from knative_xds.resources import Resource
from knative_xds.translate import Delta

Changes = dict[Ident, RawObject | None]


def key_of(obj: Mapping[str, Any]) -> ObjectKey:
    meta = obj["metadata"]
    return ObjectKey(str(meta.get("namespace") or "default"), str(meta["name"]))


def ident(obj: Mapping[str, Any]) -> Ident:
    return (str(obj["kind"]), key_of(obj))


def raw(obj: Mapping[str, Any], origin: str = "test.yaml") -> Changes:
    """One synth object as a resolver change, the way the file source hands it over.

    The body is deep-copied so a test editing its dict afterwards cannot reach
    into what the resolver already holds.
    """
    body = copy.deepcopy(dict(obj))
    r = RawObject(
        kind=str(obj["kind"]),
        api_version=str(obj.get("apiVersion", "")),
        key=key_of(obj),
        body=body,
        origin=origin,
    )
    return {r.ident: r}


def changes(*objs: Mapping[str, Any], origin: str = "test.yaml") -> Changes:
    out: Changes = {}
    for obj in objs:
        out.update(raw(obj, origin))
    return out


def deleted(*objs: Mapping[str, Any]) -> Changes:
    return {ident(obj): None for obj in objs}


def resolve(
    objs: Iterable[Mapping[str, Any]], resolver: Resolver | None = None, **kwargs: Any
) -> tuple[Resolver, Update]:
    """Apply `objs` in one batch to `resolver` (a new one built with `kwargs` if None)."""
    resolver = resolver if resolver is not None else Resolver(**kwargs)
    return resolver, resolver.apply(changes(*objs))


def with_labels(obj: dict[str, Any], **labels: str) -> dict[str, Any]:
    """A copy of `obj` with extra metadata labels (`app=prod`)."""
    out = copy.deepcopy(obj)
    out["metadata"].setdefault("labels", {}).update(labels)
    return out


def with_metadata(obj: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A copy of `obj` with metadata fields replaced, well-formed or not."""
    out = copy.deepcopy(obj)
    out["metadata"].update(fields)
    return out


def apply_delta(into: dict[str, dict[str, Resource]], delta: Delta) -> None:
    """Fold a translator Delta into {type_url: {name: Resource}}, as a cache would."""
    for type_url, named in delta.changes.items():
        table = into.setdefault(type_url, {})
        for name, resource in named.items():
            if resource is None:
                table.pop(name, None)
            else:
                table[name] = resource


def assert_proto_equal(got: Message, want: Message) -> None:
    """Whole-message equality; on failure, both sides in text format."""
    if got != want:
        raise AssertionError(
            f"{type(got).__name__} differs\n--- got ---\n{text_format.MessageToString(got)}"
            f"--- want ---\n{text_format.MessageToString(want)}"
        )
