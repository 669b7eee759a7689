"""dispatch/path, dispatch/percentage, dispatch/path_and_percentage and dispatch/rule
(path.go, percentage.go, rule.go)."""

from __future__ import annotations

import asyncio

import pytest

from .env import DOMAIN, Conformance, object_name, rule, split
from .sampling import doubling_weights, split_errors, tally

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

WHICH = "Which-Backend"
HEADER = "Foo-Bar-Baz"
# Go's sample sizes: 1,000 requests for both. At 1,000 the widest bucket of the
# percentage split (37 %) has a standard deviation of 1.5 points against a margin
# of 10 (6.5 sd), and the 50/50 path split 15.8 requests against 150 (9.5 sd).
PERCENTAGE_REQUESTS = 1000
PATH_AND_PERCENTAGE_REQUESTS = 1000


async def test_dispatch_path(env: Conformance) -> None:
    """Paths are prefixes tried in order; the one without a path takes the rest."""
    (foo, foo_port), (bar, bar_port), (baz, baz_port), (name, port) = await asyncio.gather(
        *(env.create_runtime_service("dispatch/path") for _ in range(4))
    )
    paths = [
        {"path": p, "splits": [split(n, pt, appendHeaders={WHICH: n}, percent=100)]}
        for p, n, pt in (("/foo", foo, foo_port), ("/bar", bar, bar_port), ("/baz", baz, baz_port))
    ]
    paths.append({"splits": [split(name, port, appendHeaders={WHICH: name}, percent=100)]})
    host = f"{name}.{DOMAIN}"
    _, client = await env.create_ingress_ready("dispatch/path", {"rules": [rule([host], paths)]})
    want = {"/foo": foo, "/bar": bar, "/baz": baz, "": name, "/asdf": name}
    got = {}
    for path in want:
        got[path] = (await client.runtime_request(f"http://{host}{path}")).header(WHICH)
    assert got == want


async def test_dispatch_percentage(env: Conformance) -> None:
    """Ten splits of 1, 2, 4, 8, 16, 32, 37, 0, 0, 0 %: each within 10 points; 0 % gets none."""
    weights = doubling_weights()
    services = await asyncio.gather(
        *(env.create_runtime_service("dispatch/percentage") for _ in weights)
    )
    splits = [
        split(name, port, appendHeaders={HEADER: name}, percent=w)
        for (name, port), w in zip(services, weights, strict=True)
    ]
    host = f"{object_name('dispatch/percentage')}.{DOMAIN}"
    _, client = await env.create_ingress_ready(
        "dispatch/percentage", {"rules": [rule([host], [{"splits": splits}])]}
    )
    seen = await tally(client, f"http://{host}", HEADER, PERCENTAGE_REQUESTS)
    by_name = {name: w for (name, _), w in zip(services, weights, strict=True)}
    errors = split_errors(seen, by_name, PERCENTAGE_REQUESTS, margin=10.0)
    assert not errors, "\n".join(errors)


async def test_dispatch_path_and_percentage(env: Conformance) -> None:
    """/foo splits 50/50 between two backends (each within 15 % of half); the rest goes
    to a third."""
    (foo, foo_port), (bar, bar_port), (name, port) = await asyncio.gather(
        *(env.create_runtime_service("dispatch/path_and_percentage") for _ in range(3))
    )
    paths = [
        {
            "path": "/foo",
            "splits": [
                split(foo, foo_port, appendHeaders={WHICH: foo}, percent=50),
                split(bar, bar_port, appendHeaders={WHICH: bar}, percent=50),
            ],
        },
        {"splits": [split(name, port, appendHeaders={WHICH: name}, percent=100)]},
    ]
    host = f"{name}.{DOMAIN}"
    _, client = await env.create_ingress_ready(
        "dispatch/path_and_percentage", {"rules": [rule([host], paths)]}
    )
    total = PATH_AND_PERCENTAGE_REQUESTS
    seen = await tally(client, f"http://{host}/foo", WHICH, total)
    half, tolerance = total / 2, total * 0.15
    assert set(seen) <= {foo, bar}, f"{set(seen) - {foo, bar}} is not in {{{foo}, {bar}}}"
    for key, count in seen.items():
        assert abs(count - half) <= tolerance, (
            f"Header {key} got: {count} times, want in [{half - tolerance}, {half + tolerance}]"
        )


async def test_dispatch_rule(env: Conformance) -> None:
    """Two rules, one host each: a request goes to its host's rule."""
    (foo, foo_port), (bar, bar_port) = await asyncio.gather(
        *(env.create_runtime_service("dispatch/rule") for _ in range(2))
    )
    rules = [
        rule([f"{n}.{DOMAIN}"], [{"splits": [split(n, p)], "appendHeaders": {HEADER: n}}])
        for n, p in ((foo, foo_port), (bar, bar_port))
    ]
    _, client = await env.create_ingress_ready("dispatch/rule", {"rules": rules})
    for n in (foo, bar):
        got = (await client.runtime_request(f"http://{n}.{DOMAIN}")).header(HEADER)
        assert got == n, f"Header[{HEADER!r}] = {got!r}, wanted {n!r}"
