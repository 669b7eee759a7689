"""Helpers shared by the unit tests: synth dicts → resolver input, resolver + translator."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from envoy.config.core.v3 import config_source_pb2
from google.protobuf import any_pb2, text_format
from google.protobuf.message import Message

from knative_xds import synth
from knative_xds.model import ActivatorMode, ObjectKey, RawObject, Resolver, Update
from knative_xds.model.resolve import Ident
from knative_xds.resources import Resource
from knative_xds.translate import Delta, GatewayConfig, Translator

Changes = dict[Ident, RawObject | None]
M = TypeVar("M", bound=Message)


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
    r = RawObject.from_dict(copy.deepcopy(dict(obj)), origin)
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


# -- the resolver and translator together ------------------------------------------------------

Resources = dict[str, dict[str, Resource]]


@dataclass
class Gateway:
    """A Resolver and a Translator fed together, with the resources a cache would hold."""

    mode: ActivatorMode = ActivatorMode.AT_ZERO
    resolver: Resolver = field(init=False)
    translator: Translator = field(init=False)
    resources: Resources = field(default_factory=dict)
    # What the last Delta removed, per type (the touched names `apply` returns include them).
    removed: dict[str, set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.resolver = Resolver(activator_mode=self.mode)
        self.translator = Translator(GatewayConfig())

    def apply(self, *objs: Mapping[str, Any], delete: bool = False) -> dict[str, set[str]]:
        """Apply objects (or delete them); return the names the Delta touched, per type."""
        return self.change(deleted(*objs) if delete else changes(*objs))

    def change(self, batch: Changes) -> dict[str, set[str]]:
        update = self.resolver.apply(batch)
        assert self.resolver.problems() == ()
        delta = self.translator.translate(update)
        apply_delta(self.resources, delta)
        self.removed = {}
        for type_url, named in delta.changes.items():
            if gone := {n for n, r in named.items() if r is None}:
                self.removed[type_url] = gone
        return {t: set(named) for t, named in delta.changes.items()}

    def get(self, type_url: str, name: str, cls: type[M]) -> M:
        return self.resources[type_url][name].message(cls)  # type: ignore[return-value]

    def names(self, type_url: str) -> set[str]:
        return set(self.resources.get(type_url, {}))


def translated(*objs: Mapping[str, Any], mode: ActivatorMode = ActivatorMode.AT_ZERO) -> Gateway:
    gateway = Gateway(mode)
    gateway.apply(*objs)
    return gateway


def as_bytes(resources: Resources) -> dict[str, dict[str, bytes]]:
    return {t: {n: r.body for n, r in named.items()} for t, named in resources.items()}


def ads() -> config_source_pb2.ConfigSource:
    """The config source every xDS reference uses: the same ADS stream, API v3."""
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )


def packed(message: Message) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)
    return out


def world() -> list[dict[str, Any]]:
    """Two ready revisions for Routes to send traffic to."""
    return [synth.revision("hello-1", ready=True), synth.revision("hello-2", ready=True)]


async def until(check: Callable[[], object], what: str = "", timeout: float = 10.0) -> None:
    """Wait until `check()` holds, looking every 10 ms; fail naming `what` after `timeout`.

    For conditions no message reveals. That something did NOT happen is never shown
    this way: make a second, observable change and wait for that instead."""
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what or check}") from None
