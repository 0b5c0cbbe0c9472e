"""Deployment on every host: the Kubernetes manifests validate against the Kubernetes API schemas
(kubernetes-validate, offline), the PodMonitor scrapes the pods it is meant to, and the systemd
units pass systemd-analyze verify without a warning."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.helpers import require

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
UNITS = ROOT / "deploy" / "systemd"
KUBERNETES = "1.30.0"  # the oldest Kubernetes still supported upstream when this was written


def manifests() -> list[dict[str, Any]]:
    return [d for f in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


def test_manifests_validate_against_the_kubernetes_api_schemas() -> None:
    docs = manifests()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "ConfigMap", "DaemonSet", "Deployment", "Deployment", "Namespace", "PodMonitor",
                     "Secret", "Secret", "Secret", "Secret"]
    for d in docs:
        if d["kind"] == "PodMonitor":  # a CRD: no API schema offline (checked below for what it selects)
            continue
        kubernetes_validate.validate(d, KUBERNETES, strict=True)
    broken = copy.deepcopy(next(d for d in docs if d["kind"] == "DaemonSet"))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = "BPF"
    with pytest.raises(kubernetes_validate.ValidationError):  # the validator does reject a bad one
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_the_producer_runs_with_its_three_capabilities_on_the_host_network() -> None:
    ds = next(d for d in manifests() if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert pod["hostNetwork"] is True and sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["BPF", "NET_ADMIN", "PERFMON"]}
    assert {t.get("operator") for t in pod["tolerations"]} == {"Exists"}  # every node
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/sys/fs/bpf", "/var/lib/pktstream", "/lib/modules", "/usr/src"} <= mounts
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" == c["readinessProbe"]["httpGet"]["path"]
    env = {e["name"] for e in c.get("env", [])}
    assert {"PKTSTREAM_HOST_ID", "PKTSTREAM_HOME"} <= env
    assert [r["configMapRef"]["name"] if "configMapRef" in r else r["secretRef"]["name"] for r in c["envFrom"]] == [
        "pktstream", "pktstream-kafka-producer"]


def test_the_pod_monitor_selects_every_pktstream_pod_and_their_metrics_port() -> None:
    docs = manifests()
    pm = next(d for d in docs if d["kind"] == "PodMonitor")
    want = pm["spec"]["selector"]["matchLabels"]
    port = pm["spec"]["podMetricsEndpoints"][0]["port"]
    workloads = [d for d in docs if d["kind"] in ("DaemonSet", "Deployment")]
    assert len(workloads) == 3
    for w in workloads:
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert want.items() <= labels.items(), w["metadata"]["name"]
        ports = {p["name"] for c in w["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        assert port in ports, w["metadata"]["name"]


def verify(units: list[Path], tmp: Path) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify on copies whose ExecStart names an executable that exists here."""
    pktstream = shutil.which("pktstream") or str(Path(__file__).resolve().parents[2] / ".venv/bin/pktstream")
    copies = []
    for u in units:
        c = tmp / u.name
        c.write_text(u.read_text().replace("/opt/pktstream/.venv/bin/pktstream", pktstream))
        copies.append(str(c))
    return subprocess.run(["systemd-analyze", "verify", *copies], capture_output=True, text=True, timeout=60)


def test_systemd_units_verify_without_a_warning(tmp_path: Path) -> None:
    require(shutil.which("systemd-analyze") is not None, "needs systemd-analyze (Debian's systemd)")
    units = sorted(UNITS.glob("*.service"))
    assert [u.name for u in units] == ["pktstream-alerts.service", "pktstream-producer.service",
                                       "pktstream-usage.service"]
    r = verify(units, tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    producer = (UNITS / "pktstream-producer.service").read_text()
    for line in ("CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "StateDirectory=pktstream"):
        assert line in producer.splitlines()
    bad = tmp_path / "bad" / "pktstream-bad.service"
    bad.parent.mkdir()
    bad.write_text(producer.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    assert "Unknown key" in verify([bad], bad.parent).stderr  # the check does catch a typo


def helm() -> str:
    """The helm command the set-up builds from the Go module proxy (scripts/setup.sh)."""
    path = shutil.which("helm") or str(Path.home() / ".cache" / "pktstream" / "bin" / "helm")
    require(Path(path).exists(), "needs helm (scripts/setup.sh builds it with go install)")
    return path


def render(*sets: str) -> list[dict[str, Any]]:
    args = [helm(), "template", "pktstream", str(ROOT / "deploy" / "helm" / "pktstream"), "--namespace", "pktstream"]
    for s in sets:
        args += ["--set", s]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def test_the_chart_renders_valid_manifests_for_each_choice_of_values() -> None:
    for sets in [(), ("kafka.sasl.enabled=false", "kafka.tls.enabled=false"), ("usage.enabled=false",
                 "podMonitor.enabled=false", "producer.payloadBytes=256", "producer.interface=eth1",
                 "kafka.sasl.existingSecretPrefix=my-kafka")]:
        docs = render(*sets)
        for d in docs:
            if d["kind"] != "PodMonitor":
                kubernetes_validate.validate(d, KUBERNETES, strict=True)
        kinds = sorted(d["kind"] for d in docs)
        if not sets:
            assert kinds == ["ConfigMap", "ConfigMap", "DaemonSet", "Deployment", "Deployment", "PodMonitor",
                             "Secret", "Secret", "Secret", "Secret"]
    plain = next(d for d in render("kafka.sasl.enabled=false", "kafka.tls.enabled=false") if d["kind"] == "DaemonSet")
    env_from = plain["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert env_from == [{"configMapRef": {"name": "pktstream"}}]  # no Kafka secret without SASL
    third = render("usage.enabled=false", "producer.payloadBytes=256", "producer.interface=eth1",
                   "kafka.sasl.existingSecretPrefix=my-kafka", "producer.direction=ingress")
    cm = next(d for d in third if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "pktstream")
    assert cm["data"]["PKTSTREAM_PAYLOAD_BYTES"] == "256" and cm["data"]["PKTSTREAM_INTERFACE"] == "eth1"
    assert cm["data"]["PKTSTREAM_DIRECTION"] == "ingress"
    default_cm = next(d for d in render() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "pktstream")
    assert default_cm["data"]["PKTSTREAM_DIRECTION"] == "both"
    assert not any(d["kind"] == "Deployment" and d["metadata"]["name"] == "pktstream-usage" for d in third)
    assert not any(d["kind"] == "Secret" and d["metadata"]["name"].startswith("pktstream-kafka-") and
                   d["metadata"]["name"] != "pktstream-kafka-ca" for d in third)
    ds = next(d for d in third if d["kind"] == "DaemonSet")
    assert ds["spec"]["template"]["spec"]["containers"][0]["envFrom"][1] == {"secretRef": {"name": "my-kafka-producer"}}


def test_the_chart_renders_the_same_pods_as_the_manifests() -> None:
    """With its default values and the release name pktstream, the chart's pod specs are the plain
    manifests' (one source of truth kept honest by this test)."""
    chart = {(d["kind"], d["metadata"]["name"]): d for d in render() if d["kind"] in ("DaemonSet", "Deployment")}
    plain = {(d["kind"], d["metadata"]["name"]): d for d in manifests() if d["kind"] in ("DaemonSet", "Deployment")}
    assert chart.keys() == plain.keys()
    for k in plain:
        assert chart[k]["spec"]["template"]["spec"] == plain[k]["spec"]["template"]["spec"], k


def _pods(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("DaemonSet", "Deployment")]


def test_no_secret_on_any_command_line_and_no_service_links() -> None:
    """Every deployment form passes Kafka credentials through the environment (from a Secret or an
    EnvironmentFile) that every command reads, never as arguments (readable in /proc by any user of
    the node); pods get no service-link variables (PKTSTREAM_METRICS_SERVICE_HOST from a Service
    named pktstream-metrics would otherwise reach the producer)."""
    forms = {"manifests": manifests(), "chart": render(), "chart-existing-secret": render(
        "kafka.sasl.existingSecretPrefix=my-kafka")}
    for form, docs in forms.items():
        pods = _pods(docs)
        assert pods, form
        for pod in pods:
            assert pod.get("enableServiceLinks") is False, form
            for c in pod["containers"]:
                words = " ".join(str(a) for a in [*c.get("command", []), *c.get("args", [])]).lower()
                for secret in ("password", "sasl.", "jaas", "pktstream_kafka__", "secret"):
                    assert secret not in words, (form, c["name"], words)
                refs = [r.get("secretRef", {}).get("name") for r in c.get("envFrom", [])]
                assert any(refs), (form, c["name"])  # the credentials reach it as variables
    for unit in sorted(UNITS.glob("*.service")):
        text = unit.read_text()
        exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
        assert "password" not in exec_start.lower() and "EnvironmentFile=" in text, unit.name


def test_each_workload_has_its_own_kafka_principal() -> None:
    """Separate credentials per role, as runtime/roles.py grants them: the producer's Secret is not
    the consumers', and each consumer app has its own."""
    for form, docs in {"manifests": manifests(), "chart": render()}.items():
        refs = {}
        for d in docs:
            if d["kind"] in ("DaemonSet", "Deployment"):
                (c,) = d["spec"]["template"]["spec"]["containers"]
                refs[c["name"]] = [r["secretRef"]["name"] for r in c["envFrom"] if "secretRef" in r]
        assert refs == {"producer": ["pktstream-kafka-producer"], "usage": ["pktstream-kafka-usage"],
                        "alerts": ["pktstream-kafka-alerts"]}, form
        users = {d["metadata"]["name"]: d["stringData"]["PKTSTREAM_KAFKA__SASL__USERNAME"] for d in docs
                 if d["kind"] == "Secret" and "PKTSTREAM_KAFKA__SASL__USERNAME" in d.get("stringData", {})}
        assert users == {f"pktstream-kafka-{r}": f"pktstream-{r}" for r in ("producer", "usage", "alerts")}, form


def test_the_chart_refuses_the_single_user_keys_of_its_older_version() -> None:
    """An upgrade with the old kafka.sasl.username/password/existingSecret would otherwise deploy
    with empty credentials and no word of why."""
    for old in ("username=u", "password=p", "existingSecret=s"):
        r = subprocess.run([helm(), "template", "pktstream", str(ROOT / "deploy" / "helm" / "pktstream"),
                            "--set", f"kafka.sasl.{old}"], capture_output=True, text=True, timeout=120)
        name = old.split("=")[0]
        assert r.returncode != 0 and f"kafka.sasl.{name} is no longer read" in r.stderr, r.stderr
    render("kafka.sasl.password=", "kafka.sasl.existingSecret=")  # left empty, as the old values file had them


def test_the_documented_acl_commands_are_the_roles_acls() -> None:
    """docs/deployment.md shows kafka-acls.sh commands: exactly what runtime/roles.py grants."""
    from pktstream.runtime import roles

    plan = [("producer", "User:pktstream-producer", {}),
            ("app", "User:pktstream-usage", {"app": "pktstream-usage", "output": "pktstream.usage"}),
            ("app", "User:pktstream-alerts", {"app": "pktstream-alerts", "output": "pktstream.alerts"}),
            ("reader", "User:pktstream-reader", {"topics": ("pktstream.packets", "pktstream.stats",
                                                            "pktstream.usage", "pktstream.alerts")})]
    doc = (ROOT / "docs" / "deployment.md").read_text()
    for role, principal, kw in plan:
        for cmd in roles.kafka_acls_commands(roles.acls(role, principal, **kw)):
            assert cmd in doc, cmd
    producer = roles.kafka_acls_commands(roles.acls("producer", "User:p"))
    assert not any("--operation Read" in c for c in producer)  # a node reads nothing
