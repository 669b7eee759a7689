"""Work per edit does not grow with the number of objects the files define."""

from __future__ import annotations

from pathlib import Path

from knative_xds.model import ObjectKey
from knative_xds.sources.file_owners import Owners


class _CountingDict(dict):
    """A dict that counts how often it is walked."""

    walks = 0

    def __iter__(self):
        type(self).walks += 1
        return super().__iter__()

    def items(self):
        type(self).walks += 1
        return super().items()

    def values(self):
        type(self).walks += 1
        return super().values()


def _ident(i: int):
    return ("Route", ObjectKey("default", f"svc-{i:05d}"))


def test_disputed_objects_are_found_without_walking_every_claim():
    owners = Owners()
    for i in range(2000):
        owners.claim(_ident(i), Path(f"svc-{i:05d}.yaml"))
    owners.claim(_ident(7), Path("other.yaml"))
    owners._claims = _CountingDict(owners._claims)
    _CountingDict.walks = 0

    disputed = owners.disputed()

    assert disputed == {_ident(7): [Path("svc-00007.yaml"), Path("other.yaml")]}
    assert _CountingDict.walks == 0


def test_an_object_is_no_longer_disputed_once_one_file_lets_go():
    owners = Owners()
    owners.claim(_ident(1), Path("a.yaml"))
    owners.claim(_ident(1), Path("b.yaml"))
    assert owners.disputed() == {_ident(1): [Path("a.yaml"), Path("b.yaml")]}

    owners.release(_ident(1), Path("a.yaml"))

    assert owners.disputed() == {}
    assert owners.owner(_ident(1)) == Path("b.yaml")
