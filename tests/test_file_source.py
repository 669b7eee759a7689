"""The file source: a folder of Knative YAML, read whole or a part at a time."""

from __future__ import annotations

from pathlib import Path

from knative_xds import synth
from knative_xds.app import ControlPlane, load_files
from knative_xds.sources.file import FileSource


def _folder(tmp_path: Path, routes: int) -> Path:
    for i in range(routes):
        name = f"svc-{i}"
        objects = [
            synth.route(name, [synth.target(f"{name}-1", 100)]),
            synth.revision(f"{name}-1"),
        ]
        (tmp_path / f"{name}.yaml").write_text(synth.dump(objects))
    return tmp_path


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

    _, loaded = await load_files(plane, folder)

    assert len(loaded.update.state.routes) == 450
    assert loaded.problems == []
    assert plane.loaded.is_set()
