"""The YAML folder survives faults: a file truncated or cut while written, a restart with
a file that no longer parses, two files defining one object, an empty start, a change
that withdraws most routes, a folder removed under a running plane.

Each test runs a FileSource into a ControlPlane and asserts what a gateway would be
sent: the route tables and clusters in the published snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from knative_xds import synth
from knative_xds.app import ControlPlane
from knative_xds.pipeline import Applied
from knative_xds.resources import CLUSTER, ROUTE
from knative_xds.sources.file import FileSource
from tests import helpers

# Bound of every wait on a condition (an edit reaches the source through inotify).
DEADLINE = 10.0


def _objects(name: str, revision: str | None = None) -> list[dict[str, Any]]:
    revision = revision or f"{name}-1"
    return [
        synth.route(name, [synth.target(revision, 100)]),
        synth.revision(revision, ready=True),
        synth.endpoint_slice(revision, ["127.0.0.1"], 8080),
    ]


def _write(path: Path, objects: list[dict[str, Any]]) -> None:
    """Replace a file atomically, as an editor that saves by rename does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(synth.dump(objects))
    os.replace(tmp, path)


def _names(plane: ControlPlane, type_url: str) -> set[str]:
    snapshot = plane.cache.current()
    return set(snapshot.resources.get(type_url, {})) if snapshot is not None else set()


def tables(plane: ControlPlane) -> set[str]:
    """The external route tables a gateway is sent: one per served Route."""
    return {n.removeprefix("external/") for n in _names(plane, ROUTE) if n.startswith("external/")}


def clusters(plane: ControlPlane) -> set[str]:
    return _names(plane, CLUSTER)


def messages(plane: ControlPlane) -> list[str]:
    return [str(p) for p in plane.problems()]


async def until(check: Callable[[], object], what: str) -> None:
    await helpers.until(check, what, DEADLINE)


@contextlib.asynccontextmanager
async def serving(folder: Path, **options: Any) -> AsyncIterator[ControlPlane]:
    """A plane fed by a FileSource on `folder`, its first state loaded."""
    plane = ControlPlane()
    ready = asyncio.Event()
    task = asyncio.create_task(plane.run(FileSource(folder, **options), ready))
    try:
        await until(lambda: ready.is_set() or task.done(), "the first state")
        if task.done():
            task.result()
        yield plane
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- a file emptied while it is written ------------------------------------------------


@pytest.mark.parametrize("empty", ["", "# being written\n", "---\n\n"])
async def test_a_file_emptied_in_place_keeps_its_routes_while_written(
    tmp_path: Path, empty: str
) -> None:
    _write(tmp_path / "web.yaml", _objects("web"))
    async with serving(tmp_path, empty_grace=60) as plane:
        assert tables(plane) == {"default/web"}

        (tmp_path / "web.yaml").write_text(empty)  # `: > web.yaml`, as an in-place save does
        _write(tmp_path / "marker.yaml", _objects("marker"))  # the second, observable change
        await until(lambda: "default/marker" in tables(plane), "the marker route")
        assert tables(plane) == {"default/web", "default/marker"}, "still being written"

        (tmp_path / "web.yaml").write_text(synth.dump(_objects("web", revision="web-2")))
        await until(lambda: "default/web-2" in clusters(plane), "the file's new content")
        assert tables(plane) == {"default/web", "default/marker"}
        assert "default/web-1" not in clusters(plane)
        assert messages(plane) == []


async def test_a_file_that_stays_empty_past_the_grace_withdraws_its_routes(
    tmp_path: Path,
) -> None:
    _write(tmp_path / "web.yaml", _objects("web"))
    _write(tmp_path / "other.yaml", _objects("other"))
    async with serving(tmp_path, empty_grace=0.2, poll_interval=0.05) as plane:
        (tmp_path / "web.yaml").write_text("")
        await until(lambda: "default/web" not in tables(plane), "the empty file's routes to go")
        assert tables(plane) == {"default/other"}
        assert clusters(plane) == {"default/other-1"}


# -- a file is taken whole ---------------------------------------------------------------


def _cut_after_second_kind(text: str) -> str:
    at = text.index("kind: Revision") + len("kind: Revision")
    return text[:at] + "\n"


def _cut_inside_a_mapping(text: str) -> str:
    return _cut_after_second_kind(text) + "metadata: {name: web-2, namespace: defa"


@pytest.mark.parametrize("cut", [_cut_after_second_kind, _cut_inside_a_mapping])
async def test_a_file_cut_mid_write_changes_nothing_it_held(
    tmp_path: Path, cut: Callable[[str], str]
) -> None:
    path = tmp_path / "web.yaml"
    _write(path, _objects("web"))
    async with serving(tmp_path) as plane:
        served = clusters(plane)
        # A save cut short: the Route edited, the rest of the file not yet written.
        path.write_text(cut(synth.dump(_objects("web", revision="web-2"))))
        await until(lambda: messages(plane), "the cut file's problem")
        _write(tmp_path / "marker.yaml", _objects("marker"))
        await until(lambda: "default/marker" in tables(plane), "the marker route")

        assert clusters(plane) == served | {"default/marker-1"}, "web is served as it was"
        assert tables(plane) == {"default/web", "default/marker"}
        [problem] = plane.problems()
        assert problem.origin == str(path)
        assert "what it held before keeps serving" in problem.message
        assert problem.key == "document 2" or "line" in problem.message, problem


# -- a restart -------------------------------------------------------------------------


async def test_a_restart_serves_the_last_good_version_of_a_file_that_does_not_parse(
    tmp_path: Path,
) -> None:
    folder, state = tmp_path / "config", tmp_path / "state"
    _write(folder / "web.yaml", _objects("web"))
    async with serving(folder, state_dir=state) as plane:
        assert tables(plane) == {"default/web"}

    (folder / "web.yaml").write_text("kind: Route\nmetadata: [unclosed\n")
    async with serving(folder, state_dir=state) as plane:
        assert tables(plane) == {"default/web"}
        assert clusters(plane) == {"default/web-1"}
        [problem] = plane.problems()
        assert problem.origin == str(folder / "web.yaml")
        assert "not valid YAML" in problem.message
        assert "serving its last good version from" in problem.message

        # Fixed: the file as it is now is served, and the problem goes.
        _write(folder / "web.yaml", _objects("web", revision="web-2"))
        await until(lambda: "default/web-2" in clusters(plane), "the fixed file")
        assert messages(plane) == []


async def test_a_restart_without_a_last_good_version_says_nothing_of_the_file_is_served(
    tmp_path: Path,
) -> None:
    (tmp_path / "web.yaml").write_text("kind: Route\nmetadata: [unclosed\n")
    _write(tmp_path / "other.yaml", _objects("other"))
    async with serving(tmp_path, state_dir=tmp_path / ".state") as plane:
        assert tables(plane) == {"default/other"}
        [problem] = plane.problems()
        assert "nothing of this file is served" in problem.message


async def test_two_configs_keep_their_last_good_versions_apart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    one, two = tmp_path / "one", tmp_path / "two"
    _write(one / "web.yaml", _objects("web", revision="web-one"))
    _write(two / "web.yaml", _objects("web", revision="web-two"))
    for folder in (one, two):
        async with serving(folder, state_dir=state):
            pass
        (folder / "web.yaml").write_text("kind: Route\nmetadata: [unclosed\n")

    for folder, revision in ((one, "default/web-one"), (two, "default/web-two")):
        async with serving(folder, state_dir=state) as plane:
            assert clusters(plane) == {revision}
    kept = [p.name for p in state.rglob("*") if p.is_file()]
    assert not [name for name in kept if name.endswith(".tmp")], kept


# -- two files defining one object ---------------------------------------------------------


async def test_a_duplicate_has_the_same_winner_hot_and_after_a_restart_and_is_adopted(
    tmp_path: Path,
) -> None:
    folder, state = tmp_path / "config", tmp_path / "state"
    # b.yaml is first; a.yaml, which sorts first, defines the same Route later.
    _write(folder / "b.yaml", _objects("web", revision="web-b"))
    async with serving(folder, state_dir=state) as plane:
        _write(folder / "a.yaml", _objects("web", revision="web-a"))
        await until(lambda: messages(plane), "the duplicate's problem")
        assert "default/web-b" in clusters(plane)
        assert "default/web-a" not in clusters(plane)

    async with serving(folder, state_dir=state) as plane:
        assert "default/web-b" in clusters(plane), "the same file wins after a restart"
        assert "default/web-a" not in clusters(plane)
        [problem] = plane.problems()
        assert problem.origin == str(folder / "a.yaml")
        assert f"also defined in {folder / 'b.yaml'}" in problem.message

        # The owner lets go of the Route: the other definition is served at once.
        _write(folder / "b.yaml", _objects("other"))
        await until(lambda: "default/web-a" in clusters(plane), "a.yaml's Route adopted")
        assert tables(plane) == {"default/web", "default/other"}
        assert messages(plane) == [], "no stale problem"


async def test_a_duplicate_is_adopted_when_the_owners_file_goes(tmp_path: Path) -> None:
    _write(tmp_path / "b.yaml", _objects("web", revision="web-b"))
    async with serving(tmp_path) as plane:
        _write(tmp_path / "a.yaml", _objects("web", revision="web-a"))
        await until(lambda: messages(plane), "the duplicate's problem")
        (tmp_path / "b.yaml").unlink()
        await until(lambda: "default/web-a" in clusters(plane), "a.yaml's Route adopted")
        assert tables(plane) == {"default/web"}
        assert messages(plane) == []


# -- an empty start ------------------------------------------------------------------------


async def test_a_start_with_nothing_to_serve_publishes_nothing_until_a_route_appears(
    tmp_path: Path,
) -> None:
    _write(tmp_path / "backends.yaml", _objects("web")[1:])  # a Revision, no Route
    async with serving(tmp_path) as plane:
        # The first state is loaded (the source is ready) and was not published.
        assert plane.cache.current() is None
        assert not plane.loaded.is_set()

        _write(tmp_path / "web.yaml", _objects("web")[:1])
        await until(lambda: plane.cache.current() is not None, "a first snapshot")
        assert tables(plane) == {"default/web"}
        assert clusters(plane) == {"default/web-1"}, "what was held is published with it"
        assert plane.loaded.is_set()


# -- a mass withdrawal --------------------------------------------------------------------


async def test_a_change_withdrawing_most_routes_is_recorded(tmp_path: Path) -> None:
    for i in range(4):
        _write(tmp_path / f"svc-{i}.yaml", _objects(f"svc-{i}"))
    async with serving(tmp_path) as plane:
        seen: list[Applied] = []
        plane.pipeline.on_applied.append(seen.append)

        (tmp_path / "svc-0.yaml").unlink()  # one of four: an ordinary change
        await until(lambda: "default/svc-0" not in tables(plane), "svc-0 to go")
        assert plane.pipeline.withdrawals == []

        for i in (1, 2):  # two of the three left
            (tmp_path / f"svc-{i}.yaml").unlink()
        await until(lambda: tables(plane) == {"default/svc-3"}, "svc-1 and svc-2 to go")
        [event] = plane.pipeline.withdrawals
        assert (event.removed, event.before) == (2, 3)
        assert [a.withdrawal for a in seen if a.withdrawal] == [event]


# -- the folder itself ---------------------------------------------------------------------


async def test_a_folder_removed_keeps_serving_and_recovers_when_it_is_back(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "config"
    _write(folder / "web.yaml", _objects("web"))
    async with serving(folder, poll_interval=0.05) as plane:
        scope = str(folder)
        assert plane.pipeline.health[scope].healthy

        shutil.rmtree(folder)
        await until(lambda: not plane.pipeline.health[scope].healthy, "the folder to be missed")
        assert "cannot be read" in plane.pipeline.health[scope].detail
        assert tables(plane) == {"default/web"}

        folder.mkdir()  # made again, not yet filled: still the last good state
        _write(tmp_path / "elsewhere" / "marker.yaml", [])  # (a filesystem event elsewhere)
        await until(
            lambda: "is empty" in plane.pipeline.health[scope].detail, "the empty folder seen"
        )
        assert tables(plane) == {"default/web"}

        _write(folder / "web.yaml", _objects("web", revision="web-2"))
        await until(lambda: plane.pipeline.health[scope].healthy, "the folder to be back")
        await until(lambda: "default/web-2" in clusters(plane), "the folder's files read")
        assert tables(plane) == {"default/web"}

        _write(folder / "new.yaml", _objects("new"))  # the folder is watched again
        await until(lambda: "default/new" in tables(plane), "an edit after the recovery")
