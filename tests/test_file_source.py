"""The file source: a folder of Knative YAML, read whole or a part at a time, and run as a
source: first state staged and loaded, then `ready`, then each edit submitted."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from knative_xds import synth
from knative_xds.app import ControlPlane
from knative_xds.model import ObjectKey
from knative_xds.sources.file import FileSource
from tests.kube_fixtures import RecordingSink, running

# A file edit reaches the source through inotify and a 50 ms debounce; generous for a
# loaded machine, and only ever the bound of a wait on a condition.
DEADLINE = 10.0


def _folder(tmp_path: Path, routes: int) -> Path:
    for i in range(routes):
        (tmp_path / f"svc-{i}.yaml").write_text(synth.dump(_objects(f"svc-{i}")))
    return tmp_path


def _objects(name: str, revision: str | None = None) -> list[dict]:
    revision = revision or f"{name}-1"
    return [synth.route(name, [synth.target(revision, 100)]), synth.revision(revision)]


def _write(path: Path, objects: list[dict]) -> None:
    """Replace a file atomically, as an editor that saves by rename does."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(synth.dump(objects))
    os.replace(tmp, path)


def route(name: str) -> tuple[str, ObjectKey]:
    return ("Route", ObjectKey("default", name))


def test_reading_in_parts_yields_every_object_once(tmp_path: Path) -> None:
    folder = _folder(tmp_path, 7)
    parts = list(FileSource(folder).read_in_parts(files_per_part=3))
    whole = FileSource(folder).read_all()

    assert [len(p.changes) for p in parts] == [6, 6, 2]  # two objects per file
    merged = {ident: raw.digest for p in parts for ident, raw in p.changes.items()}
    assert merged == {ident: raw.digest for ident, raw in whole.changes.items()}


async def test_a_folder_loaded_in_parts_serves_every_route(tmp_path: Path) -> None:
    folder = _folder(tmp_path, 450)  # more files than one part holds
    plane = ControlPlane()

    await FileSource(folder).load_into(plane)

    assert plane.first_load is not None
    assert len(plane.first_load.update.state.ingresses) == 450
    assert plane.problems() == []
    assert plane.loaded.is_set()


# -- the source interface ---------------------------------------------------------------


async def test_run_stages_the_first_state_in_parts_loads_it_then_is_ready(
    tmp_path: Path,
) -> None:
    folder = _folder(tmp_path, 5)
    ready = asyncio.Event()
    sink = RecordingSink(ready)
    async with (
        running(FileSource(folder, files_per_part=2), sink, ready),
        asyncio.timeout(DEADLINE),
    ):
        await ready.wait()
        assert sink.verbs == ["stage", "stage", "stage", "load"]
        assert sink.ready_before_load == [False]
        assert len(sink.state()) == 10

        _write(folder / "svc-1.yaml", _objects("svc-1", revision="svc-1-2"))
        (folder / "svc-4.yaml").unlink()
        await sink.until(lambda: route("svc-4") not in sink.state())
        await sink.until(
            lambda: (
                sink.state()[route("svc-1")].body["spec"]["traffic"][0]["revisionName"] == "svc-1-2"
            )
        )

    assert set(sink.verbs[4:]) == {"submit"}, "after the first state only submits"
    changed = {ident for changes in sink.submitted for ident in changes}
    assert changed <= {
        route("svc-1"),
        ("Revision", ObjectKey("default", "svc-1-1")),
        ("Revision", ObjectKey("default", "svc-1-2")),
        route("svc-4"),
        ("Revision", ObjectKey("default", "svc-4-1")),
    }, "an edit sends only the objects of the files it touched"


async def test_a_single_file_is_followed_across_saves_by_rename(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(synth.dump(_objects("one")))
    (tmp_path / "neighbour.yaml").write_text(synth.dump(_objects("neighbour")))
    ready = asyncio.Event()
    sink = RecordingSink(ready)
    async with running(FileSource(path), sink, ready), asyncio.timeout(DEADLINE):
        await ready.wait()
        _write(tmp_path / "neighbour.yaml", _objects("neighbour", revision="neighbour-2"))
        _write(path, _objects("two"))
        await sink.until(lambda: route("two") in sink.state())

    assert set(sink.state()) == {route("two"), ("Revision", ObjectKey("default", "two-1"))}
    assert all(route("neighbour") not in changes for _, changes in sink.calls)


class _EditsWhileLoading(RecordingSink):
    """A sink whose `load` takes long enough for a user to save a file meanwhile."""

    def __init__(self, path: Path, ready: asyncio.Event) -> None:
        super().__init__(ready)
        self._path = path

    async def load(self, changes=None) -> None:
        _write(self._path, _objects("svc-0", revision="svc-0-2"))
        await super().load(changes)


async def test_a_file_saved_while_the_first_state_loads_is_submitted_after_it(
    tmp_path: Path,
) -> None:
    folder = _folder(tmp_path, 2)
    ready = asyncio.Event()
    sink = _EditsWhileLoading(folder / "svc-0.yaml", ready)
    async with running(FileSource(folder), sink, ready), asyncio.timeout(DEADLINE):
        await ready.wait()
        first = sink.calls[0][1][route("svc-0")]
        assert first.body["spec"]["traffic"][0]["revisionName"] == "svc-0-1"
        await sink.until(lambda: sink.submitted)

    assert route("svc-0") in sink.submitted[0]
    assert sink.submitted[0][route("svc-0")].body["spec"]["traffic"][0]["revisionName"] == (
        "svc-0-2"
    )


async def test_a_file_that_stops_parsing_is_reported_and_keeps_its_objects(
    tmp_path: Path,
) -> None:
    folder = _folder(tmp_path, 1)
    ready = asyncio.Event()
    sink = RecordingSink(ready)
    async with running(FileSource(folder), sink, ready), asyncio.timeout(DEADLINE):
        await ready.wait()
        (folder / "svc-0.yaml").write_text("kind: Route\nmetadata: [unclosed\n")
        await sink.until(lambda: any(problems for _, problems in sink.problem_log))
        # A second, observable edit: the first thing seen after the bad save.
        _write(folder / "other.yaml", _objects("other"))
        await sink.until(lambda: route("other") in sink.state())

    bad = [problems for scope, problems in sink.problem_log if problems]
    assert "not valid YAML" in bad[0][0].message
    assert route("svc-0") in sink.state(), "the last good objects keep serving"
    assert all(route("svc-0") not in changes for changes in sink.submitted)


async def test_a_path_that_does_not_exist_ends_run_naming_it(tmp_path: Path) -> None:
    sink = RecordingSink()
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml does not exist"):
        async with asyncio.timeout(DEADLINE):
            await FileSource(tmp_path / "nope.yaml").run(sink, asyncio.Event())
    assert sink.calls == []


# -- kinds it does not read --------------------------------------------------------------


def test_kinds_and_api_versions_not_read_are_listed_not_dropped(tmp_path: Path) -> None:
    # An apiVersion of Service read neither as core/v1's nor as Knative's v1.
    old_service = {
        "apiVersion": "serving.knative.dev/v1alpha1",
        "kind": "Service",
        "metadata": {"name": "hello", "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [{"image": "hello"}]}}},
    }
    # Knative's v1 Service is read (the serving stage reconciles it into Revisions).
    knative_service = {**old_service, "apiVersion": "serving.knative.dev/v1"}
    knative_service["metadata"] = {"name": "web", "namespace": "default"}
    core_service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "hello-00001", "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
    }
    (tmp_path / "mixed.yaml").write_text(
        synth.dump([old_service, knative_service, core_service, deployment])
    )
    source = FileSource(tmp_path)

    batch = source.read_all()

    assert set(batch.changes) == {
        ("Service", ObjectKey("default", "hello-00001")),
        ("Service", ObjectKey("default", "web")),
    }
    assert batch.problems[tmp_path / "mixed.yaml"] == [], "skipping is no problem"
    notes = [str(i) for i in source.ignored()]
    assert len(notes) == 2, notes
    assert any(
        "mixed.yaml" in n
        and "Service default/hello " in n
        and "serving.knative.dev/v1" in n
        and "not read" in n
        for n in notes
    ), notes
    assert any("Deployment default/web" in n and "not read" in n for n in notes), notes

    (tmp_path / "mixed.yaml").write_text(synth.dump([core_service]))
    source.reread([tmp_path / "mixed.yaml"])
    assert source.ignored() == [], "a file's skipped objects are those it holds now"


async def test_files_are_read_and_parsed_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large file must not hold every stream still while yaml-rs parses it."""
    import threading

    from knative_xds.sources import file_read

    threads: list[threading.Thread] = []
    parse = file_read.parse_documents

    def recording(path, text):
        threads.append(threading.current_thread())
        return parse(path, text)

    monkeypatch.setattr(file_read, "parse_documents", recording)
    folder = _folder(tmp_path, 2)
    ready = asyncio.Event()
    sink = RecordingSink(ready)
    async with running(FileSource(folder), sink, ready), asyncio.timeout(DEADLINE):
        await ready.wait()
        _write(folder / "svc-1.yaml", _objects("svc-1", revision="svc-1-2"))
        await sink.until(lambda: ("Revision", ObjectKey("default", "svc-1-2")) in sink.state())

    assert len(threads) == 3, "two files at the first load, one edit"
    assert threading.main_thread() not in threads
