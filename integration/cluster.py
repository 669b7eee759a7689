"""Driving a real cluster from the integration tests: kubectl, kind, docker, and the gateway.

Everything goes through the command-line tools a developer has, so a failure
prints the command and its output, and a run can be retraced by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")

# Where deploy/ puts the gateway, and what KIngress status says of it
# (deploy/control-plane.yaml's --public-gateway and --private-gateway).
GATEWAY_NAMESPACE = "knative-xds"
PUBLIC_GATEWAY = f"knative-xds-gateway.{GATEWAY_NAMESPACE}.svc.cluster.local"
PRIVATE_GATEWAY = f"knative-local-gateway.{GATEWAY_NAMESPACE}.svc.cluster.local"


class CommandFailed(RuntimeError):
    pass


def run(
    args: Sequence[str],
    *,
    input: str | None = None,
    timeout: float = 600,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run a command; its stdout, or CommandFailed naming the command and its output."""
    done = subprocess.run(
        list(args),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise CommandFailed(
            f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return done.stdout


def missing_tools() -> str | None:
    """Why kind mode cannot run here, or None."""
    for tool in ("docker", "kind", "kubectl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        probe = subprocess.run(
            ["docker", "info"], capture_output=True, text=True, timeout=30, check=False
        )
    except subprocess.TimeoutExpired:
        return "docker has no engine answering (`docker info` took over 30 s)"
    if probe.returncode != 0:
        return "docker has no running engine (`docker info` failed)"
    return None


def eventually(
    check: Callable[[], T | None], *, timeout: float, every: float = 1.0, what: str
) -> T:
    """Poll `check` until it returns something truthy; a real cluster offers nothing to wait on."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (CommandFailed, OSError) as e:
            last = e
        time.sleep(every)
    raise TimeoutError(
        f"{what}: not after {timeout:.0f} s" + (f" (last error: {last})" if last else "")
    )


@dataclass(frozen=True)
class Kubectl:
    kubeconfig: str

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": self.kubeconfig}

    def __call__(self, *args: str, input: str | None = None, timeout: float = 600) -> str:
        return run(["kubectl", *args], input=input, timeout=timeout, env=self.env)

    def apply(self, *objects: Mapping[str, Any]) -> None:
        self(
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}),
        )

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any]:
        return json.loads(self("get", kind, name, "-n", namespace, "-o", "json"))

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return json.loads(self("get", "pods", "-n", namespace, "-l", selector, "-o", "json"))[
            "items"
        ]

    def wait(self, *what: str, condition: str, namespace: str, timeout: int = 600) -> None:
        """`kubectl wait` for `condition=<condition>` on `what` (e.g. "ksvc/hello")."""
        self(
            "wait", *what, "-n", namespace, f"--for=condition={condition}", f"--timeout={timeout}s",
            timeout=timeout + 30,
        )  # fmt: skip

    def wait_ready(self, kind: str, name: str, namespace: str, *, timeout: int = 600) -> None:
        """Wait, as a user does, for a Knative object to be Ready, once its controller has
        seen its latest edit: before that, `kubectl wait` would read the Ready of the
        generation before."""

        def observed() -> bool:
            obj = self.get(kind, name, namespace)
            generation = obj["metadata"].get("generation")
            return (obj.get("status") or {}).get("observedGeneration") == generation

        eventually(observed, timeout=120, what=f"{kind}/{name}'s controller to see its edit")
        self.wait(f"{kind}/{name}", condition="Ready", namespace=namespace, timeout=timeout)

    def run_pod(
        self, name: str, namespace: str, *, image: str, command: Sequence[str], timeout: int = 300
    ) -> str:
        """Run `command` in a pod of its own to the end; its output (CommandFailed if it
        failed). From inside the cluster, as another workload would call a Service."""
        self("delete", "pod", name, "-n", namespace, "--ignore-not-found", "--wait=true")
        self("run", name, "-n", namespace, f"--image={image}", "--restart=Never",
             "--command", "--", *command)  # fmt: skip

        def finished() -> str | None:
            phase = (self.get("pod", name, namespace).get("status") or {}).get("phase")
            return phase if phase in ("Succeeded", "Failed") else None

        try:
            phase = eventually(finished, timeout=timeout, every=2, what=f"pod {name} to finish")
            output = self("logs", name, "-n", namespace)
        finally:
            self("delete", "pod", name, "-n", namespace, "--ignore-not-found", "--wait=false")
        if phase != "Succeeded":
            raise CommandFailed(f"pod {name} ({' '.join(command)}) {phase}:\n{output}")
        return output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Response:
    status: int
    body: str


class Gateway:
    """HTTP to the gateway's external listener through `kubectl port-forward`."""

    def __init__(self, kubectl: Kubectl, *, namespace: str, service: str) -> None:
        self.port = free_port()
        # A file, not a pipe: nobody reads kubectl's errors until it has exited.
        self._errors = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in close())
        self._process = subprocess.Popen(
            ["kubectl", "port-forward", "-n", namespace, f"svc/{service}", f"{self.port}:80"],
            env=kubectl.env,
            stdout=subprocess.DEVNULL,
            stderr=self._errors,
            text=True,
        )
        # Straight to 127.0.0.1, whatever proxy the environment names.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        eventually(self._listening, timeout=30, every=0.2, what="kubectl port-forward")

    def _listening(self) -> bool:
        if self._process.poll() is not None:
            self._errors.seek(0)
            raise CommandFailed(f"kubectl port-forward exited: {self._errors.read()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def get(self, host: str, path: str = "/", *, timeout: float = 30) -> Response:
        url = f"http://127.0.0.1:{self.port}{path}"
        request = urllib.request.Request(url, headers={"Host": host})
        try:
            with self._opener.open(request, timeout=timeout) as r:
                return Response(r.status, r.read().decode())
        except urllib.error.HTTPError as e:
            return Response(e.code, e.read().decode(errors="replace"))

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)
        self._errors.close()
