"""The gateway Envoy keeps its own stats, and a revision's cluster stats only when asked."""

from __future__ import annotations

import asyncio

import pytest

from knative_xds import synth as s
from knative_xds.envoy import EnvoyStats

HELLO = "hello.default.example.com"
REVISION_REQUESTS = "cluster.default/hello-00001.upstream_rq_total"


@pytest.mark.parametrize(
    ("stats", "revision_stats_kept"),
    [(EnvoyStats.GATEWAY, False), (EnvoyStats.ALL, True)],
    ids=["gateway-default", "all"],
)
async def test_a_revisions_request_stats_are_kept_only_with_all_stats(
    sotw_gateway, stats, revision_stats_kept
):
    sotw_gateway.stats = stats
    hello = await sotw_gateway.ready_revisions("hello-00001")
    await sotw_gateway.start([s.route("hello", [s.target("hello-00001", 100)]), *hello])
    await sotw_gateway.wait_served(HELLO, "hello-00001")
    assert await sotw_gateway.tally(HELLO, 5) == {"hello-00001": 5}

    revision = await asyncio.to_thread(sotw_gateway.envoy_stats, r"^cluster\.default/")
    managed = await asyncio.to_thread(sotw_gateway.envoy_stats, r"^cluster_manager\.")
    listener = await asyncio.to_thread(sotw_gateway.envoy_stats, r"^http\.external\.")

    if revision_stats_kept:
        assert revision[REVISION_REQUESTS] >= 5
    else:
        assert revision == {}
        # The listener's own request counts stay; its per-route-table RDS stats do not.
        assert not [name for name in listener if ".rds." in name]
    assert listener["http.external.downstream_rq_total"] >= 5
    assert managed["cluster_manager.active_clusters"] == 2  # xds and default/hello-00001
    assert managed["cluster_manager.warming_clusters"] == 0
