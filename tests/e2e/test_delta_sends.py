"""With Envoy on Delta ADS, a change to one revision sends that revision's resources only."""

from __future__ import annotations

import pytest

from knative_xds import synth as s
from knative_xds.resources import short
from knative_xds.server import stream as stream_module

HELLO = "hello.default.example.com"


@pytest.fixture
def sent(monkeypatch):
    """Every response the server encodes: (type, names sent, names removed)."""
    record: list[tuple[str, set[str], set[str]]] = []
    encode = stream_module.Stream._encode

    def recording(self, out, nonce, snapshot):
        record.append((short(out.type_url), set(out.resources), set(out.removed)))
        return encode(self, out, nonce, snapshot)

    monkeypatch.setattr(stream_module.Stream, "_encode", recording)
    return record


@pytest.mark.parametrize("gateway", ["delta"], indirect=True)
async def test_new_pods_for_one_revision_send_only_its_endpoints(gateway, sent):
    activator = await gateway.app("activator")
    revisions = await gateway.ready_revisions("hello-00001", "other-00001")
    pod = await gateway.app("hello-00002")
    objects = [
        s.route("hello", [s.target("hello-00001", 50), s.target("hello-00002", 50)]),
        s.route("other", [s.target("other-00001", 100)]),
        s.revision("hello-00002"),
        s.activator_slice("127.0.0.1", activator),
        *revisions,
    ]
    await gateway.start(objects)
    await gateway.wait_served(HELLO, "hello-00001")
    sent.clear()

    gateway.write([*objects, s.endpoint_slice("hello-00002", ["127.0.0.1"], pod, suffix="z")])
    await gateway.wait_until(
        lambda: any(t == "EDS" for t, _, _ in sent), what="the endpoints to be sent"
    )
    counts = await gateway.tally(HELLO, 200)

    assert sent == [("EDS", {"default/hello-00002"}, set())]
    assert counts.keys() == {"hello-00001", "hello-00002"}  # the new pod, no longer the activator


@pytest.mark.parametrize("gateway", ["delta"], indirect=True)
async def test_a_split_edit_sends_only_that_routes_tables(gateway, sent):
    revisions = await gateway.ready_revisions("hello-00001", "hello-00002", "other-00001")
    hello = [s.target("hello-00001", 100), s.target("hello-00002", 0, tag="next")]
    other = s.route("other", [s.target("other-00001", 100)])
    await gateway.start([s.route("hello", hello), other, *revisions])
    await gateway.wait_served(HELLO, "hello-00001")
    sent.clear()

    moved = [s.target("hello-00001", 0, tag="prev"), s.target("hello-00002", 100, tag="next")]
    gateway.write([s.route("hello", moved), other, *revisions])
    await gateway.wait_served(HELLO, "hello-00002")

    tables = {n for t, names, _ in sent if t == "RDS" for n in names}
    assert tables == {"external/default/hello", "internal/default/hello"}
    assert {t for t, _, _ in sent} <= {"RDS", "SRDS"}  # scopes only for the new tag host
    assert all("other" not in n for _, names, removed in sent for n in names | removed)
