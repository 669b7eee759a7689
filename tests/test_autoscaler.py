"""The autoscaler's decision, as a table: what is in flight, the revision's limits, the idle
time and grace period in; how many processes, and the reason logged, out."""

from __future__ import annotations

import pytest

from knative_xds import synth as s
from knative_xds.local.autoscaler import (
    Autoscaler,
    Load,
    ScaleSpec,
    decide,
    parse_clusters,
    scale_spec,
)
from knative_xds.model import ObjectKey, RawObject

CASES = [
    # id, current, peak, idle_for, spec, grace, desired, reason contains
    ("in flight at the target stays at one", 1, 100, 0, ScaleSpec(), 30, 1, "100 in flight"),
    ("one over the target needs a second", 1, 101, 0, ScaleSpec(), 30, 2, "target 100"),
    ("a low target scales out", 1, 5, 0, ScaleSpec(target=2), 30, 3, "target 2 per process"),
    (
        "containerConcurrency lowers the target",
        1,
        10,
        0,
        ScaleSpec(target=100, container_concurrency=4),
        30,
        3,
        "target 4 per process",
    ),
    (
        "max-scale bounds a scale-up",
        1,
        50,
        0,
        ScaleSpec(target=1, max_scale=3),
        30,
        3,
        "max-scale 3",
    ),
    ("idle within the grace keeps one", 3, 0, 5, ScaleSpec(), 30, 1, "5.0 s of the 30 s grace"),
    ("idle past the grace goes to zero", 1, 0, 31, ScaleSpec(), 30, 0, "no traffic for 31.0 s"),
    ("min-scale keeps processes at rest", 1, 0, 100, ScaleSpec(min_scale=2), 30, 2, "min-scale 2"),
    ("at zero with nothing waiting stays at zero", 0, 0, 0, ScaleSpec(), 30, 0, "no traffic"),
    ("at zero with requests held wakes", 0, 3, 0, ScaleSpec(), 30, 1, "3 in flight"),
    ("a short grace for tests", 1, 0, 1.5, ScaleSpec(), 1, 0, "grace period 1 s"),
]


@pytest.mark.parametrize(
    ("current", "peak", "idle_for", "spec", "grace", "desired", "reason"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_decide(current, peak, idle_for, spec, grace, desired, reason):
    decision = decide(current=current, peak=peak, idle_for=idle_for, spec=spec, grace=grace)
    assert decision.desired == desired, decision
    assert reason in decision.reason, decision.reason


def _revision(**annotations: str) -> RawObject:
    body = s.revision("r-00001", annotations=annotations, command=["app"])
    body["spec"]["containerConcurrency"] = 8
    return RawObject.from_dict(body, "r.yaml")


def test_scale_spec_reads_knatives_annotations_and_container_concurrency():
    spec = scale_spec(
        _revision(
            **{
                "autoscaling.knative.dev/target": "2.5",
                "autoscaling.knative.dev/min-scale": "1",
                "autoscaling.knative.dev/max-scale": "4",
                "autoscaling.knative.dev/initial-scale": "0",
            }
        )
    )
    assert spec == ScaleSpec(
        target=2.5, container_concurrency=8, min_scale=1, max_scale=4, initial_scale=0
    )
    assert spec.first_count == 1  # initial-scale 0, but min-scale 1 wins


def test_a_bad_annotation_is_logged_with_revision_file_and_name_and_its_default_used(caplog):
    spec = scale_spec(_revision(**{"autoscaling.knative.dev/target": "lots"}))
    assert spec.target == 100
    assert "default/r-00001 (r.yaml): autoscaling.knative.dev/target='lots'" in caplog.text


def test_envoy_endpoint_stats_are_summed_per_cluster_and_absent_values_are_zero():
    status = {
        "cluster_statuses": [
            {
                "name": "default/r-00001",
                "host_statuses": [
                    {
                        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 81}},
                        "stats": [{"name": "rq_active", "value": "2"}, {"name": "rq_total"}],
                    },
                    {
                        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 82}},
                        "stats": [
                            {"name": "rq_active", "value": "1"},
                            {"name": "rq_total", "value": "7"},
                        ],
                    },
                ],
            }
        ]
    }
    assert parse_clusters(status) == {"default/r-00001": {81: Load(2, 0), 82: Load(1, 7)}}


class FakeRevisions:
    def __init__(self, spec: ScaleSpec) -> None:
        self.key = ObjectKey("default", "r-00001")
        self.spec = spec
        self.n = 1
        self.calls: list[int] = []

    def specs(self):
        return {self.key: self.spec}

    def count(self, key):
        return self.n

    def scale(self, key, count):
        self.calls.append(count)
        self.n = count


async def test_the_peak_over_the_window_holds_a_scale_down_and_traffic_resets_the_grace(caplog):
    caplog.set_level("INFO")
    now = [0.0]
    loads = [Load(4, 10)]
    revisions = FakeRevisions(ScaleSpec(target=2))

    async def read():
        return {"default/r-00001": loads[0]}

    scaler = Autoscaler(revisions, read, grace=3, window=2, clock=lambda: now[0])
    await scaler.tick()
    assert revisions.calls == [2]
    loads[0] = Load(0, 12)  # the requests ended; two more were sent since the last sample
    now[0] = 1.0
    await scaler.tick()
    assert revisions.calls == [2]  # the peak of 4 is still in the 2 s window
    now[0] = 2.5
    await scaler.tick()
    assert revisions.calls == [2, 1]  # out of the window; idle 1.5 s of 3
    now[0] = 4.5
    await scaler.tick()
    assert revisions.calls == [2, 1, 0]  # no request since t=1: idle 3.5 s
    assert (
        "autoscaler: default/r-00001 1 → 0: no traffic for 3.5 s (grace period 3 s)" in caplog.text
    )
    scaler.demand(revisions.key)  # the activator got a request
    assert revisions.calls == [2, 1, 0, 1]
