"""One file's YAML documents as objects of the kinds the model reads.

Pure: text in, a `Parsed` out. A document that is not an object is a problem
named by its position; a Knative `serving.knative.dev/v1` Service is read (the
serving stage, `knative_xds.serving.stage`, turns it into Revisions and a Route),
a core/v1 Service too (a KIngress backend); an object of a kind or apiVersion
nothing here reads is `Ignored` (said, but not a problem); an object defined twice in one file is
a problem on `metadata.name`. A file that is not valid YAML is one problem of
kind "file", which `FileSource` takes as "change nothing this file held".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..model import ObjectKey, Problem, RawObject, yamltext
from ..model.kinds import SERVICE, SERVING, Ident, accepts


@dataclass(frozen=True, slots=True, order=True)
class Ignored:
    """An object in a file that the model does not read: said, but not a problem."""

    origin: str
    kind: str
    name: str  # ns/name
    why: str

    def __str__(self) -> str:
        return f"{self.origin}: {self.kind} {self.name} skipped: {self.why}"


@dataclass(slots=True)
class Parsed:
    """One file's documents: the objects read, the problems found, the objects skipped."""

    objects: dict[Ident, RawObject] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)


def parse_documents(path: Path, text: str) -> Parsed:
    """Objects of the kinds we read from one file's YAML documents; problems for the rest."""
    origin = str(path)
    parsed = Parsed()
    try:
        docs = load_documents(text)
    except yamltext.YamlError as e:
        parsed.problems.append(Problem(origin, "file", "", "", f"not valid YAML: {e}"))
        return parsed
    for index, doc in enumerate(_flatten(docs)):
        if doc is None:
            continue
        read = _raw_object(origin, index, doc)
        if isinstance(read, Problem):
            parsed.problems.append(read)
        elif isinstance(read, Ignored):
            parsed.ignored.append(read)
        else:
            if read.ident in parsed.objects:
                parsed.problems.append(
                    Problem(
                        origin,
                        read.kind,
                        str(read.key),
                        "metadata.name",
                        "is defined twice in this file",
                    )
                )
            parsed.objects[read.ident] = read
    return parsed


def load_documents(text: str) -> list[Any]:
    """Every YAML document in `text`.

    yaml-rs (Rust) parses these files about 14x faster than PyYAML's C loader,
    which decides cold start with thousands of files. It returns a list for a
    multi-document stream and the document itself otherwise, so the separator
    tells a stream from a single document that happens to be a list.
    """
    # With limits on size, depth and alias expansion (model/yamltext.py).
    return yamltext.documents(text)


def _flatten(docs: Iterable[Any]) -> Iterable[Any]:
    """`kind: List` documents (as `kubectl get -o yaml` prints) hold their objects in `items`."""
    for doc in docs:
        if (
            isinstance(doc, Mapping)
            and doc.get("kind") == "List"
            and isinstance(doc.get("items"), list)
        ):
            yield from doc["items"]
        else:
            yield doc


def _raw_object(origin: str, index: int, doc: Any) -> RawObject | Problem | Ignored:
    where = f"document {index + 1}"
    if not isinstance(doc, Mapping):
        return Problem(origin, "file", where, "", "must be a mapping (a Kubernetes object)")
    kind = doc.get("kind")
    meta = doc.get("metadata")
    if not isinstance(kind, str) or not isinstance(meta, Mapping) or not meta.get("name"):
        return Problem(origin, "file", where, "", "needs kind and metadata.name")
    api_version = str(doc.get("apiVersion") or "")
    accepted = accepts(kind, api_version)
    # Knative's Service shares its kind's name with core/v1's: told apart by apiVersion.
    knative_service = kind == SERVICE and api_version == SERVING
    if not accepted.ok and not knative_service:
        key = ObjectKey(str(meta.get("namespace") or "default"), str(meta["name"]))
        return Ignored(origin, kind, str(key), accepted.why)
    return RawObject.from_dict(doc, origin)
