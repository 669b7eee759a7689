"""The serving stage: Services and Configurations between a source and the pipeline.

A recording sink stands for the pipeline; the history is the real SQLite one in a
temporary state folder, so "restart" means a new stage and a new history on the
same folder. The last test goes through the real file source (parse, grace).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from knative_xds import synth
from knative_xds.model import ObjectKey, Problem, RawObject
from knative_xds.model.kinds import CONFIGURATION, REVISION, ROUTE, SERVICE, Ident
from knative_xds.serving import RevisionHistory, ServingStage, history_for
from knative_xds.sources.file import FileSource

NS = "default"
ORIGIN = "apps/web.yaml"
Obj = dict[str, Any]


def service(
    name: str = "web",
    *,
    env: str = "one",
    template_name: str | None = None,
    traffic: list[Obj] | None = None,
    kind: str = SERVICE,
) -> Obj:
    template: Obj = {
        "spec": {"containers": [{"image": "example.com/web", "env": [{"name": "V", "value": env}]}]}
    }
    if template_name:
        template["metadata"] = {"name": template_name}
    spec: Obj = {"template": template}
    if traffic is not None:
        spec["traffic"] = traffic
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


def raw(obj: Obj, origin: str = ORIGIN) -> RawObject:
    return RawObject.from_dict(obj, origin)


def changes(*objs: Obj) -> dict[Ident, RawObject | None]:
    return {r.ident: r for r in map(raw, objs)}


def ident(kind: str, name: str) -> Ident:
    return (kind, ObjectKey(NS, name))


class RecordingSink:
    """What reaches the pipeline: every batch, and the problems by scope."""

    def __init__(self) -> None:
        self.batches: list[dict[Ident, RawObject | None]] = []
        self.problems: dict[str, list[Problem]] = {}

    def stage(self, changes: Any) -> None:
        self.batches.append(dict(changes))

    async def load(self, changes: Any = None) -> object:
        self.batches.append(dict(changes or {}))
        return None

    def submit(self, changes: Any) -> None:
        self.batches.append(dict(changes))

    def set_source_problems(self, scope: str, problems: Any) -> None:
        self.problems[scope] = list(problems)

    def source_health(self, scope: str, healthy: bool, detail: str = "") -> None:
        pass

    def source_event(self, event: Any) -> None:
        pass

    def all_problems(self) -> list[Problem]:
        return [p for ps in self.problems.values() for p in ps]

    @property
    def last(self) -> dict[Ident, RawObject | None]:
        return self.batches[-1]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def history(state: Path):
    with history_for(state, Path("apps")) as h:
        yield h


def start(history: RevisionHistory, *objs: Obj) -> tuple[ServingStage, RecordingSink]:
    sink = RecordingSink()
    stage = ServingStage(sink, history)
    asyncio.run(stage.load(changes(*objs)))
    return stage, sink


def revisions(batch: dict[Ident, RawObject | None]) -> set[str]:
    return {key.name for (kind, key), obj in batch.items() if kind == REVISION and obj}


def traffic(batch: dict[Ident, RawObject | None], name: str = "web") -> list[Obj]:
    route = batch[ident(ROUTE, name)]
    assert route is not None
    return route.body["spec"]["traffic"]


def test_a_service_becomes_a_revision_a_configuration_and_a_route(history):
    _, sink = start(history, service())

    assert set(sink.last) == {
        ident(REVISION, "web-00001"),
        ident(CONFIGURATION, "web"),
        ident(ROUTE, "web"),
    }
    assert traffic(sink.last) == [{"revisionName": "web-00001", "percent": 100}]
    assert sink.last[ident(ROUTE, "web")].origin == ORIGIN, "made objects name the file"
    assert sink.all_problems() == []


def test_an_edit_of_the_template_creates_the_next_revision_and_keeps_the_first(history):
    stage, sink = start(history, service())

    stage.submit(changes(service(env="two")))

    assert revisions(sink.last) == {"web-00002"}, "only what changed is forwarded"
    assert None not in sink.last.values(), "web-00001 stays"
    assert traffic(sink.last) == [{"revisionName": "web-00002", "percent": 100}]
    assert stage.revisions() == ["web-00001", "web-00002"]


def test_an_unchanged_template_creates_nothing_and_forwards_nothing(history):
    stage, sink = start(history, service())

    stage.submit(changes(service()))

    assert sink.last == {}


def test_a_traffic_block_naming_both_revisions_splits_them(history):
    stage, sink = start(history, service())
    split = [
        {"revisionName": "web-00001", "percent": 80},
        {"latestRevision": True, "percent": 20, "tag": "next"},
    ]

    stage.submit(changes(service(env="two", traffic=split)))

    assert traffic(sink.last) == [
        {"revisionName": "web-00001", "percent": 80},
        {"revisionName": "web-00002", "percent": 20, "tag": "next"},
    ]


def test_a_restart_keeps_revision_numbers(state):
    with history_for(state, Path("apps")) as first:
        stage, _ = start(first, service())
        stage.submit(changes(service(env="two")))

    with history_for(state, Path("apps")) as again:
        stage, sink = start(again, service(env="two"))
        assert revisions(sink.last) == {"web-00001", "web-00002"}, "both served again"
        stage.submit(changes(service(env="three")))
        assert revisions(sink.last) == {"web-00003"}


def test_a_template_edited_while_nothing_ran_is_the_next_revision(state):
    with history_for(state, Path("apps")) as first:
        start(first, service())
    with history_for(state, Path("apps")) as again:
        _, sink = start(again, service(env="two"))
    assert revisions(sink.last) == {"web-00001", "web-00002"}


def test_another_config_path_has_its_own_history(state):
    with history_for(state, Path("apps")) as first:
        start(first, service())
    with history_for(state, Path("other")) as other:
        _, sink = start(other, service(env="two"))
        assert revisions(sink.last) == {"web-00001"}
    with history_for(state, Path("apps")) as first:
        _, sink = start(first, service())
        assert revisions(sink.last) == {"web-00001"}, "not forgotten by the other path's run"


def test_a_bad_service_is_a_problem_naming_file_object_and_field_and_the_last_good_serves(
    history,
):
    stage, sink = start(history, service())
    bad = service(env="two")
    bad["spec"]["traffic"] = [{"revisionName": "web-00001", "percent": 60}]

    stage.submit(changes(bad))

    assert sink.last == {}, "nothing withdrawn, nothing replaced"
    [problem] = sink.all_problems()
    assert (problem.origin, problem.kind, problem.key) == (ORIGIN, SERVICE, "default/web")
    assert problem.field == "spec.traffic"
    assert "keeps serving" in problem.message
    assert stage.revisions() == ["web-00001"], "a refused object records no revision"

    stage.submit(changes(service(env="two")))
    assert sink.all_problems() == [], "fixed: its problem is gone"
    assert revisions(sink.last) == {"web-00002"}, "numbered as if the bad edit never was"


def test_a_bad_service_from_the_start_serves_nothing_and_says_so(history):
    bad = service()
    del bad["spec"]["template"]

    _, sink = start(history, bad)

    assert sink.last == {}
    [problem] = sink.all_problems()
    assert problem.field == "spec.template"
    assert "nothing of it is served" in problem.message


def test_deleting_a_service_withdraws_what_it_made_and_forgets_its_history(history):
    stage, sink = start(history, service())
    stage.submit(changes(service(env="two")))

    stage.submit({ident(SERVICE, "web"): None})

    assert sink.last == dict.fromkeys(
        [
            ident(REVISION, "web-00001"),
            ident(REVISION, "web-00002"),
            ident(CONFIGURATION, "web"),
            ident(ROUTE, "web"),
        ]
    )
    assert history.configurations() == ()
    stage.submit(changes(service(env="three")))
    assert revisions(sink.last) == {"web-00001"}, "re-created: numbering starts over"


def test_deletions_go_first_so_a_service_can_become_a_configuration_of_its_name(history):
    stage, sink = start(history, service())

    batch = changes(service(kind=CONFIGURATION, env="two"))
    # The deletion after the creation in the batch's own order: the stage still frees first.
    batch[ident(SERVICE, "web")] = None
    stage.submit(batch)

    assert sink.all_problems() == [], "the Service's history was gone before the check"
    assert sink.last[ident(ROUTE, "web")] is None
    assert sink.last[ident(REVISION, "web-00001")] is not None, "the Configuration's own"
    made = sink.last[ident(CONFIGURATION, "web")]
    assert made is not None and made.body["status"]["latestCreatedRevisionName"] == "web-00001"


def test_a_configuration_replaces_itself_and_has_no_route(history):
    _, sink = start(history, service("stable", kind=CONFIGURATION))

    assert set(sink.last) == {ident(REVISION, "stable-00001"), ident(CONFIGURATION, "stable")}
    made = sink.last[ident(CONFIGURATION, "stable")]
    assert made is not None
    assert made.body["status"]["latestReadyRevisionName"] == "stable-00001"


def test_core_services_routes_and_status_only_configurations_pass_through(history):
    core = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web-00001", "namespace": NS},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    }
    route = synth.route("hand", [synth.target("hand-1", 100)])
    status_only = synth.configuration("hand", "hand-1")

    _, sink = start(history, core, route, status_only)

    assert set(sink.last) == {
        ident(SERVICE, "web-00001"),
        ident(ROUTE, "hand"),
        ident(CONFIGURATION, "hand"),
    }
    assert sink.last[ident(SERVICE, "web-00001")].body == core
    assert history.configurations() == ()


def test_a_service_gone_while_nothing_ran_is_forgotten_at_the_first_load(state):
    with history_for(state, Path("apps")) as first:
        start(first, service(), service("other"))
    with history_for(state, Path("apps")) as again:
        start(again, service())
        assert [key.name for _, key in again.configurations()] == ["web"]


def test_through_the_file_source_an_emptied_file_keeps_its_history_within_the_grace(
    tmp_path: Path, history
):
    folder = tmp_path / "apps"
    folder.mkdir()
    core = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "backend", "namespace": NS},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    }
    (folder / "web.yaml").write_text(synth.dump([service(), core]))
    files = FileSource(folder, empty_grace=3600)
    sink = RecordingSink()
    stage = ServingStage(sink, history)

    asyncio.run(files.load_into(stage))
    loaded = {k for b in sink.batches for k in b}
    assert ident(REVISION, "web-00001") in loaded, "the file parser reads a Knative Service"
    assert ident(SERVICE, "backend") in loaded, "and still the core/v1 one"

    (folder / "web.yaml").write_text("")  # an editor saving in place: truncated first
    stage.submit(files.reread([folder / "web.yaml"]).changes)
    assert sink.last == {}, "within the grace nothing is withdrawn"
    (folder / "web.yaml").write_text(synth.dump([service(env="two"), core]))
    stage.submit(files.reread([folder / "web.yaml"]).changes)
    assert revisions(sink.last) == {"web-00002"}, "the history outlived the empty save"

    (folder / "web.yaml").unlink()
    stage.submit(files.reread([folder / "web.yaml"]).changes)
    assert sink.last[ident(ROUTE, "web")] is None and sink.last[ident(SERVICE, "backend")] is None
    assert history.configurations() == (), "a real deletion forgets"


def test_up_reset_clears_the_history_of_its_path_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    from knative_xds import cli
    from knative_xds.local import up as local_up

    folder = tmp_path / "apps"
    folder.mkdir()
    state = tmp_path / "state"
    with history_for(state, folder) as h:
        start(h, service())
    seen: list[tuple[str, ...]] = []

    async def fake_run_up(args: Any, settings: Any, history: RevisionHistory) -> int:
        # What `up` would reconcile against: the history of this path, open.
        seen.append(tuple(key.name for _, key in history.configurations()))
        return 0

    monkeypatch.setattr(local_up, "run_up", fake_run_up)
    argv = ["up", str(folder), "--state-dir", str(state)]

    assert cli.main(argv) == 0
    assert seen == [("web",)], "without --reset the history is kept"
    assert cli.main([*argv, "--reset"]) == 0
    assert seen[-1] == ()
    assert "revision history cleared" in capsys.readouterr().err
