"""Knative's Service and Configuration controllers between the files and the pipeline.

`ServingStage` is a `Sink` in front of another: the objects a source sends pass
through, except `serving.knative.dev/v1` Services and Configurations, which are
reconciled with the revision history and replaced by what Knative's controllers
would have made of them (every Revision, the Configuration, a Service's Route).
`ServingSource` puts one in front of a source's sink; `serve --config`, `up` and
`validate` read files through it. With `--kubernetes` it is not used: on a
cluster Knative's own controllers do this, and the source reads their output.

Rules kept here, not in `reconcile`:
- An object with problems changes nothing that is served: what it made last keeps
  serving, as on a cluster where the webhook refuses the edit. Its problems are
  reported in a scope of their own (one per object), naming file, object and field.
- In a batch, deletions go first: a Service renamed in its file frees its
  revisions' names before the new one claims them.
- A deletion forgets the history (a re-created Service starts at 00001, as on a
  cluster). Only real deletions arrive here: the file source keeps an emptied
  file's objects for its grace period (an editor saving in place), and a file
  that does not parse changes nothing it held.
- At the first load, configurations the history holds that the input no longer
  has were deleted while nothing ran: they are forgotten. The history is kept
  per config path (`history_for`), so another folder's revisions are never touched.
- A Configuration without `spec.template` (a status-only one, as hand-written
  Routes lean on for `configurationName`) is read as before, not reconciled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import sqlite3
from collections.abc import Mapping
from pathlib import Path

from ..model import Problem, RawObject
from ..model.kinds import CONFIGURATION, REVISION, Ident
from ..sources.base import Changes, Sink, SinkInFront, Source
from .history import HistoryError, RevisionHistory
from .spec import is_serving
from .template import KNATIVE_DEFAULTS, Limits

log = logging.getLogger(__name__)

# Where problems of one Service or Configuration are reported (a scope of its own, so
# the file source's report of the same file does not replace them).
_SCOPE = "serving.knative.dev {kind} {key}"
# The store wraps its own errors in HistoryError, but not every read and delete.
STORE_ERRORS = (HistoryError, sqlite3.Error)


def history_for(state_dir: Path, config: Path) -> RevisionHistory:
    """The revision history of one config path, in the state folder's part for that path.

    Keyed like the file source's last-good copies (a hash of the absolute path), so two
    config folders sharing a state folder never share revisions (nor forget each other's).
    """
    digest = hashlib.sha256(str(config.absolute()).encode("utf-8", "surrogatepass"))
    return RevisionHistory.in_state_dir(state_dir / digest.hexdigest()[:24])


def reconciled_here(raw: RawObject) -> bool:
    """Whether the stage reconciles this object (else it passes through as it is)."""
    if not is_serving(raw):
        return False
    spec = raw.body.get("spec")
    return raw.kind != CONFIGURATION or (isinstance(spec, Mapping) and "template" in spec)


class ServingStage(SinkInFront):
    """A `Sink` that reconciles Services and Configurations on their way to `sink`."""

    def __init__(
        self, sink: Sink, history: RevisionHistory, *, limits: Limits = KNATIVE_DEFAULTS
    ) -> None:
        super().__init__(sink)
        self._history = history
        self._limits = limits
        # Every Service and Configuration as last read (bad ones too: their name is held).
        self._held: dict[Ident, RawObject] = {}
        # What each of them made that was forwarded: its last good output.
        self._made: dict[Ident, dict[Ident, RawObject]] = {}
        self._with_problems: set[Ident] = set()

    # -- what `validate` and `up` say ----------------------------------------------------

    def held(self) -> list[RawObject]:
        """The Services and Configurations read, in (kind, key) order."""
        return [self._held[i] for i in sorted(self._held)]

    def made(self, ident: Ident) -> dict[Ident, RawObject]:
        """What one Service or Configuration made that is served (empty: nothing)."""
        return dict(self._made.get(ident, {}))

    def revisions(self) -> list[str]:
        """The names of every revision served from Services and Configurations, sorted."""
        return sorted(
            key.name for made in self._made.values() for kind, key in made if kind == REVISION
        )

    # -- the Sink ------------------------------------------------------------------------

    def stage(self, changes: Changes) -> None:
        self._sink.stage(self._translate(changes))

    async def load(self, changes: Changes | None = None) -> object:
        out = self._translate(changes or {})
        self._forget_absent()
        return await self._sink.load(out)

    def submit(self, changes: Changes) -> None:
        # Also when nothing is left to forward: the sink reports problems anew.
        self._sink.submit(self._translate(changes))

    # -- translating one batch -----------------------------------------------------------

    def _translate(self, changes: Changes) -> dict[Ident, RawObject | None]:
        out: dict[Ident, RawObject | None] = {}
        # Deletions first (see the module's doc): a held object deleted, or replaced by
        # one that is not reconciled (a core/v1 Service of the same name).
        deleted = set()
        for ident, raw in changes.items():
            if ident in self._held and (raw is None or not reconciled_here(raw)):
                out.update(self._delete(ident))
                deleted.add(ident)
        for ident, raw in changes.items():
            if raw is not None and reconciled_here(raw):
                out.update(self._apply(raw))
            elif raw is not None:
                out[ident] = raw
            elif ident not in deleted and ident not in out:
                out[ident] = None  # a deletion of what passed through
        return out

    def _apply(self, raw: RawObject) -> dict[Ident, RawObject | None]:
        ident = raw.ident
        self._held[ident] = raw
        before = self._made.get(ident, {})
        try:
            done = self._history.apply(raw, limits=self._limits)
        except STORE_ERRORS as e:
            problems: tuple[Problem, ...] = (
                Problem(raw.origin, raw.kind, str(raw.key), "", str(e)),
            )
        else:
            problems = done.problems
        if problems:
            kept = "what it made before keeps serving" if before else "nothing of it is served yet"
            self._report(
                ident, [dataclasses.replace(p, message=f"{p.message}; {kept}") for p in problems]
            )
            return {}
        self._report(ident, [])
        made = {i: RawObject.from_dict(obj, raw.origin) for i, obj in done.objects().items()}
        self._made[ident] = made
        for entry in done.new_entries:
            log.info(
                "%s: %s %s: new template, revision %s created (generation %d)",
                raw.origin,
                raw.kind,
                raw.key,
                entry.name,
                entry.generation,
            )
        out: dict[Ident, RawObject | None] = {i: None for i in before if i not in made}
        out.update({i: obj for i, obj in made.items() if _changed(before.get(i), obj)})
        return out

    def _delete(self, ident: Ident) -> dict[Ident, RawObject | None]:
        raw = self._held.pop(ident)
        made = self._made.pop(ident, {})
        self._report(ident, [])
        kind, key = ident
        try:
            gone = self._history.delete(kind, key)
        except STORE_ERRORS as e:
            log.error("%s: %s %s was deleted, but %s", raw.origin, kind, key, e)
        else:
            names = ", ".join(k.name for g, k in gone if g == REVISION) or "none"
            log.info("%s: %s %s deleted, and its revisions (%s)", raw.origin, kind, key, names)
        return dict.fromkeys(made)

    def _forget_absent(self) -> None:
        """At the first load: forget configurations deleted while nothing ran."""
        try:
            for owner, key in self._history.configurations():
                if (owner, key) not in self._held:
                    self._history.forget(owner, key)
                    log.info(
                        "%s %s is no longer in the files: its revisions are forgotten", owner, key
                    )
        except STORE_ERRORS as e:
            log.error("%s", e)

    def _report(self, ident: Ident, problems: list[Problem]) -> None:
        if not problems and ident not in self._with_problems:
            return
        kind, key = ident
        self._sink.set_source_problems(_SCOPE.format(kind=kind, key=key), problems)
        if problems:
            self._with_problems.add(ident)
        else:
            self._with_problems.discard(ident)


def _changed(before: RawObject | None, now: RawObject) -> bool:
    return before is None or before.body != now.body or before.origin != now.origin


class ServingSource:
    """A source whose Services and Configurations are reconciled on the way (a `Source`).

    `stage` is the `ServingStage` of the current `run` (None before): what it holds.
    """

    def __init__(
        self, source: Source, history: RevisionHistory, *, limits: Limits = KNATIVE_DEFAULTS
    ) -> None:
        self.source = source
        self.history = history
        self.limits = limits
        self.stage: ServingStage | None = None

    async def run(self, sink: Sink, ready: asyncio.Event) -> None:
        self.stage = ServingStage(sink, self.history, limits=self.limits)
        await self.source.run(self.stage, ready)
