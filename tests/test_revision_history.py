"""The revision history in SQLite: numbers survive a restart and a crash, reset and delete forget."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from knative_xds.model import ObjectKey, RawObject
from knative_xds.model.kinds import CONFIGURATION, REVISION, ROUTE, SERVICE
from knative_xds.serving import (
    FILE_NAME,
    HistoryError,
    Reconciled,
    RevisionHistory,
    StoredRevision,
    default_state_dir,
)
from tests.test_serving import configuration, service

NS = "default"
HELLO = ObjectKey(NS, "hello")


def apply(history: RevisionHistory, obj: dict[str, Any]) -> Reconciled:
    return history.apply(RawObject.from_dict(obj, "svc.yaml"))


def made(done: Reconciled) -> list[str]:
    assert done.problems == (), done.problems
    return [e.name for e in done.new_entries]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def test_the_history_is_one_file_in_a_private_state_folder(state_dir: Path) -> None:
    with RevisionHistory.in_state_dir(state_dir) as history:
        apply(history, service(env="one"))
    assert (state_dir / FILE_NAME).is_file()
    assert state_dir.stat().st_mode & 0o777 == 0o700


def test_a_restart_keeps_the_revision_numbers(state_dir: Path) -> None:
    with RevisionHistory.in_state_dir(state_dir) as history:
        assert made(apply(history, service(env="one"))) == ["hello-00001"]
        assert made(apply(history, service(env="two"))) == ["hello-00002"]
    with RevisionHistory.in_state_dir(state_dir) as history:
        # The file as it was at shutdown: nothing new, the same revisions and route.
        again = apply(history, service(env="two"))
        assert made(again) == []
        assert [r["metadata"]["name"] for r in again.revisions] == ["hello-00001", "hello-00002"]
        assert made(apply(history, service(env="three"))) == ["hello-00003"]
        assert [e.generation for e in history.revisions(NS, "hello")] == [1, 2, 3]


def test_a_revision_recorded_before_a_crash_is_there_after_it(state_dir: Path) -> None:
    # A process that records a revision, then dies at once (SIGKILL: no close, no atexit).
    script = textwrap.dedent(
        f"""
        import os, signal
        from knative_xds.model import RawObject
        from knative_xds.serving import RevisionHistory
        from tests.test_serving import service
        history = RevisionHistory.in_state_dir({str(state_dir)!r}).open()
        done = history.apply(RawObject.from_dict(service(env="one")))
        assert [e.name for e in done.new_entries] == ["hello-00001"], done
        print("recorded", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.strip() == "recorded", proc.stderr
    assert proc.returncode == -9
    with RevisionHistory.in_state_dir(state_dir) as history:
        assert [e.name for e in history.revisions(NS, "hello")] == ["hello-00001"]
        assert made(apply(history, service(env="two"))) == ["hello-00002"]


def test_reset_forgets_everything_and_numbering_starts_again(state_dir: Path) -> None:
    with RevisionHistory.in_state_dir(state_dir) as history:
        apply(history, service(env="one"))
        apply(history, service(env="two"))
        apply(history, configuration("other"))
        history.reset()
        assert history.configurations() == ()
        assert made(apply(history, service(env="two"))) == ["hello-00001"]
    with RevisionHistory.in_state_dir(state_dir) as history:
        assert [e.name for e in history.revisions(NS, "hello")] == ["hello-00001"]


def test_deleting_a_service_forgets_its_revisions_only(state_dir: Path) -> None:
    with RevisionHistory.in_state_dir(state_dir) as history:
        apply(history, service(env="one"))
        apply(history, service(env="two"))
        apply(history, configuration("other"))
        assert history.configurations() == (
            (SERVICE, HELLO),
            (CONFIGURATION, ObjectKey(NS, "other")),
        )
        gone = history.delete(SERVICE, HELLO)
        assert gone == (
            (REVISION, ObjectKey(NS, "hello-00001")),
            (REVISION, ObjectKey(NS, "hello-00002")),
            (CONFIGURATION, HELLO),
            (ROUTE, HELLO),
        )
        assert history.configurations() == ((CONFIGURATION, ObjectKey(NS, "other")),)
        # As in Knative: a Service created again under the same name starts from 00001.
        assert made(apply(history, service(env="two"))) == ["hello-00001"]


def test_a_record_that_conflicts_writes_nothing_at_all(state_dir: Path) -> None:
    with RevisionHistory.in_state_dir(state_dir) as history:
        (first,) = apply(history, service(env="one")).new_entries
        fresh = StoredRevision(NS, "hello", SERVICE, 2, "hello-00002", "h", "{}")
        clash = StoredRevision(NS, "hello", SERVICE, 1, "hello-again", "h", "{}")
        with pytest.raises(HistoryError, match="already recorded"):
            history.record([fresh, clash])
        assert history.revisions(NS, "hello") == (first,)


def test_a_revision_name_another_configuration_has_is_a_problem_not_a_crash(
    state_dir: Path,
) -> None:
    with RevisionHistory.in_state_dir(state_dir) as history:
        assert made(apply(history, service(template_name="hello-x-00001"))) == ["hello-x-00001"]
        done = apply(history, service("hello-x"))
        (problem,) = done.problems
        assert problem.field == "spec.template.metadata.name"
        assert "default/hello-x-00001" in problem.message
        assert history.revisions(NS, "hello-x") == ()


def test_a_history_from_a_newer_version_is_refused_by_name(state_dir: Path) -> None:
    state_dir.mkdir()
    path = state_dir / FILE_NAME
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(HistoryError, match=rf"{FILE_NAME}: written by a newer"):
        RevisionHistory(path).open()


def test_a_file_that_is_not_a_database_is_refused_by_name(state_dir: Path) -> None:
    state_dir.mkdir()
    path = state_dir / FILE_NAME
    path.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(HistoryError, match=rf"{FILE_NAME}: not a usable revision history"):
        RevisionHistory(path).open()


def test_using_a_closed_history_says_so(state_dir: Path) -> None:
    history = RevisionHistory.in_state_dir(state_dir)
    with pytest.raises(HistoryError, match="not open"):
        history.revisions(NS, "hello")


def test_two_handles_on_one_file_see_each_others_writes(state_dir: Path) -> None:
    with (
        RevisionHistory.in_state_dir(state_dir) as a,
        RevisionHistory.in_state_dir(state_dir) as b,
    ):
        apply(a, service(env="one"))
        assert made(apply(b, service(env="two"))) == ["hello-00002"]
        assert made(apply(a, service(env="two"))) == []


def test_the_default_state_dir_is_per_user() -> None:
    home = Path("/home/someone")
    assert default_state_dir({}, home) == home / ".local/state/knative-xds"
    assert default_state_dir({"XDG_STATE_HOME": "/x"}, home) == Path("/x/knative-xds")
    assert os.fspath(default_state_dir({"XDG_STATE_HOME": ""}, home)).endswith(
        ".local/state/knative-xds"
    )
