"""Properties of the rendered Kubernetes manifests (deploy/k8s), for every variant.

Variants: dev, prod (which includes components/external-database), prod +
components/keda-queue-scaling, prod + components/external-redis, rendered by `kubectl kustomize`
(see deploy/k8s/validate.py).
"""

from __future__ import annotations

import base64
import ipaddress
import re
import subprocess
import urllib.parse
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import K8S_DIR, REPO_ROOT, validate
from tests.deploy.k8s_helpers import (
    by_kind,
    containers,
    cpu_cores,
    env_map,
    find_generated,
    get,
    image_tag,
    memory_bytes,
    pod_labels,
    pod_spec,
    policies_for,
    redis_memory_bytes,
    selector_matches,
    workloads,
)

VARIANTS = list(validate.VARIANTS)
PROD_VARIANTS = [v for v in VARIANTS if v.startswith("prod")]
GRIDFLEET_COMPONENTS = ("ingress", "coordinator", "worker", "flower", "ledger")
GRIDFLEET_UID = 10001

Rendered = dict[str, list[dict[str, Any]]]

TRIVIAL_COMMANDS = {"true", "/bin/true", "/usr/bin/true", ":", "exit 0", "echo", "/bin/echo"}


def _workload_containers(rendered: Rendered, variant: str):
    for workload in workloads(rendered[variant]):
        for container in containers(workload):
            yield workload, container


def _component(workload: dict[str, Any]) -> str:
    return pod_labels(workload)["app.kubernetes.io/component"]


# --- schema validation ----------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_validates_against_the_kubernetes_schemas(
    rendered: Rendered, variant: str
) -> None:
    results = validate.validate_variants({variant: rendered[variant]})
    failures = [r.line() for r in results if r.status == "FAIL"]
    assert not failures, "\n".join(failures)
    for skipped in (r for r in results if r.status == "SKIP"):
        print(skipped.line())  # shown with -rA / -s: a skip always carries its reason
    assert results, "nothing rendered"


def test_schema_validation_catches_a_typo(rendered: Rendered) -> None:
    worker = get(rendered["prod"], "Deployment", "worker")
    broken = yaml.safe_load(yaml.safe_dump(worker))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    result = validate.validate_object("prod", broken)
    assert result.status == "FAIL" and "livenesProbe" in result.detail


def test_removed_api_versions_fail_and_unknown_crds_are_skipped_with_a_reason() -> None:
    old_pdb = {
        "apiVersion": "policy/v1beta1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "x"},
        "spec": {"maxUnavailable": 1, "selector": {}},
    }
    assert validate.validate_object("t", old_pdb).status == "FAIL"
    crd_object = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    result = validate.validate_object("t", crd_object)
    assert result.status == "SKIP" and "no vendored schema" in result.detail


def test_keda_objects_are_validated_against_the_vendored_schema(rendered: Rendered) -> None:
    objects = rendered["prod+keda-queue-scaling"]
    scaled = get(objects, "ScaledObject", "worker")
    assert validate.validate_object("keda", scaled).status == "PASS"
    broken = yaml.safe_load(yaml.safe_dump(scaled))
    broken["spec"]["triggers"][1]["metadata"]["listLength"] = 8  # KEDA wants strings
    assert validate.validate_object("keda", broken).status == "FAIL"


def test_missing_kubectl_fails_with_install_instructions(
    k8s_validate: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(k8s_validate.shutil, "which", lambda _name: None)
    with pytest.raises(k8s_validate.KubectlNotFoundError, match="install"):
        k8s_validate.find_kubectl()


# --- pod security --------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pod_and_container_is_locked_down(rendered: Rendered, variant: str) -> None:
    for workload in workloads(rendered[variant]):
        name = f"{variant}: {workload['kind']}/{workload['metadata']['name']}"
        spec = pod_spec(workload)
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, name
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, name
        assert spec.get("enableServiceLinks") is False, f"{name}: service links pollute env"
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), name
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in containers(workload):
            cname = f"{name} container {container['name']}"
            sc = container.get("securityContext", {})
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            assert uid is not None and uid != 0, f"{cname}: needs a non-root runAsUser"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, cname
            assert sc.get("allowPrivilegeEscalation") is False, cname
            assert sc.get("readOnlyRootFilesystem") is True, cname
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], cname
            assert not sc.get("capabilities", {}).get("add"), cname
            assert not sc.get("privileged"), cname
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp, f"{cname}: read-only root needs a writable /tmp"
            assert "emptyDir" in volumes[tmp[0]["name"]], f"{cname}: /tmp must be an emptyDir"


@pytest.mark.parametrize("variant", VARIANTS)
def test_gridfleet_containers_run_as_the_image_uid(rendered: Rendered, variant: str) -> None:
    for workload in workloads(rendered[variant]):
        if _component(workload) in GRIDFLEET_COMPONENTS:
            assert pod_spec(workload)["securityContext"]["runAsUser"] == GRIDFLEET_UID


def test_namespaces_enforce_the_restricted_pod_security_standard(rendered: Rendered) -> None:
    for variant in VARIANTS:
        (namespace,) = by_kind(rendered[variant], "Namespace")
        labels = namespace["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted", variant


# --- resources -----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_container_has_requests_and_limits(rendered: Rendered, variant: str) -> None:
    for workload, container in _workload_containers(rendered, variant):
        name = f"{variant}: {workload['metadata']['name']}/{container['name']}"
        resources = container.get("resources", {})
        for resource in ("cpu", "memory"):
            request = resources.get("requests", {}).get(resource)
            limit = resources.get("limits", {}).get(resource)
            assert request is not None and limit is not None, f"{name}: {resource} request+limit"
            parse = cpu_cores if resource == "cpu" else memory_bytes
            assert 0 < parse(request) <= parse(limit), f"{name}: {resource} request > limit"


def test_prod_singletons_are_guaranteed_qos(rendered: Rendered) -> None:
    for name in ("ingress", "coordinator"):
        (container,) = containers(get(rendered["prod"], "Deployment", name))
        assert container["resources"]["requests"] == container["resources"]["limits"], name


# --- probes --------------------------------------------------------------------------------


def _probe_problems(container: dict[str, Any], probe_name: str) -> list[str]:
    probe = container.get(probe_name)
    if probe is None:
        return [f"no {probe_name}"]
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    numbers = set(ports.values())
    problems = []
    if "exec" in probe:
        command = probe["exec"]["command"]
        text = " ".join(command).strip()
        script = command[-1].strip() if command[:2] in (["/bin/sh", "-c"], ["sh", "-c"]) else text
        if text in TRIVIAL_COMMANDS or script in TRIVIAL_COMMANDS:
            problems.append(f"{probe_name} is a no-op: {text!r}")
        if probe_name != "startupProbe" and "inspect" in command and "ping" in command:
            problems.append(f"{probe_name} uses `celery inspect ping` (a broadcast)")
    elif "httpGet" in probe or "tcpSocket" in probe or "grpc" in probe:
        handler = probe.get("httpGet") or probe.get("tcpSocket") or probe.get("grpc")
        port = handler["port"]
        if (isinstance(port, str) and port not in ports) or (
            isinstance(port, int) and port not in numbers
        ):
            problems.append(
                f"{probe_name} targets port {port!r}, which the container does not open"
            )
        if "httpGet" in probe and probe["httpGet"].get("path", "/") in ("", "/"):
            problems.append(f"{probe_name} checks `/`, not a health endpoint")
    else:
        problems.append(f"{probe_name} has no handler")
    return problems


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_are_present_and_really_check_something(rendered: Rendered, variant: str) -> None:
    problems = []
    for workload, container in _workload_containers(rendered, variant):
        for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
            for problem in _probe_problems(container, probe_name):
                problems.append(f"{workload['metadata']['name']}/{container['name']}: {problem}")
    assert not problems, "\n".join(problems)


def test_ingress_and_coordinator_probe_healthz_on_the_metrics_port(rendered: Rendered) -> None:
    for variant in VARIANTS:
        for name in ("ingress", "coordinator"):
            (container,) = containers(get(rendered[variant], "Deployment", name))
            metrics_port = int(env_map(container)["GRIDFLEET_METRICS_PORT"]["value"])
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
                http = container[probe_name]["httpGet"]
                assert http["path"] == "/healthz", (variant, name, probe_name)
                assert ports[http["port"]] == metrics_port, (variant, name, probe_name)
            # /healthz turns 503 after a 15 s stall: liveness must not kill before that.
            liveness = container["livenessProbe"]
            assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 15


def test_worker_probes_use_the_heartbeat_check(rendered: Rendered) -> None:
    for variant in VARIANTS:
        (container,) = containers(get(rendered[variant], "Deployment", "worker"))
        for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
            command = container[probe_name]["exec"]["command"]
            assert command == ["/opt/gridfleet/bin/gridfleet", "health", "worker"], command


# --- secrets -------------------------------------------------------------------------------


SECRET_ENV = ("GRIDFLEET_EXCHANGE_URL", "GRIDFLEET_BROKER_URL", "GRIDFLEET_FLOWER_BASIC_AUTH")


@pytest.mark.parametrize("variant", VARIANTS)
def test_secret_values_never_appear_inline(rendered: Rendered, variant: str) -> None:
    objects = rendered[variant]
    secrets = by_kind(objects, "Secret")
    assert len(secrets) == 1, "only the generated gridfleet-secrets"
    secret = find_generated(objects, "Secret", "gridfleet-secrets")
    assert not secret.get("stringData")
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    expected = {"redis-password", "broker-url", "exchange-url", "flower-basic-auth"}
    if variant in PROD_VARIANTS:  # the ledger's PostgreSQL (components/external-database)
        expected.add("ledger-url")
    assert set(decoded) == expected
    for key, value in decoded.items():
        assert "CHANGE_ME" in value, f"{key}: CI renders secrets.env.example placeholders only"
    for workload, container in _workload_containers(rendered, variant):
        env = env_map(container)
        for name, entry in env.items():
            sensitive = name in SECRET_ENV or any(
                word in name for word in ("PASSWORD", "AUTH", "TOKEN", "SECRET")
            )
            if sensitive:
                assert "value" not in entry, f"{workload['metadata']['name']}: {name} inline"
                ref = entry["valueFrom"]["secretKeyRef"]
                assert ref["name"] == secret["metadata"]["name"]
                assert ref["key"] in decoded
    others = yaml.safe_dump_all([o for o in objects if o["kind"] != "Secret"])
    assert "CHANGE_ME" not in others and "redis://:" not in others


def test_tracked_files_hold_no_secret_objects_and_real_secrets_are_ignored() -> None:
    for path in K8S_DIR.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Secret":
                pytest.fail(f"{path}: a Secret object in git (use secretGenerator + secrets.env)")
    for overlay in validate.OVERLAYS:
        example = K8S_DIR / "overlays" / overlay / "secrets.env.example"
        for line in example.read_text().splitlines():
            if line and not line.startswith("#"):
                assert "CHANGE_ME" in line, f"{example}: {line.split('=')[0]} is not a placeholder"
        real = K8S_DIR / "overlays" / overlay / "secrets.env"
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", str(real)], cwd=REPO_ROOT, check=False
        )
        assert ignored.returncode == 0, f"{real} must be git-ignored"


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_reference_resolves(rendered: Rendered, variant: str) -> None:
    """Every Secret/ConfigMap a pod uses exists in the render and has the key it asks for."""
    objects = rendered[variant]
    data = {
        (o["kind"], o["metadata"]["name"]): set(o.get("data") or {})
        for o in objects
        if o["kind"] in ("Secret", "ConfigMap")
    }
    service_accounts = {o["metadata"]["name"] for o in by_kind(objects, "ServiceAccount")}
    for workload in workloads(objects):
        spec = pod_spec(workload)
        assert spec.get("serviceAccountName", "default") in service_accounts | {"default"}
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                keys = data[("ConfigMap", volume["configMap"]["name"])]
                for item in volume["configMap"].get("items", []):
                    assert item["key"] in keys
        for container in containers(workload):
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in data[("Secret", ref["name"])], (variant, entry["name"])
    for auth in by_kind(objects, "TriggerAuthentication"):
        for ref in auth["spec"].get("secretTargetRef", []):
            assert ref["key"] in data[("Secret", ref["name"])], "KEDA must see the hashed name"


# --- images --------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_images_are_pinned(rendered: Rendered, variant: str) -> None:
    gridfleet_images = set()
    for workload, container in _workload_containers(rendered, variant):
        tag = image_tag(container["image"])
        assert tag and tag != "latest", f"{container['image']}: no tag or `latest`"
        if _component(workload) in GRIDFLEET_COMPONENTS:
            gridfleet_images.add(container["image"])
            if variant.startswith("prod"):
                assert tag != "dev", "prod uses a released tag"
                assert container["imagePullPolicy"] == "IfNotPresent"
    assert len(gridfleet_images) == 1, f"one gridfleet image for all processes: {gridfleet_images}"


def test_dev_uses_the_dev_tag_and_always_pulls_it(rendered: Rendered) -> None:
    for workload, container in _workload_containers(rendered, "dev"):
        if _component(workload) in GRIDFLEET_COMPONENTS:
            assert image_tag(container["image"]) == "dev"
            assert container["imagePullPolicy"] == "Always"


# --- network policies ----------------------------------------------------------------------


def _egress_peers(objects: list[dict[str, Any]], labels: dict[str, str]) -> list[dict[str, Any]]:
    peers = []
    for policy in policies_for(objects, labels, "Egress"):
        for rule in policy["spec"].get("egress", []):
            assert rule.get("to"), f"{policy['metadata']['name']}: egress to everywhere"
            ports = {(p.get("protocol", "TCP"), p.get("port")) for p in rule.get("ports", [])}
            assert ports, f"{policy['metadata']['name']}: egress on every port"
            peers.extend({"peer": peer, "ports": ports} for peer in rule["to"])
    return peers


def _is_dns(peer: dict[str, Any]) -> bool:
    return peer["ports"] <= {("UDP", 53), ("TCP", 53)}


def _is_redis(peer: dict[str, Any]) -> bool:
    selector = peer["peer"].get("podSelector", {})
    return (
        "namespaceSelector" not in peer["peer"]
        and selector.get("matchLabels", {}).get("app.kubernetes.io/component") == "redis"
        and peer["ports"] == {("TCP", 6379)}
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_network_is_default_deny(rendered: Rendered, variant: str) -> None:
    objects = rendered[variant]
    deny = [
        p
        for p in by_kind(objects, "NetworkPolicy")
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert deny, "a default-deny NetworkPolicy for the whole namespace"
    for workload in workloads(objects):
        labels = pod_labels(workload)
        assert policies_for(objects, labels, "Ingress"), workload["metadata"]["name"]
        assert policies_for(objects, labels, "Egress"), workload["metadata"]["name"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_only_gridfleet_pods_reach_redis(rendered: Rendered, variant: str) -> None:
    objects = rendered[variant]
    if variant.endswith("external-redis"):
        assert not by_kind(objects, "StatefulSet")
        return
    redis = get(objects, "StatefulSet", "redis")
    for policy in policies_for(objects, pod_labels(redis), "Ingress"):
        for rule in policy["spec"].get("ingress", []):
            assert [p["port"] for p in rule["ports"]] == [6379]
            for peer in rule["from"]:
                assert "ipBlock" not in peer, policy["metadata"]["name"]
                if "namespaceSelector" in peer:
                    # only the optional KEDA operator reading the queue length
                    assert variant == "prod+keda-queue-scaling"
                    assert peer["namespaceSelector"]["matchLabels"] == {
                        "kubernetes.io/metadata.name": "keda"
                    }
                    continue
                for other in workloads(objects):
                    if selector_matches(peer["podSelector"], pod_labels(other)):
                        assert _component(other) in GRIDFLEET_COMPONENTS


@pytest.mark.parametrize("variant", VARIANTS)
def test_egress_is_limited_to_dns_redis_and_the_exchange(rendered: Rendered, variant: str) -> None:
    objects = rendered[variant]
    for workload in workloads(objects):
        component = _component(workload)
        peers = _egress_peers(objects, pod_labels(workload))
        other = [p for p in peers if not _is_dns(p) and not _is_redis(p)]
        if component in ("ingress", "coordinator"):
            blocks = [p["peer"]["ipBlock"]["cidr"] for p in other if "ipBlock" in p["peer"]]
            assert len(blocks) == len(other), f"{component}: egress beyond the exchange: {other}"
            assert blocks, f"{component} must reach the exchange"
            assert all(not cidr.endswith("/0") for cidr in blocks), "the exchange only, not 0/0"
        elif component == "ledger" and variant in PROD_VARIANTS:
            # its PostgreSQL (components/external-database), and a managed Redis if there is one
            ports = {("TCP", 5432)}
            if variant.endswith("external-redis"):
                ports.add(("TCP", 6379))
            assert other and all("ipBlock" in p["peer"] for p in other), other
            assert set().union(*(p["ports"] for p in other)) == ports, other
        elif variant.endswith("external-redis") and component in GRIDFLEET_COMPONENTS:
            # the managed Redis is an ipBlock on 6379
            assert all("ipBlock" in p["peer"] for p in other), other
        else:
            assert not other, f"{variant} {component}: unexpected egress {other}"


def test_exchange_egress_is_from_ingress_and_coordinator_only(rendered: Rendered) -> None:
    for variant in VARIANTS:
        policy = get(rendered[variant], "NetworkPolicy", "exchange-egress")
        reached = sorted(
            _component(w)
            for w in workloads(rendered[variant])
            if selector_matches(policy["spec"]["podSelector"], pod_labels(w))
        )
        assert reached == ["coordinator", "ingress"], variant


# --- redis ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [v for v in VARIANTS if not v.endswith("external-redis")])
def test_redis_has_noeviction_requirepass_and_a_volume(rendered: Rendered, variant: str) -> None:
    objects = rendered[variant]
    redis = get(objects, "StatefulSet", "redis")
    (container,) = containers(redis)
    conf_map = pod_spec(redis)["volumes"]
    config_name = next(v["configMap"]["name"] for v in conf_map if "configMap" in v)
    conf = get(objects, "ConfigMap", config_name)["data"]["redis.conf"]
    directives = [line.split() for line in conf.splitlines() if line and not line.startswith("#")]
    assert ["maxmemory-policy", "noeviction"] in directives
    assert directives[-1] == ["include", "/run/redis/auth.conf"], "auth is included last"
    assert ["appendonly", "yes"] in directives and ["dir", "/data"] in directives
    script = container["args"][0]
    assert "requirepass" in script and "/run/redis/auth.conf" in script
    assert "--requirepass" not in script, "the password must not be on the command line"
    auth = env_map(container)["REDISCLI_AUTH"]["valueFrom"]["secretKeyRef"]
    assert auth["key"] == "redis-password"
    maxmemory = redis_memory_bytes(env_map(container)["REDIS_MAXMEMORY"]["value"])
    limit = memory_bytes(container["resources"]["limits"]["memory"])
    assert maxmemory <= 0.75 * limit, "headroom for the AOF rewrite fork"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert any(m["mountPath"] == "/data" and m["name"] == "data" for m in container["volumeMounts"])
    service = get(objects, "Service", redis["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert selector_matches({"matchLabels": service["spec"]["selector"]}, pod_labels(redis))
    broker_url = "redis-0.redis:6379"
    example = (K8S_DIR / "overlays" / "prod" / "secrets.env.example").read_text()
    assert broker_url in example, "the example broker URL points at the StatefulSet's pod"


# --- workers -------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_workers_shut_down_gracefully(rendered: Rendered, variant: str) -> None:
    worker = get(rendered[variant], "Deployment", "worker")
    (container,) = containers(worker)
    env = env_map(container)
    soft_timeout = float(env["GRIDFLEET_WORKER_SOFT_SHUTDOWN_TIMEOUT"]["value"])
    grace = pod_spec(worker)["terminationGracePeriodSeconds"]
    assert grace >= soft_timeout + 30, "room for the soft shutdown plus the cold shutdown"
    assert env["REMAP_SIGTERM"]["value"] == "SIGQUIT", "SIGTERM must start the soft shutdown"
    rolling = worker["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] not in (0, "0%")
    assert worker["spec"]["minReadySeconds"] > 0
    concurrency = int(env["GRIDFLEET_WORKER_CONCURRENCY"]["value"])
    assert "$(GRIDFLEET_WORKER_CONCURRENCY)" in container["args"]
    assert concurrency <= max(1, cpu_cores(container["resources"]["limits"]["cpu"]))


def test_prod_workers_scale_with_an_hpa_and_dev_runs_one(rendered: Rendered) -> None:
    assert get(rendered["dev"], "Deployment", "worker")["spec"]["replicas"] == 1
    assert not by_kind(rendered["dev"], "HorizontalPodAutoscaler")
    prod = rendered["prod"]
    worker = get(prod, "Deployment", "worker")
    assert "replicas" not in worker["spec"], "the HPA owns the replica count in prod"
    hpa = get(prod, "HorizontalPodAutoscaler", "worker")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "worker",
    }
    assert hpa["spec"]["minReplicas"] > 1
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"


def test_keda_component_replaces_the_hpa(rendered: Rendered) -> None:
    objects = rendered["prod+keda-queue-scaling"]
    assert not by_kind(objects, "HorizontalPodAutoscaler"), "KEDA creates its own HPA"
    scaled = get(objects, "ScaledObject", "worker")
    hpa = get(rendered["prod"], "HorizontalPodAutoscaler", "worker")
    assert scaled["spec"]["minReplicaCount"] == hpa["spec"]["minReplicas"], "same peak floor"
    assert {t["type"] for t in scaled["spec"]["triggers"]} == {"cpu", "redis"}
    note = (K8S_DIR / "components" / "keda-queue-scaling" / "kustomization.yaml").read_text()
    assert "peak" in note and "deadline" in note, "the note on why queue length is too slow"


# --- singletons, PDBs, config --------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_ingress_and_coordinator_run_an_active_and_a_standby(
    rendered: Rendered, variant: str
) -> None:
    """Two replicas each (a lease picks the active one, tests/platform/test_standby.py), rolled
    one at a time without ever going below two, on different nodes when there are."""
    for name in ("ingress", "coordinator"):
        deployment = get(rendered[variant], "Deployment", name)
        assert deployment["spec"]["replicas"] == 2
        assert deployment["spec"]["strategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        }
        anti = pod_spec(deployment)["affinity"]["podAntiAffinity"]
        (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
        assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        assert selector_matches(term["podAffinityTerm"]["labelSelector"], pod_labels(deployment))
        pdb = get(rendered[variant], "PodDisruptionBudget", name)
        assert pdb["spec"]["minAvailable"] == 1  # a drain may take one of the two at a time


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_workload_has_exactly_one_pdb(rendered: Rendered, variant: str) -> None:
    objects = rendered[variant]
    pdbs = by_kind(objects, "PodDisruptionBudget")
    for workload in workloads(objects):
        covering = [
            p for p in pdbs if selector_matches(p["spec"]["selector"], pod_labels(workload))
        ]
        assert len(covering) == 1, f"{variant}: {workload['metadata']['name']} has {covering}"
        assert covering[0]["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow"
    worker_pdb = get(objects, "PodDisruptionBudget", "worker")
    assert worker_pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_fleet_file_is_mounted_where_gridfleet_config_points(
    rendered: Rendered, variant: str
) -> None:
    objects = rendered[variant]
    fleet_map = find_generated(objects, "ConfigMap", "gridfleet-fleet")
    fleet = yaml.safe_load(fleet_map["data"]["fleet.yaml"])
    assert fleet["exchange"] == {"url_env": "GRIDFLEET_EXCHANGE_URL"}
    assert fleet["broker"] == {"url_env": "GRIDFLEET_BROKER_URL"}
    assert fleet["aggregators"] and fleet["shard_size"] > 0 and fleet["flower_events"] is False
    for name in ("ingress", "coordinator", "worker", "gridfleet-ledger"):
        deployment = get(objects, "Deployment", name)
        (container,) = containers(deployment)
        path = env_map(container)["GRIDFLEET_CONFIG"]["value"]
        assert path == "/etc/gridfleet/fleet.yaml"
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/gridfleet")
        volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"])
        assert volume["configMap"]["name"] == fleet_map["metadata"]["name"], "hash-suffixed"


@pytest.mark.parametrize("variant", VARIANTS)
def test_flower_has_basic_auth_and_a_service(rendered: Rendered, variant: str) -> None:
    objects = rendered[variant]
    flower = get(objects, "Deployment", "flower")
    (container,) = containers(flower)
    auth = env_map(container)["GRIDFLEET_FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]
    assert auth["key"] == "flower-basic-auth"
    assert container["args"][:3] == ["flower", "--port", "5555"]
    service = get(objects, "Service", "flower")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP", "not exposed outside"
    assert selector_matches({"matchLabels": service["spec"]["selector"]}, pod_labels(flower))
    fleet = yaml.safe_load(
        find_generated(objects, "ConfigMap", "gridfleet-fleet")["data"]["fleet.yaml"]
    )
    assert fleet["flower_events"] is False


def test_services_select_existing_pods(rendered: Rendered) -> None:
    for variant in VARIANTS:
        objects = rendered[variant]
        for service in by_kind(objects, "Service"):
            selector = {"matchLabels": service["spec"]["selector"]}
            targets = [w for w in workloads(objects) if selector_matches(selector, pod_labels(w))]
            assert len(targets) == 1, (variant, service["metadata"]["name"])
            (container,) = containers(targets[0])
            names = {p["name"] for p in container["ports"]}
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in names


# --- the ledger writer ---------------------------------------------------------------------

LEDGER = "gridfleet-ledger"
LEDGER_DIR = "/var/lib/gridfleet"
# a URL with a password in it: scheme://user:password@host
URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^\s/@:]*:[^\s/@]+@", re.IGNORECASE)


def _ledger(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    deployment = get(objects, "Deployment", LEDGER)
    (container,) = containers(deployment)
    return deployment, container


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_ledger_writer_runs_beside_the_fleet(rendered: Rendered, variant: str) -> None:
    objects = rendered[variant]
    deployment, container = _ledger(objects)
    assert _component(deployment) == "ledger"
    assert deployment["spec"]["replicas"] == 1
    args = container["args"]
    assert args[0] == "ledger" and "--run-id" not in args, "follows run after run"
    # a fixed name: the next pod takes the last one's pending entries at once (an overlap in a
    # rolling update may write an entry twice, which the ledger keeps once)
    assert args[args.index("--consumer") + 1] == "ledger"
    assert args[args.index("-c") + 1] == env_map(container)["GRIDFLEET_CONFIG"]["value"]
    broker = env_map(container)["GRIDFLEET_BROKER_URL"]["valueFrom"]["secretKeyRef"]
    assert broker["key"] == "broker-url"
    # /healthz on the port it serves metrics on
    metrics_port = int(args[args.index("--metrics-port") + 1])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        http = container[probe_name]["httpGet"]
        assert http["path"] == "/healthz", probe_name
        assert ports[http["port"]] == metrics_port, probe_name
    stale = _python_constant("gridfleet/ledger/metrics.py", r"(?m)^STALE_AFTER_S\s*=\s*([\d.]+)")
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= float(stale or 30)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(metrics_port)
    scrape = get(objects, "NetworkPolicy", "metrics-ingress-from-monitoring")
    assert selector_matches(scrape["spec"]["podSelector"], pod_labels(deployment))
    assert metrics_port in {p["port"] for rule in scrape["spec"]["ingress"] for p in rule["ports"]}
    # non-root, like every gridfleet process
    pod_sc = pod_spec(deployment)["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == GRIDFLEET_UID
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_dev_keeps_the_ledger_in_sqlite_on_a_volume(rendered: Rendered) -> None:
    objects = rendered["dev"]
    deployment, container = _ledger(objects)
    url = env_map(container)["GRIDFLEET_LEDGER_URL"]["value"]
    assert url == f"sqlite:///{LEDGER_DIR}/ledger.sqlite"
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == LEDGER_DIR)
    assert not mount.get("readOnly")
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"])
    claim = get(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["metadata"]["name"] == LEDGER
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pod_spec(deployment)["securityContext"]["fsGroup"] == GRIDFLEET_UID, "writable"
    # one SQLite file, one writer: the old pod lets go of the volume before the new one starts
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize("variant", PROD_VARIANTS)
def test_prod_keeps_the_ledger_in_an_external_postgresql(rendered: Rendered, variant: str) -> None:
    objects = rendered[variant]
    deployment, container = _ledger(objects)
    assert not by_kind(objects, "PersistentVolumeClaim"), "no SQLite volume"
    assert not any("persistentVolumeClaim" in v for v in pod_spec(deployment)["volumes"])
    assert all(m["mountPath"] != LEDGER_DIR for m in container["volumeMounts"])
    entry = env_map(container)["GRIDFLEET_LEDGER_URL"]
    assert "value" not in entry, "the URL carries a password: only from the Secret"
    ref = entry["valueFrom"]["secretKeyRef"]
    assert ref["key"] == "ledger-url"
    assert ref["name"] == find_generated(objects, "Secret", "gridfleet-secrets")["metadata"]["name"]
    # still one writer; a rolling update briefly runs two, which the consumer group allows
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    # the writer, and only the writer, reaches the database on 5432
    peers = _egress_peers(objects, pod_labels(deployment))
    database = [p for p in peers if ("TCP", 5432) in p["ports"]]
    assert database and all("ipBlock" in p["peer"] for p in database), database
    cidrs = [ipaddress.ip_network(p["peer"]["ipBlock"]["cidr"]) for p in database]
    assert all(cidr.prefixlen > 0 for cidr in cidrs), "the database only, not 0/0"
    for workload in workloads(objects):
        if _component(workload) != "ledger":
            others = _egress_peers(objects, pod_labels(workload))
            assert not [p for p in others if ("TCP", 5432) in p["ports"]], workload["metadata"]
    # the example URL: PostgreSQL, a placeholder password, an address the policy allows
    example = (K8S_DIR / "overlays" / "prod" / "secrets.env.example").read_text()
    (line,) = [x for x in example.splitlines() if x.startswith("ledger-url=")]
    parts = urllib.parse.urlsplit(line.split("=", 1)[1])
    assert parts.scheme == "postgresql" and parts.password == "CHANGE_ME" and parts.port == 5432
    assert any(ipaddress.ip_address(parts.hostname or "") in cidr for cidr in cidrs)


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_manifest_holds_a_password_or_a_database_url(rendered: Rendered, variant: str) -> None:
    text = yaml.safe_dump_all([o for o in rendered[variant] if o["kind"] != "Secret"])
    assert not URL_WITH_PASSWORD.search(text)
    assert "postgresql://" not in text and "postgres://" not in text
    for workload, container in _workload_containers(rendered, variant):
        for name, entry in env_map(container).items():
            if name == "GRIDFLEET_LEDGER_URL" and "value" in entry:
                assert entry["value"].startswith("sqlite:///"), workload["metadata"]["name"]


def test_tracked_manifests_hold_no_database_url() -> None:
    """What is in git, parsed (comments may show the URL's shape with USER:PASSWORD)."""
    for path in K8S_DIR.rglob("*.yaml"):
        text = yaml.safe_dump_all(list(yaml.safe_load_all(path.read_text())))
        assert not URL_WITH_PASSWORD.search(text), path
        assert "postgresql://" not in text, path


# --- consistency with the code (read as text: the manifests must not import the app) --------


def _python_constant(path: str, pattern: str) -> str | None:
    source = REPO_ROOT / path
    if not source.exists():  # the module is still being written: nothing to compare yet
        return None
    match = re.search(pattern, source.read_text())
    return match.group(1) if match else None


def test_soft_shutdown_timeout_matches_the_worker_settings(rendered: Rendered) -> None:
    from gridfleet.settings import Settings  # the settings only, not the app

    (container,) = containers(get(rendered["prod"], "Deployment", "worker"))
    declared = float(env_map(container)["GRIDFLEET_WORKER_SOFT_SHUTDOWN_TIMEOUT"]["value"])
    # The worker reads the manifest's variable; its default must not exceed what the pod allows.
    default = Settings.model_fields["worker_soft_shutdown_timeout"].default
    assert default is not None, "gridfleet.settings no longer has worker_soft_shutdown_timeout"
    assert float(default) <= declared
    grace = get(rendered["prod"], "Deployment", "worker")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ]
    assert grace > declared


def test_keda_reads_the_shard_queue(rendered: Rendered) -> None:
    scaled = get(rendered["prod+keda-queue-scaling"], "ScaledObject", "worker")
    (redis_trigger,) = [t for t in scaled["spec"]["triggers"] if t["type"] == "redis"]
    queue = _python_constant("gridfleet/platform/celery_app.py", r'(?m)^QUEUE\s*=\s*"([^"]+)"')
    expected = queue or "gridfleet.shards"
    assert redis_trigger["metadata"]["listName"] == expected
