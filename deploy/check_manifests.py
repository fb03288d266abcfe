"""Check that what deploy/ and the Dockerfile say agrees with itself and with trio-tlsd.

hadolint and kubernetes-validate check each file against its format (``nox
-s deploy-check`` runs them first). This checks what they cannot: the
numbers and names that must match across files.

* the container's arguments parse with trio-tlsd's own parser;
* ``--workers`` equals the CPU limit (one worker per CPU the pod may use);
* the probes reach ``/readyz`` and ``/healthz`` on the ``--metrics-port``;
* the grace period outlasts the preStop sleep plus ``--drain-delay`` plus
  ``--drain-timeout`` (and the unit's stop timeout drain_delay plus drain_timeout);
* the certificate, key and cookie secret paths are on read-only Secret volumes;
* the pod runs as the image's user, read-only, with no capabilities;
* the Service has TCP and UDP on the ``tls``/``dtls`` container ports, with
  ``externalTrafficPolicy: Local``; Service and PodDisruptionBudget select the pods;
* kustomization.yaml lists every manifest;
* the Dockerfile exposes the container ports, runs as that user, and its
  HEALTHCHECK asks the metrics port;
* the systemd unit is ``Type=notify`` with ``NotifyAccess=main`` and
  ``KillMode=mixed``, stops after the drain, and ``systemd-analyze verify``
  (where installed) finds nothing to say.

Run from the repository root: ``python deploy/check_manifests.py``. Exit
status 1 and one line per problem if anything disagrees.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from trio_tls_dtls.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "deploy" / "kubernetes"
UNIT = ROOT / "deploy" / "systemd" / "trio-tlsd.service"
TOML = ROOT / "deploy" / "systemd" / "serve.toml"

problems: list[str] = []


def check(ok: object, what: str) -> None:
    if not ok:
        problems.append(what)


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((KUBE / name).read_text())
    return document


def flag(args: list[str], name: str) -> str | None:
    """The value of ``--name=value`` or ``--name value`` in *args*."""
    for i, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    return None


def check_kubernetes() -> None:
    kustomization = load("kustomization.yaml")
    manifests = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    check(
        set(kustomization["resources"]) == manifests,
        f"kustomization.yaml resources {kustomization['resources']} != files {sorted(manifests)}",
    )
    deployment = load("deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = pod["containers"]
    args = container["args"]
    parsed = build_parser().parse_args(args)  # exits 2 naming a flag it does not know
    workers = flag(args, "--workers")
    limits = container["resources"]["limits"]
    check(
        workers == str(limits["cpu"]),
        f"--workers={workers} but the CPU limit is {limits['cpu']}",
    )
    ports = {p["name"]: p for p in container["ports"]}
    metrics_port = int(flag(args, "--metrics-port") or 0)
    check(ports["metrics"]["containerPort"] == metrics_port, "metrics port != --metrics-port")
    check(flag(args, "--metrics-host") == "0.0.0.0", "the kubelet probes the pod address")
    check(ports["tls"]["containerPort"] == ports["dtls"]["containerPort"] == parsed.port, "port")
    check((ports["tls"]["protocol"], ports["dtls"]["protocol"]) == ("TCP", "UDP"), "protocols")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        check(get["path"] == path and get["port"] == "metrics", f"{probe} must GET {path}")
    sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(flag(args, "--drain-timeout") or 10)
    delay = float(flag(args, "--drain-delay") or 0)  # accepting after SIGTERM, before the drain
    grace = pod["terminationGracePeriodSeconds"]
    check(
        grace > sleep + delay + drain,
        f"grace {grace}s <= preStop {sleep}s + drain delay {delay}s + drain {drain}s",
    )

    secure = container["securityContext"]
    check(secure["readOnlyRootFilesystem"] is True, "readOnlyRootFilesystem")
    check(secure["allowPrivilegeEscalation"] is False, "allowPrivilegeEscalation")
    check(secure["capabilities"]["drop"] == ["ALL"], "capabilities: drop ALL")
    check(pod["securityContext"]["runAsNonRoot"] is True, "runAsNonRoot")
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for name in ("--cert", "--key", "--cookie-secret-file"):
        path = flag(args, name) or ""
        folder = str(Path(path).parent)
        mount = mounts.get(folder)
        check(mount is not None and mount.get("readOnly"), f"{name} {path}: no read-only mount")
        if mount is not None:
            check("secret" in volumes[mount["name"]], f"{name} {path}: not a Secret volume")

    service = load("service.yaml")
    spec = service["spec"]
    check(spec["externalTrafficPolicy"] == "Local", "externalTrafficPolicy: Local")
    check(spec["selector"].items() <= labels.items(), "the Service selects no pod")
    targets = {(p["targetPort"], p["protocol"]) for p in spec["ports"]}
    check(targets == {("tls", "TCP"), ("dtls", "UDP")}, f"Service ports {targets}")
    budget = load("poddisruptionbudget.yaml")
    selector = budget["spec"]["selector"]["matchLabels"]
    check(selector.items() <= labels.items(), "the PodDisruptionBudget selects no pod")
    check_dockerfile(pod, ports)


def check_dockerfile(pod: dict[str, Any], ports: dict[str, dict[str, Any]]) -> None:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    exposed = set(re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split())  # type: ignore[union-attr]
    for port in ports.values():
        wanted = f"{port['containerPort']}/{port['protocol'].lower()}"
        check(wanted in exposed, f"Dockerfile does not EXPOSE {wanted}")
    user = re.findall(r"^USER (\d+):(\d+)$", text, re.M)
    context = pod["securityContext"]
    check(
        user[-1:] == [(str(context["runAsUser"]), str(context["runAsGroup"]))],
        f"Dockerfile USER {user} != runAsUser/runAsGroup",
    )
    health = re.search(r"TRIO_TLSD_HEALTH_URL=http://127\.0\.0\.1:(\d+)/healthz", text)
    check(health and int(health.group(1)) == ports["metrics"]["containerPort"], "HEALTHCHECK")
    check("STOPSIGNAL SIGTERM" in text, "STOPSIGNAL SIGTERM")


def check_systemd() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    service = unit["Service"]
    for key, value in (("Type", "notify"), ("NotifyAccess", "main"), ("KillMode", "mixed")):
        check(service.get(key) == value, f"{UNIT.name}: {key}={value}")
    toml = TOML.read_text()
    drain = float(re.search(r"drain_timeout = (\d+)", toml).group(1))  # type: ignore[union-attr]
    delay_set = re.search(r"^drain_delay = (\d+)", toml, re.M)
    delay = float(delay_set.group(1)) if delay_set else 0.0
    stop = float(service["TimeoutStopSec"])
    check(
        stop > delay + drain,
        f"{UNIT.name}: TimeoutStopSec={stop} <= drain_delay {delay} + drain_timeout {drain}",
    )
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        print("systemd-analyze not installed: the unit's syntax was not verified")
        return
    # verify wants ExecStart's program to exist: point it at one that does.
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / UNIT.name
        copy.write_text(UNIT.read_text().replace("/opt/trio-tlsd/bin/trio-tlsd", sys.executable))
        result = subprocess.run(
            [analyze, "verify", str(copy)], capture_output=True, text=True, check=False
        )
    said = (result.stdout + result.stderr).strip()
    check(result.returncode == 0 and not said, f"systemd-analyze verify: {said}")


def main() -> int:
    check_kubernetes()
    check_systemd()
    for problem in problems:
        print(f"deploy-check: {problem}", file=sys.stderr)
    if not problems:
        print("deploy-check: manifests, Dockerfile and unit agree")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
