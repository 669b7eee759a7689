"""Knative's KIngress probe hash, byte for byte as Go computes it.

Why it must be exact: Knative's ingress prober (knative/networking `pkg/ingress`,
`ComputeHash` and `InsertProbe`) puts in front of every path a copy that also matches
`K-Network-Hash: override` and sets `K-Network-Hash: <hash>`. It then probes each
gateway with that header and compares the hash the gateway echoes with its own: only
a match tells it the gateway serves this generation of the spec, and only then is the
KIngress marked ready. A hash off by one byte leaves every KIngress unready forever.

The hash is sha256 over Go's `encoding/json.Marshal(ing.Spec)`, then the namespace,
then the name. Go marshals the typed `IngressSpec` struct, not the map it was decoded
from, so the encoder below walks a table of the Go struct shapes (field order, json
tags, `omitempty`) over the spec as a dict, decoding it first as Go would:
- unknown fields are dropped; keys match exactly (Kubernetes decodes case-sensitively);
- null and absent are alike: Go leaves the zero value ("" , 0, nil slice or map);
- a slice without `omitempty` tells nil from empty: absent/null is `null`, `[]` is `[]`
  (so `paths`/`splits` keep whichever the object says, as Go's decoder would);
- a pointer (`http`) is omitted only when absent/null; `http: {}` is `{"paths":null}`;
- map keys are sorted by their UTF-8 bytes (Python's code point order is the same);
- `servicePort` is an IntOrString: a number stays a number, a string a string.
Values of the wrong type raise ObjectError (Go's decoder would have refused them).
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from .objects import ObjectError

HASH_HEADER = "K-Network-Hash"
HASH_OVERRIDE = "override"


class Scalar(enum.Enum):
    STRING = "string"
    INT = "int"  # Go `int`: 64 bits
    INT_OR_STRING = "IntOrString"  # a struct in Go (never "empty"); its int is an int32


class Field(NamedTuple):
    key: str  # the json tag's name
    shape: Shape
    omitempty: bool


@dataclass(frozen=True, slots=True)
class Struct:
    fields: tuple[Field, ...]  # in Go's declaration order, which is the output order


@dataclass(frozen=True, slots=True)
class Slice:
    of: Shape


@dataclass(frozen=True, slots=True)
class Map:
    of: Shape  # keys are strings


@dataclass(frozen=True, slots=True)
class Ptr:
    to: Shape


Shape = Scalar | Struct | Slice | Map | Ptr
S, INT, IOS = Scalar.STRING, Scalar.INT, Scalar.INT_OR_STRING
OMIT, ALWAYS = True, False  # `json:",omitempty"` or not


def _struct(*fields: tuple[str, Shape, bool]) -> Struct:
    return Struct(tuple(Field(*f) for f in fields))


# The shapes of knative/networking `ingress_types.go`. `IngressBackendSplit` embeds
# `IngressBackend` inline, so its three fields come first, at the split's level.
_SPLIT = _struct(
    ("serviceNamespace", S, ALWAYS),
    ("serviceName", S, ALWAYS),
    ("servicePort", IOS, ALWAYS),
    ("percent", INT, OMIT),
    ("appendHeaders", Map(S), OMIT),
)
_PATH = _struct(
    ("path", S, OMIT),
    ("rewriteHost", S, OMIT),
    ("headers", Map(_struct(("exact", S, ALWAYS))), OMIT),
    ("splits", Slice(_SPLIT), ALWAYS),
    ("appendHeaders", Map(S), OMIT),
)
_HTTP = _struct(("paths", Slice(_PATH), ALWAYS))
_RULE = _struct(("hosts", Slice(S), OMIT), ("visibility", S, OMIT), ("http", Ptr(_HTTP), OMIT))
_TLS = _struct(("hosts", Slice(S), OMIT), ("secretName", S, OMIT), ("secretNamespace", S, OMIT))
INGRESS_SPEC = _struct(
    ("tls", Slice(_TLS), OMIT), ("rules", Slice(_RULE), OMIT), ("httpOption", S, OMIT)
)

_INT_RANGE = {INT: (-(2**63), 2**63 - 1), IOS: (-(2**31), 2**31 - 1)}
# What Go's encoder escapes with HTML escaping on (json.Marshal's default); the rest
# of the text, non-ASCII included, is written as raw UTF-8.
_ESCAPE = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029]')
_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Python strings hold no invalid UTF-8, only lone surrogates (a JSON `\ud800`); Go's
# decoder turns those into U+FFFD before the spec is ever marshalled.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _string(s: str) -> bytes:
    # `\b` and `\f` are short escapes since Go 1.22 (Knative builds with a newer Go).
    body = _ESCAPE.sub(
        lambda m: _SHORT.get(m[0]) or f"\\u{ord(m[0]):04x}", _SURROGATE.sub("\ufffd", s)
    )
    return f'"{body}"'.encode()


def _empty(shape: Shape, value: Any) -> bool:
    """Go's `omitempty` test, on a value `_encode` has already type-checked."""
    if isinstance(shape, Struct) or shape is IOS:
        return False
    return value is None if isinstance(shape, Ptr) else not value


def _wrap(open_: bytes, parts: Iterable[bytes], close: bytes) -> bytes:
    return open_ + b",".join(parts) + close


def _encode(shape: Shape, value: Any, at: str) -> bytes:
    """`value` as Go writes it once decoded into `shape`; `at` is its path, for errors."""
    if isinstance(shape, Struct):
        value = {} if value is None else value
        if not isinstance(value, Mapping):
            raise ObjectError(at, f"must be an object, not {type(value).__name__}")
        kept = []
        for f in shape.fields:
            item = value.get(f.key)
            encoded = _encode(f.shape, item, f"{at}.{f.key}")  # type-checks even if omitted
            if not (f.omitempty and _empty(f.shape, item)):
                kept.append(b'"%s":%s' % (f.key.encode(), encoded))
        return _wrap(b"{", kept, b"}")
    if value is None:
        return b'""' if shape is S else b"0" if isinstance(shape, Scalar) else b"null"
    if isinstance(shape, Ptr):
        return _encode(shape.to, value, at)
    if isinstance(shape, Slice):
        if not isinstance(value, list | tuple):
            raise ObjectError(at, f"must be a list, not {type(value).__name__}")
        return _wrap(b"[", (_encode(shape.of, v, f"{at}[{i}]") for i, v in enumerate(value)), b"]")
    if isinstance(shape, Map):
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ObjectError(at, "must be an object with string keys")
        # Keys as Go holds them; of two that become one, the later wins (as in Go's decoder).
        keys = {_SURROGATE.sub("\ufffd", k): k for k in value}
        entries = (
            b"%s:%s" % (_string(n), _encode(shape.of, value[k], f"{at}[{k!r}]"))
            for n, k in sorted(keys.items())
        )
        return _wrap(b"{", entries, b"}")
    if isinstance(value, str) and shape in (S, IOS):
        return _string(value)
    if shape is S or isinstance(value, bool) or not isinstance(value, int):
        raise ObjectError(at, f"must be {shape.value}, not {type(value).__name__}")
    low, high = _INT_RANGE[shape]
    if not low <= value <= high:
        raise ObjectError(at, f"{value} does not fit {shape.value}")
    return str(value).encode()


def go_spec_json(spec: Mapping[str, Any]) -> bytes:
    """`spec` as Go's `json.Marshal` writes the `IngressSpec` it decodes to."""
    return _encode(INGRESS_SPEC, spec, "spec")


def compute_hash(spec: Mapping[str, Any], namespace: str, name: str) -> str:
    """Knative's `ComputeHash` of a KIngress, as the lowercase hex it puts in headers."""
    return hashlib.sha256(go_spec_json(spec) + namespace.encode() + name.encode()).hexdigest()
