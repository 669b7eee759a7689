"""Knative's KIngress probe hash: our bytes must be Go's bytes.

Knative's prober compares the `K-Network-Hash` a gateway echoes with the hash it
computes in Go; any difference in the encoded spec keeps a KIngress unready. The
vectors were computed by Go's `encoding/json` and `crypto/sha256`; the table rows pin
one encoding rule each, with the expected bytes written out by hand; the property test
checks the output against an independent projection of the spec onto Go's struct.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from knative_xds.model.objects import ObjectError
from knative_xds.model.probe import (
    HASH_HEADER,
    HASH_OVERRIDE,
    compute_hash,
    go_spec_json,
)

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - the property test says so when it skips
    st = None

IN_REPO = Path(__file__).parent / "data" / "kingress-hash-vectors.json"
# The same Go-computed vectors in `shared/` beside the checkout, when there is one.
SHARED = Path(__file__).resolve().parents[2] / "shared" / "kingress" / "hash-vectors.json"

VECTORS: list[dict[str, Any]] = json.loads(IN_REPO.read_text(encoding="utf-8"))


def _assert_matches_go(vector: dict[str, Any]) -> None:
    assert go_spec_json(vector["spec"]) == vector["go_spec_json"].encode()
    assert compute_hash(vector["spec"], vector["namespace"], vector["name"]) == vector["hash"]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_go_vector_gives_go_json_and_hash(vector: dict[str, Any]) -> None:
    _assert_matches_go(vector)


def test_shared_vectors_pass_and_equal_the_in_repo_copy() -> None:
    if not SHARED.is_file():
        pytest.skip("no shared Go vectors beside this checkout; the in-repo copy was tested")
    shared = json.loads(SHARED.read_text(encoding="utf-8"))
    for vector in shared:
        _assert_matches_go(vector)
    assert shared == VECTORS, "tests/data/kingress-hash-vectors.json is stale: copy it again"


def test_hash_is_sha256_of_json_then_namespace_then_name() -> None:
    spec = {"rules": [{"hosts": ["a.b"]}]}
    want = hashlib.sha256(b'{"rules":[{"hosts":["a.b"]}]}' + b"ns" + b"name").hexdigest()
    assert compute_hash(spec, "ns", "name") == want
    # Moving a character between namespace and name changes nothing in Go either.
    assert compute_hash(spec, "nsn", "ame") == want
    assert compute_hash(spec, "ns", "other") != want


def test_probe_header_constants_are_knatives() -> None:
    assert (HASH_HEADER, HASH_OVERRIDE) == ("K-Network-Hash", "override")


def _path(**path: Any) -> dict[str, Any]:
    return {"rules": [{"http": {"paths": [path]}}]}


def _split(**split: Any) -> dict[str, Any]:
    return _path(splits=[split])


P = b'{"rules":[{"http":{"paths":[%s]}}]}'
S = P % b'{"splits":[%s]}'
EMPTY_SPLIT = b'"serviceNamespace":"","serviceName":"","servicePort":0'

ENCODING_RULES = [
    pytest.param({}, b"{}", id="empty spec is an empty object"),
    pytest.param(_split(percent=0), S % b"{%s}" % EMPTY_SPLIT, id="percent 0 is omitted"),
    pytest.param(
        _split(percent=100), S % b'{%s,"percent":100}' % EMPTY_SPLIT, id="percent 100 is written"
    ),
    pytest.param(
        _split(servicePort="http2"),
        S % b'{"serviceNamespace":"","serviceName":"","servicePort":"http2"}',
        id="servicePort string stays a string",
    ),
    pytest.param(
        _split(servicePort="80"),
        S % b'{"serviceNamespace":"","serviceName":"","servicePort":"80"}',
        id="servicePort numeric string stays a string",
    ),
    pytest.param(
        _split(servicePort=81, serviceName="s", serviceNamespace="n"),
        S % b'{"serviceNamespace":"n","serviceName":"s","servicePort":81}',
        id="servicePort int is a number; backend fields inline in struct order",
    ),
    pytest.param(
        _split(serviceName=None, servicePort=None),
        S % b"{%s}" % EMPTY_SPLIT,
        id="null backend fields are Go zero values, still written",
    ),
    pytest.param(
        _split(appendHeaders={"b": "2", "B": "1", "a": "3", "\u00e9": "4", "z": "5"}),
        S % b'{%s,"appendHeaders":{"B":"1","a":"3","b":"2","z":"5","\xc3\xa9":"4"}}' % EMPTY_SPLIT,
        id="map keys sorted by UTF-8 bytes",
    ),
    pytest.param(
        _path(headers={"Y": {"exact": "v"}, "X": {}}, splits=None),
        P % b'{"headers":{"X":{"exact":""},"Y":{"exact":"v"}},"splits":null}',
        id="header match exact always written; absent splits is null",
    ),
    pytest.param(
        _path(headers={"X": None}, appendHeaders={"K": None}, splits=[]),
        P % b'{"headers":{"X":{"exact":""}},"splits":[],"appendHeaders":{"K":""}}',
        id="null map values are zero values; empty splits is []",
    ),
    pytest.param(
        _path(path="", rewriteHost="", headers={}, appendHeaders={}, splits=[]),
        P % b'{"splits":[]}',
        id="empty omitempty strings and maps are dropped",
    ),
    pytest.param(
        {"tls": [], "rules": [], "httpOption": ""},
        b"{}",
        id="empty omitempty lists and strings at the top are dropped",
    ),
    pytest.param(
        {"rules": [{"http": {}}, {"http": None}, {}, {"http": {"paths": []}}]},
        b'{"rules":[{"http":{"paths":null}},{},{},{"http":{"paths":[]}}]}',
        id="http pointer omitted only when absent or null",
    ),
    pytest.param(
        {"rules": [{"hosts": [], "visibility": ""}, {"hosts": ["a", None]}]},
        b'{"rules":[{},{"hosts":["a",""]}]}',
        id="empty hosts and visibility dropped; null list item is empty string",
    ),
    pytest.param(
        {"httpOption": "Enabled", "rules": [{"visibility": "ClusterLocal", "hosts": ["h"]}]},
        b'{"rules":[{"hosts":["h"],"visibility":"ClusterLocal"}],"httpOption":"Enabled"}',
        id="struct order not input order",
    ),
    pytest.param(
        {
            "tls": [{"secretNamespace": "ns", "hosts": ["h"], "secretName": "s"}],
            "status": {"ready": True},
            "rules": [{"http": {"paths": [{"splits": [], "timeout": "5s"}], "x": 1}, "y": []}],
            "Rules": [{"hosts": ["h"]}],
        },
        b'{"tls":[{"hosts":["h"],"secretName":"s","secretNamespace":"ns"}],'
        b'"rules":[{"http":{"paths":[{"splits":[]}]}}]}',
        id="unknown and wrong-case fields dropped at every level",
    ),
    pytest.param(
        _path(path="<a>&b", rewriteHost="x\u2028y\u2029z", splits=[]),
        P % b'{"path":"\\u003ca\\u003e\\u0026b","rewriteHost":"x\\u2028y\\u2029z","splits":[]}',
        id="HTML characters and line separators escaped",
    ),
    pytest.param(
        _path(path='q"b\\s/', splits=[]),
        P % b'{"path":"q\\"b\\\\s/","splits":[]}',
        id="quote and backslash escaped, slash raw",
    ),
    pytest.param(
        _path(path="\n\r\t\b\f\x00\x01\x1b\x1f\x7f", splits=[]),
        P % b'{"path":"\\n\\r\\t\\b\\f\\u0000\\u0001\\u001b\\u001f\x7f","splits":[]}',
        id="control characters short or lowercase \\u00XX, DEL raw",
    ),
    pytest.param(
        _path(path="\u00e9\u4e2d\U0001f600\ufffd", splits=[]),
        P % b'{"path":"%s","splits":[]}' % "\u00e9\u4e2d\U0001f600\ufffd".encode(),
        id="non-ASCII written raw as UTF-8",
    ),
    pytest.param(
        _path(path="a\ud800b", appendHeaders={"\udc00": "v"}, splits=[]),
        P % b'{"path":"a\xef\xbf\xbdb","splits":[],"appendHeaders":{"\xef\xbf\xbd":"v"}}',
        id="lone surrogates become U+FFFD as Go's decoder makes them",
    ),
]


@pytest.mark.parametrize(("spec", "want"), ENCODING_RULES)
def test_encoding_rule(spec: dict[str, Any], want: bytes) -> None:
    assert go_spec_json(spec) == want


def test_output_does_not_depend_on_input_key_order() -> None:
    vector = VECTORS[-1]

    def reversed_keys(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: reversed_keys(value[k]) for k in reversed(list(value))}
        return [reversed_keys(v) for v in value] if isinstance(value, list) else value

    spec = reversed_keys(vector["spec"])
    assert list(spec) != list(vector["spec"])
    assert go_spec_json(spec) == vector["go_spec_json"].encode()


REFUSED = [
    pytest.param(
        _split(percent="50"), "spec.rules[0].http.paths[0].splits[0].percent", id="percent string"
    ),
    pytest.param(
        _split(percent=True), "spec.rules[0].http.paths[0].splits[0].percent", id="percent bool"
    ),
    pytest.param(
        _split(percent=50.0), "spec.rules[0].http.paths[0].splits[0].percent", id="percent float"
    ),
    pytest.param(
        _split(percent=2**63),
        "spec.rules[0].http.paths[0].splits[0].percent",
        id="percent over int64",
    ),
    pytest.param(
        _split(servicePort=2**31),
        "spec.rules[0].http.paths[0].splits[0].servicePort",
        id="port over int32",
    ),
    pytest.param(
        _split(serviceName=3), "spec.rules[0].http.paths[0].splits[0].serviceName", id="name int"
    ),
    pytest.param({"rules": {"hosts": []}}, "spec.rules", id="rules not a list"),
    pytest.param({"rules": ["r"]}, "spec.rules[0]", id="rule not an object"),
    pytest.param({"tls": [{"hosts": "h"}]}, "spec.tls[0].hosts", id="hosts a string"),
    pytest.param(
        _path(appendHeaders={1: "x"}), "spec.rules[0].http.paths[0].appendHeaders", id="int key"
    ),
    pytest.param(
        _path(appendHeaders={"On": True}),
        "spec.rules[0].http.paths[0].appendHeaders['On']",
        id="bool value",
    ),
]


@pytest.mark.parametrize(("spec", "field"), REFUSED)
def test_values_go_would_not_decode_are_refused_with_their_field(spec: Any, field: str) -> None:
    with pytest.raises(ObjectError) as caught:
        go_spec_json(spec)
    assert caught.value.field == field


# The property test's oracle: Go's decode-then-encode written per struct, as plain
# functions over JSON values (objects as lists of pairs, so key order is compared too).


@dataclass(frozen=True)
class _Obj:
    """A decoded JSON object, keys in the order written (an empty one is no empty list)."""

    pairs: tuple[tuple[str, Any], ...]


def _keep(*items: tuple[str, Any, bool]) -> _Obj:
    return _Obj(tuple((key, value) for key, value, keep in items if keep))


def _o_list(value: Any, item: Any) -> Any:
    return None if value is None else [item(v) for v in value]


def _o_str(value: Any) -> str:
    """A string as Go holds it: null is "", a lone surrogate (from `\\ud800`) is U+FFFD."""
    return "" if value is None else re.sub("[\ud800-\udfff]", "\ufffd", value)


def _o_map(value: Any, item: Any) -> Any:
    if value is None:
        return None
    decoded = {_o_str(k): item(v) for k, v in value.items()}  # later duplicate wins
    return _Obj(tuple((k, decoded[k]) for k in sorted(decoded)))


def _o_split(s: Any) -> Any:
    s = s or {}
    port = s.get("servicePort")
    return _keep(
        ("serviceNamespace", _o_str(s.get("serviceNamespace")), True),
        ("serviceName", _o_str(s.get("serviceName")), True),
        ("servicePort", _o_str(port) if isinstance(port, str) else port or 0, True),
        ("percent", s.get("percent"), bool(s.get("percent"))),
        ("appendHeaders", _o_map(s.get("appendHeaders"), _o_str), bool(s.get("appendHeaders"))),
    )


def _o_path(p: Any) -> Any:
    p = p or {}
    return _keep(
        ("path", _o_str(p.get("path")), bool(p.get("path"))),
        ("rewriteHost", _o_str(p.get("rewriteHost")), bool(p.get("rewriteHost"))),
        (
            "headers",
            _o_map(p.get("headers"), lambda h: _Obj((("exact", _o_str((h or {}).get("exact"))),))),
            bool(p.get("headers")),
        ),
        ("splits", _o_list(p.get("splits"), _o_split), True),
        ("appendHeaders", _o_map(p.get("appendHeaders"), _o_str), bool(p.get("appendHeaders"))),
    )


def _o_rule(r: Any) -> Any:
    r = r or {}
    http = r.get("http")
    return _keep(
        ("hosts", _o_list(r.get("hosts"), _o_str), bool(r.get("hosts"))),
        ("visibility", _o_str(r.get("visibility")), bool(r.get("visibility"))),
        (
            "http",
            http is not None and _Obj((("paths", _o_list(http.get("paths"), _o_path)),)),
            http is not None,
        ),
    )


def _o_tls(t: Any) -> Any:
    t = t or {}
    return _keep(
        ("hosts", _o_list(t.get("hosts"), _o_str), bool(t.get("hosts"))),
        ("secretName", _o_str(t.get("secretName")), bool(t.get("secretName"))),
        ("secretNamespace", _o_str(t.get("secretNamespace")), bool(t.get("secretNamespace"))),
    )


def _o_spec(spec: Any) -> Any:
    return _keep(
        ("tls", _o_list(spec.get("tls"), _o_tls), bool(spec.get("tls"))),
        ("rules", _o_list(spec.get("rules"), _o_rule), bool(spec.get("rules"))),
        ("httpOption", _o_str(spec.get("httpOption")), bool(spec.get("httpOption"))),
    )


if st is not None:
    # Text with the characters Go escapes mixed in; st.characters() makes lone surrogates too.
    _text = st.text(
        st.characters() | st.sampled_from('<>&"\\\u2028\u2029\b\f\n\x00\x7f\u00e9'), max_size=8
    )
    _unknown = st.dictionaries(
        st.sampled_from(["status", "unknown", "Paths", "timeout"]),
        st.none() | st.integers() | _text | st.lists(st.integers(), max_size=2),
        max_size=2,
    )

    def _nullable(values: Any) -> Any:
        """Mostly a value, sometimes null: deep specs must still come up often."""
        return st.integers(0, 4).flatmap(lambda n: st.none() if n == 0 else values)

    @st.composite
    def _obj(draw: Any, fields: dict[str, Any]) -> dict[str, Any]:
        """A dict with most of `fields` (some null), unknown keys, in any key order."""
        items = list(draw(_unknown).items())
        for key, values in fields.items():
            if draw(st.integers(0, 4)):  # absent one time in five
                items.append((key, draw(_nullable(values))))
        return dict(draw(st.permutations(items)))

    def _lists(values: Any) -> Any:
        return st.lists(values, max_size=3)

    _headers = st.dictionaries(_text, _nullable(_text), max_size=3)
    _split_st = _obj(
        {
            "serviceNamespace": _text,
            "serviceName": _text,
            "servicePort": st.integers(-(2**31), 2**31 - 1) | _text,
            "percent": st.just(0) | st.integers(0, 100) | st.integers(-(2**63), 2**63 - 1),
            "appendHeaders": _headers,
        }
    )
    _path_st = _obj(
        {
            "path": _text,
            "rewriteHost": _text,
            "headers": st.dictionaries(_text, _nullable(_obj({"exact": _text})), max_size=3),
            "splits": _lists(_nullable(_split_st)),
            "appendHeaders": _headers,
        }
    )
    _rule_st = _obj(
        {
            "hosts": _lists(_nullable(_text)),
            "visibility": st.sampled_from(["", "ExternalIP", "ClusterLocal"]) | _text,
            "http": _obj({"paths": _lists(_nullable(_path_st))}),
        }
    )
    _tls_st = _obj({"hosts": _lists(_text), "secretName": _text, "secretNamespace": _text})
    specs = _obj(
        {
            "tls": _lists(_nullable(_tls_st)),
            "rules": _lists(_nullable(_rule_st)),
            "httpOption": st.sampled_from(["", "Enabled", "Redirected"]),
        }
    )

    @settings(max_examples=300, deadline=None)
    @given(specs)
    def test_output_is_json_of_the_spec_projected_onto_gos_struct(spec: dict[str, Any]) -> None:
        out = go_spec_json(spec)
        text = out.decode("utf-8")
        assert json.loads(text, object_pairs_hook=lambda p: _Obj(tuple(p))) == _o_spec(spec)
        # Go's escaping: none of these characters is ever written raw.
        assert not any(c in text for c in "<>&\u2028\u2029") and all(c >= " " for c in text)
        # Compact: no whitespace outside string literals.
        assert not re.search(r"\s", re.sub(r'"(?:[^"\\]|\\.)*"', "", text))

else:

    def test_output_is_json_of_the_spec_projected_onto_gos_struct() -> None:
        pytest.skip("hypothesis is not installed (it belongs in the project's test extra)")
