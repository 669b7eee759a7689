"""The one YAML parser: files and ConfigMap values, with limits on what a text may cost.

yaml-rs parses fast but expands every alias into a fresh copy, so a small text
can ask for gigabytes (`&a <1 MB string>` then `*a` a thousand times), and
block nesting has no depth limit of its own. Each text is checked before and
after parsing: its size, what its aliases would expand to (estimated from the
text, before any memory is spent), the nesting depth and the node count of
the result. Any breach is one `YamlError`, with a line when one is known.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any

import yaml_rs

MAX_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 1_000_000
# What aliases may add: this many times the text itself, but at least MIN_EXPANDED.
EXPANSION_FACTOR = 10
MIN_EXPANDED = 1_000_000

_SEPARATOR = re.compile(r"^---", re.MULTILINE)
# An anchor or alias token: it starts a node, so it follows the line start, a space or a
# flow indicator. Inside quoted strings this also matches; that only overestimates.
_TOKEN = re.compile(r"(?:^|(?<=[\s\[\]{},]))([&*])([^\s\[\]{},]+)", re.MULTILINE)


class YamlError(ValueError):
    """A text that is not valid YAML or is over a limit; `line` is 1-based when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.message = message
        self.line = line


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int = MAX_BYTES
    max_depth: int = MAX_DEPTH
    max_nodes: int = MAX_NODES


DEFAULT_LIMITS = Limits()


def documents(text: str | bytes, limits: Limits = DEFAULT_LIMITS) -> list[Any]:
    """Every YAML document in `text` (a list even for one document), or YamlError."""
    if isinstance(text, bytes):
        if len(text) > limits.max_bytes:
            raise YamlError(_too_big(len(text), limits))
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise YamlError(f"not UTF-8 (byte {e.start}): save the file as UTF-8") from None
    size = len(text.encode("utf-8", "surrogatepass")) if not text.isascii() else len(text)
    if size > limits.max_bytes:
        raise YamlError(_too_big(size, limits))
    _check_aliases(text)
    try:
        # Timestamps stay strings, as the Kubernetes API serves them.
        loaded = yaml_rs.loads(text, parse_datetime=False)
    except yaml_rs.YAMLDecodeError as e:
        raise YamlError(_summary(str(e))) from None
    except (RecursionError, MemoryError, OverflowError) as e:
        raise YamlError(f"cannot be parsed: {type(e).__name__}") from None
    # yaml-rs gives a list for a stream of several documents and the document itself
    # otherwise: the separator tells a stream from a single document that is a list.
    docs = loaded if isinstance(loaded, list) and _SEPARATOR.search(text) else [loaded]
    _check_shape(docs, limits)
    return docs


def load(text: str | bytes, limits: Limits = DEFAULT_LIMITS) -> Any:
    """The single document in `text` (None when empty), or YamlError."""
    docs = documents(text, limits)
    if len(docs) > 1:
        raise YamlError(f"holds {len(docs)} documents; give one")
    return docs[0] if docs else None


def _too_big(size: int, limits: Limits) -> str:
    return f"{size} bytes, over the limit of {limits.max_bytes}: split it into smaller files"


def _summary(error: str) -> str:
    lines = error.splitlines()
    return f"{lines[0]}: {lines[-1].strip()}" if len(lines) > 1 else error


def _check_aliases(text: str) -> None:
    """Refuse a text whose aliases would expand past the budget, before parsing it.

    An anchored node is taken to span the rest of its line, or, when it ends its
    line, the lines indented deeper than it. An alias costs the size of its anchor,
    which counts the aliases inside it at their own cost: an upper bound for nested
    (billion laughs) aliases too. Each anchor is sized once, when first named (its
    node has ended by then), from running sums, so this stays linear in the text.
    """
    if "*" not in text:
        return
    budget = max(MIN_EXPANDED, EXPANSION_FACTOR * len(text))
    anchors: dict[str, int] = {}  # name → offset of its latest definition
    sizes: dict[str, int] = {}
    offsets: list[int] = []  # the aliases seen, and their running cost
    running = [0]
    expanded = len(text)
    for m in _TOKEN.finditer(text):
        at, name = m.start(), m.group(2)
        if m.group(1) == "&":
            anchors[name] = at
            sizes.pop(name, None)  # a redefinition: sized afresh when named
            continue
        cost = sizes.get(name)
        if cost is None:
            a_at = anchors.get(name)
            if a_at is None:
                cost = 0  # yaml-rs refuses an unknown alias itself
            else:
                end = min(_span_end(text, a_at), at)
                inner = (
                    running[bisect.bisect_left(offsets, end)]
                    - running[bisect.bisect_right(offsets, a_at)]
                )
                cost = end - a_at + inner
            sizes[name] = cost
        expanded += cost
        offsets.append(at)
        running.append(running[-1] + cost)
        if expanded > budget:
            raise YamlError(
                f"aliases expand to more than {budget} bytes (alias *{name}): "
                "write the values out or use fewer aliases",
                text.count("\n", 0, at) + 1,
            )


def _span_end(text: str, at: int) -> int:
    line_start = text.rfind("\n", 0, at) + 1
    line_end = text.find("\n", at)
    if line_end < 0:
        return len(text)
    rest = text[at:line_end].split(None, 1)
    if len(rest) > 1 and not rest[1].startswith("#"):
        return line_end  # the anchored value is on its line
    indent = len(text[line_start:at]) - len(text[line_start:at].lstrip(" -"))
    pos = line_end + 1
    while pos < len(text):
        nl = text.find("\n", pos)
        nl = len(text) if nl < 0 else nl
        line = text[pos:nl]
        if line.strip() and len(line) - len(line.lstrip(" ")) <= indent:
            return pos
        pos = nl + 1
    return len(text)


def _check_shape(docs: list[Any], limits: Limits) -> None:
    """Depth and node count of the parsed result, walked without recursion."""
    nodes = 0
    stack: list[tuple[Any, int]] = [(d, 1) for d in docs]
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > limits.max_nodes:
            raise YamlError(f"more than {limits.max_nodes} values: split it")
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth >= limits.max_depth:
            raise YamlError(f"nested more than {limits.max_depth} levels deep")
        stack.extend((c, depth + 1) for c in children)
