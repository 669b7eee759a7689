"""What Knative's Service and Configuration controllers do, as one pure function.

`reconcile(object, history)` takes a Service or Configuration and the revisions
its configuration already has, and returns what a cluster would then hold: every
Revision (the earlier ones stay, so a split can name them), the Configuration
with its status, and, for a Service, the Route, all as the plain dicts the
model already reads; plus the revision to add to the history, if the template
is new. Nothing here touches the disk: the store (`history.py`) applies
`new_entries`, so the rules can be tested as a table.

Knative's rules, kept here:
- A revision is created when the template changes (its defaulted content; the
  name is part of it). It is named `<configuration>-<generation, 5 digits>`,
  the generation counting template changes from 1, or takes the template's
  `metadata.name`. An unchanged template creates nothing.
- A template that keeps its explicit name but changes is rejected ("changes
  without a name change"), and so is a name an earlier revision already has.
- `latestRevision: true` (and the default traffic) follows the latest *ready*
  revision. Locally a revision is ready once started, so the caller says which
  is; by default the latest created.
- A Configuration alone has no Route. Deleting either takes its revisions
  (and a Service's Route) with it; a re-created one starts at 00001 again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..model.kinds import (
    CONFIGURATION,
    CONFIGURATION_GENERATION_LABEL,
    CONFIGURATION_LABEL,
    REVISION,
    ROUTE,
    SERVICE,
    SERVICE_LABEL,
    SERVING,
    Ident,
)
from ..model.objects import ObjectError, RawObject
from ..model.types import ObjectKey, Problem
from .spec import ServingSpec, parse_serving
from .template import KNATIVE_DEFAULTS, Limits, child_name

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class StoredRevision:
    """One revision of one configuration, as the history keeps it.

    `template` is the defaulted template as canonical JSON, so a revision made
    before a restart is rebuilt exactly as it was created.
    """

    namespace: str
    configuration: str
    # The kind that owns the configuration: Service or Configuration.
    owner: str
    generation: int
    name: str
    template_hash: str
    template: str

    @property
    def key(self) -> ObjectKey:
        return ObjectKey(self.namespace, self.name)

    def template_body(self) -> Obj:
        body: Obj = json.loads(self.template)
        return body


@dataclass(frozen=True, slots=True)
class Reconciled:
    """The outcome for one Service or Configuration.

    With problems, nothing else is set: Knative's webhook would have refused
    the object, so the caller keeps serving what it had (the history is untouched).
    """

    kind: str
    key: ObjectKey
    revisions: tuple[Obj, ...] = ()
    configuration: Obj | None = None
    route: Obj | None = None
    new_entries: tuple[StoredRevision, ...] = ()
    problems: tuple[Problem, ...] = ()
    latest_created: str | None = None
    latest_ready: str | None = None

    def objects(self) -> dict[Ident, Obj]:
        """Every object produced, by (kind, key): the shape a source hands the resolver."""
        out: dict[Ident, Obj] = {}
        for obj in (*self.revisions, self.configuration, self.route):
            if obj is not None:
                meta = obj["metadata"]
                out[(obj["kind"], ObjectKey(meta["namespace"], meta["name"]))] = obj
        return out


def reconcile(
    raw: RawObject,
    history: Sequence[StoredRevision],
    *,
    latest_ready: str | None = None,
    limits: Limits = KNATIVE_DEFAULTS,
) -> Reconciled:
    """A Service or Configuration and its configuration's history → what a cluster would hold.

    `history` is what the store holds for (namespace, name), in any order.
    `latest_ready` names the newest revision that is ready; None, or a name the
    history does not have, means the latest created.
    """
    try:
        spec = parse_serving(raw, limits)
        entries = sorted(history, key=lambda e: e.generation)
        _check_owner(spec, entries)
        new = _next_revision(spec, entries)
    except ObjectError as e:
        problem = Problem(raw.origin, raw.kind, str(raw.key), e.field, e.message)
        return Reconciled(kind=raw.kind, key=raw.key, problems=(problem,))
    all_entries = [*entries, *([new] if new else [])]
    created = all_entries[-1].name
    names = {e.name for e in all_entries}
    ready = latest_ready if latest_ready in names else created
    return Reconciled(
        kind=spec.kind,
        key=spec.key,
        revisions=tuple(revision_object(e) for e in all_entries),
        configuration=_configuration_object(spec, all_entries[-1], ready),
        route=_route_object(spec, ready) if spec.kind == SERVICE else None,
        new_entries=(new,) if new else (),
        latest_created=created,
        latest_ready=ready,
    )


def removed(kind: str, key: ObjectKey, history: Sequence[StoredRevision]) -> tuple[Ident, ...]:
    """What goes when a Service or Configuration is deleted: its revisions, Configuration, Route.

    Only revisions the deleted kind owns: deleting a Configuration named like a
    Service leaves the Service's revisions alone.
    """
    owned = sorted((e for e in history if e.owner == kind), key=lambda e: e.generation)
    out: list[Ident] = [(REVISION, e.key) for e in owned]
    if owned:
        out.append((CONFIGURATION, key))
    if kind == SERVICE:
        out.append((ROUTE, key))
    return tuple(out)


def _check_owner(spec: ServingSpec, entries: Sequence[StoredRevision]) -> None:
    other = next((e.owner for e in entries if e.owner != spec.kind), None)
    if other is not None:
        raise ObjectError(
            "metadata.name",
            f"configuration {spec.key.name!r} already belongs to the {other} of that name"
            f" in namespace {spec.key.namespace!r}; delete it first, or choose another name",
        )


def _next_revision(spec: ServingSpec, entries: Sequence[StoredRevision]) -> StoredRevision | None:
    """The revision this template creates, or None when it is the latest one's template."""
    latest = entries[-1] if entries else None
    template = spec.template
    if latest is not None and latest.template_hash == template.digest:
        return None
    generation = (latest.generation if latest else 0) + 1
    at = "spec.template.metadata.name"
    if template.name and latest is not None and latest.name == template.name:
        raise ObjectError(
            at,
            f"the template changed but kept the name {template.name!r}: a changed"
            " template needs a new name (or none, to have one made)",
        )
    name = template.name or child_name(spec.key.name, f"-{generation:05d}")
    if any(e.name == name for e in entries):
        raise ObjectError(
            at if template.name else "spec.template",
            f"revision {name!r} already exists, made from an earlier template;"
            " a new template needs a name no revision has",
        )
    return StoredRevision(
        namespace=spec.key.namespace,
        configuration=spec.key.name,
        owner=spec.kind,
        generation=generation,
        name=name,
        template_hash=template.digest,
        template=json.dumps(template.body, sort_keys=True, separators=(",", ":")),
    )


def revision_object(entry: StoredRevision) -> Obj:
    """The Revision Knative's Configuration controller creates from a stored template."""
    template = entry.template_body()
    meta = template.get("metadata", {})
    labels = {
        **meta.get("labels", {}),
        CONFIGURATION_LABEL: entry.configuration,
        CONFIGURATION_GENERATION_LABEL: str(entry.generation),
    }
    if entry.owner == SERVICE:
        labels[SERVICE_LABEL] = entry.configuration
    metadata: Obj = {"name": entry.name, "namespace": entry.namespace, "labels": labels}
    if meta.get("annotations"):
        metadata["annotations"] = dict(meta["annotations"])
    return {
        "apiVersion": SERVING,
        "kind": REVISION,
        "metadata": metadata,
        "spec": template["spec"],
    }


def _owned_metadata(spec: ServingSpec) -> Obj:
    """A Service's child's metadata: the Service's labels (visibility among them) and annotations."""
    labels = dict(spec.labels)
    if spec.kind == SERVICE:
        labels[SERVICE_LABEL] = spec.key.name
    meta: Obj = {"name": spec.key.name, "namespace": spec.key.namespace}
    if labels:
        meta["labels"] = labels
    if spec.annotations:
        meta["annotations"] = dict(spec.annotations)
    return meta


def _configuration_object(spec: ServingSpec, latest: StoredRevision, ready: str) -> Obj:
    """The Configuration with the status Knative's controller writes; Routes naming it
    (`configurationName`) resolve to its latest ready revision through the model."""
    return {
        "apiVersion": SERVING,
        "kind": CONFIGURATION,
        "metadata": _owned_metadata(spec),
        "spec": {"template": latest.template_body()},
        "status": {
            "observedGeneration": latest.generation,
            "latestCreatedRevisionName": latest.name,
            "latestReadyRevisionName": ready,
        },
    }


def _route_object(spec: ServingSpec, ready: str) -> Obj:
    """The Service's Route, its latest-revision targets resolved as Knative's Route
    controller resolves them (it writes them to status.traffic; the model reads spec)."""
    assert spec.traffic is not None
    traffic: list[Obj] = []
    for t in spec.traffic.traffic:
        target: Obj = {"revisionName": t.revision_name or ready, "percent": t.percent}
        if t.tag:
            target["tag"] = t.tag
        traffic.append(target)
    return {
        "apiVersion": SERVING,
        "kind": ROUTE,
        "metadata": _owned_metadata(spec),
        "spec": {"traffic": traffic},
    }
