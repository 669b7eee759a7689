"""A Resource's hand-framed bytes are exactly what protobuf would serialize."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from knative_xds.resources import CLUSTER, Resource


@pytest.mark.parametrize(
    "name", ["a/b", "x" * 200, "ns/" + "r" * 20_000], ids=["short", "long", "huge"]
)
def test_entries_match_protobufs_own_serialization(name):
    msg = cluster_pb2.Cluster(name=name, alt_stat_name="s" * len(name))
    resource = Resource.of(msg, name=name)
    packed = any_pb2.Any(type_url=CLUSTER, value=msg.SerializeToString(deterministic=True))

    sotw = discovery_pb2.DiscoveryResponse(resources=[packed]).SerializeToString()
    delta = discovery_pb2.DeltaDiscoveryResponse(
        resources=[discovery_pb2.Resource(version=resource.version, resource=packed, name=name)]
    ).SerializeToString()

    assert resource.sotw_entry == sotw
    assert resource.delta_entry == delta
    assert resource.message(cluster_pb2.Cluster) == msg


def test_equal_content_has_equal_versions_and_different_content_does_not():
    a = Resource.of(cluster_pb2.Cluster(name="a"), name="a")
    again = Resource.of(cluster_pb2.Cluster(name="a"), name="a")
    other = Resource.of(cluster_pb2.Cluster(name="b"), name="a")
    assert a.version == again.version
    assert a.version != other.version


def test_refs_are_sorted_each_once_and_none_is_the_empty_tuple():
    table = Resource.of(cluster_pb2.Cluster(name="a"), name="a", refs=["ns/b", "ns/a", "ns/b"])
    assert table.refs == ("ns/a", "ns/b")
    assert Resource.of(cluster_pb2.Cluster(name="a"), name="a").refs == ()


def test_delta_entry_is_built_once_and_kept():
    resource = Resource.of(cluster_pb2.Cluster(name="a"), name="a")
    assert resource.delta_entry is resource.delta_entry
