"""Assertions on the rendered objects: GPU placement, probes, security, NetworkPolicy selectors,
autoscaling metric names, monitoring ports, and the model-version rollout."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.charts.toolbox import CHART, RULES_FILE, by_kind, one, render

pytestmark = pytest.mark.k8s


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def containers(obj: dict) -> list[dict]:
    spec = pod_spec(obj)
    return spec.get("initContainers", []) + spec["containers"]


def workloads(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] in ("Deployment", "Job")]


def matches(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels only, as this chart uses) against a set of labels."""
    assert set(selector) == {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


# --- GPU placement ---


def test_gpu_limits_and_tolerations_only_where_a_gpu_is_used(objects):
    triton = one(objects, "Deployment", "-triton")
    (job,) = by_kind(objects, "Job")
    for workload in workloads(objects):
        spec = pod_spec(workload)
        uses_gpu = workload in (triton, job)
        gpu_containers = [
            c["name"] for c in containers(workload) if "nvidia.com/gpu" in c["resources"]["limits"]
        ]
        toleration_keys = {t["key"] for t in spec.get("tolerations", [])}
        assert ("nvidia.com/gpu" in toleration_keys) == uses_gpu, workload["metadata"]["name"]
        assert bool(gpu_containers) == uses_gpu
        assert spec["nodeSelector"]["prodseg.io/pool"] == ("gpu" if uses_gpu else "cpu")
    # Triton itself holds the GPU; the model-preparation step reuses the same device for nvidia-smi.
    limits = {c["name"]: c["resources"]["limits"].get("nvidia.com/gpu") for c in containers(triton)}
    assert limits == {"sync-model": None, "prepare-model": 1, "triton": 1}
    triton_args = next(c for c in containers(triton) if c["name"] == "triton")["args"]
    assert "--model-config-name=gpu" in triton_args


def test_without_gpu_nothing_asks_for_one(tools):
    objects = render(sets={"triton.gpu.enabled": "false"})
    triton = one(objects, "Deployment", "-triton")
    assert not by_kind(objects, "Job")
    for container in containers(triton):
        assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert "tolerations" not in pod_spec(triton)
    assert pod_spec(triton)["nodeSelector"] == {"prodseg.io/pool": "cpu"}
    args = next(c for c in containers(triton) if c["name"] == "triton")["args"]
    # The portable config.pbtxt (ONNX Runtime on CPU): no --model-config-name at all.
    assert not [a for a in args if a.startswith("--model-config-name")]
    assert "--allow-gpu-metrics=false" in args


# --- Triton: serving contract, probes, drain ---


def triton_container(objects: list[dict]) -> dict:
    return next(c for c in containers(one(objects, "Deployment", "-triton")) if c["name"] == "triton")


def test_triton_runs_explicit_model_control_with_a_locked_repository_api(objects):
    args = triton_container(objects)["args"]
    assert "--model-control-mode=explicit" in args
    assert "--load-model=shelf_segmenter" in args
    assert "--model-repository=/models" in args
    assert "--strict-readiness=true" in args
    for protocol in ("http", "grpc"):
        assert f"--{protocol}-restricted-api=model-repository:admin-key=$(TRITON_ADMIN_KEY)" in args
    secret = one(objects, "Secret", "-triton-admin")
    key_ref = triton_container(objects)["env"][0]["valueFrom"]["secretKeyRef"]
    assert key_ref == {"name": secret["metadata"]["name"], "key": "admin-key"}
    assert len(secret["data"]["admin-key"]) >= 40


def test_probes_use_the_right_paths_and_ports(objects):
    triton = triton_container(objects)
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert triton["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert triton["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    # Liveness must not fail while a model loads: /live, not /ready.
    assert triton["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    startup = triton["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "too short for engine builds"

    gateway = next(c for c in containers(one(objects, "Deployment", "-gateway")) if c["name"] == "gateway")
    assert gateway["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert gateway["command"] == ["python", "-m", "gateway", "--host", "0.0.0.0", "--port", "8080"]
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_drain_fits_in_the_grace_period(objects):
    for deployment in by_kind(objects, "Deployment"):
        spec = pod_spec(deployment)
        main = spec["containers"][0]
        pre_stop = main["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pre_stop >= 5
        budget = pre_stop
        exit_timeout = [a for a in main.get("args", []) if a.startswith("--exit-timeout-secs=")]
        if exit_timeout:
            budget += int(exit_timeout[0].split("=")[1])
        assert spec["terminationGracePeriodSeconds"] > budget


def test_shared_memory_is_an_in_memory_volume(objects):
    triton = one(objects, "Deployment", "-triton")
    volumes = {v["name"]: v for v in pod_spec(triton)["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert volumes["dshm"]["emptyDir"]["sizeLimit"] == "2Gi"
    mounts = {m["mountPath"]: m for m in triton_container(objects)["volumeMounts"]}
    assert mounts["/dev/shm"]["name"] == "dshm"
    assert mounts["/models"].get("readOnly") is True


# --- Security ---


def test_every_pod_runs_restricted(objects):
    for workload in workloads(objects):
        spec = pod_spec(workload)
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] >= 10000
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in containers(workload):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert context["privileged"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            # A read-only root needs a writable /tmp (and the model volume where it is written).
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]} or container["name"] in (
                "prepare-model",
            )
    for account in by_kind(objects, "ServiceAccount"):
        assert account["automountServiceAccountToken"] is False


def test_workload_identity_without_keys(objects):
    triton = one(objects, "Deployment", "-triton")
    labels = triton["spec"]["template"]["metadata"]["labels"]
    assert labels["azure.workload.identity/use"] == "true"
    account = one(objects, "ServiceAccount", "-triton")
    assert pod_spec(triton)["serviceAccountName"] == account["metadata"]["name"]
    assert "azure.workload.identity/client-id" in account["metadata"]["annotations"]
    rendered = yaml.safe_dump_all(objects).lower()
    for secret_word in ("accountkey", "account_key", "sas_token", "sastoken", "connection_string"):
        assert secret_word not in rendered


# --- NetworkPolicies select the pods they mean ---


def pod_labels(objects: list[dict]) -> dict[str, dict]:
    return {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"] for w in workloads(objects)}


def test_network_policies_select_exactly_their_pods(objects):
    labels = pod_labels(objects)
    expected = {
        one(objects, "NetworkPolicy", "-triton")["metadata"]["name"]: {"prodsegmenter-triton"},
        one(objects, "NetworkPolicy", "-gateway")["metadata"]["name"]: {"prodsegmenter-gateway"},
        # The engine-build pods serve nothing: their policy admits no traffic at all.
        one(objects, "NetworkPolicy", "-engine-builder")["metadata"]["name"]: {
            j["metadata"]["name"] for j in by_kind(objects, "Job")
        },
    }
    assert len(by_kind(objects, "NetworkPolicy")) == 3
    for policy in by_kind(objects, "NetworkPolicy"):
        selected = {name for name, pod in labels.items() if matches(policy["spec"]["podSelector"], pod)}
        assert selected == expected[policy["metadata"]["name"]], policy["metadata"]["name"]
    assert "ingress" not in one(objects, "NetworkPolicy", "-engine-builder")["spec"]


def test_only_the_gateway_and_monitoring_reach_triton(objects):
    labels = pod_labels(objects)
    policy = one(objects, "NetworkPolicy", "-triton")
    triton_ports = {p["name"] for p in triton_container(objects)["ports"]}
    pod_peers, namespace_peers = [], []
    for rule in policy["spec"]["ingress"]:
        ports = {p["port"] for p in rule["ports"]}
        assert ports <= triton_ports, "a policy port that the container does not have"
        for peer in rule["from"]:
            if "podSelector" in peer:
                pod_peers.append((peer["podSelector"], ports))
            else:
                namespace_peers.append(
                    (peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], ports)
                )
    assert len(pod_peers) == 1
    selector, ports = pod_peers[0]
    reached_by = {name for name, pod in labels.items() if matches(selector, pod)}
    assert reached_by == {one(objects, "Deployment", "-gateway")["metadata"]["name"]}
    assert "grpc" in ports
    assert ("monitoring", {"metrics"}) in namespace_peers
    # The gRPC Ingress's controller reaches the gRPC port, nothing else.
    assert ("app-routing-system", {"grpc"}) in namespace_peers
    assert len(namespace_peers) == 2


def test_gateway_is_reached_from_the_ingress_controller_and_monitoring(objects):
    policy = one(objects, "NetworkPolicy", "-gateway")
    (rule,) = policy["spec"]["ingress"]
    namespaces = {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in rule["from"]}
    assert namespaces == {"app-routing-system", "monitoring"}
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]


# --- Services, Ingress, monitoring ---


def test_services_select_their_pods_and_target_named_ports(objects):
    labels = pod_labels(objects)
    for service in by_kind(objects, "Service"):
        assert service["spec"]["type"] == "ClusterIP"
        selected = [
            n for n, pod in labels.items() if matches({"matchLabels": service["spec"]["selector"]}, pod)
        ]
        assert len(selected) == 1, service["metadata"]["name"]
        workload = next(w for w in workloads(objects) if w["metadata"]["name"] == selected[0])
        container_ports = {p["name"] for c in pod_spec(workload)["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports


def test_service_ports_match_the_service_monitors(objects):
    monitors = by_kind(objects, "ServiceMonitor")
    assert len(monitors) == 2
    for monitor in monitors:
        services = [
            s
            for s in by_kind(objects, "Service")
            if matches(monitor["spec"]["selector"], s["metadata"]["labels"])
        ]
        assert len(services) == 1, monitor["metadata"]["name"]
        port_names = {p["name"] for p in services[0]["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in port_names
            assert endpoint["path"] == "/metrics"
        # The Prometheus Operator picks monitors up by the release label of kube-prometheus-stack.
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    triton_monitor = one(objects, "ServiceMonitor", "-triton")
    assert triton_monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_ingress_routes_and_upload_limit(objects):
    gateway_ingress = one(objects, "Ingress", "-gateway")
    env = {
        e["name"]: e["value"] for e in next(iter(containers(one(objects, "Deployment", "-gateway"))))["env"]
    }
    # NGINX's body limit is the gateway's own limit: the gateway answers 413 with its JSON error.
    body_size = gateway_ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert body_size == env["PRODSEG_MAX_UPLOAD_BYTES"] == "536870912"
    backend = gateway_ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {
        "name": one(objects, "Service", "-gateway")["metadata"]["name"],
        "port": {"name": "http"},
    }
    grpc_ingress = one(objects, "Ingress", "-triton-grpc")
    assert grpc_ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    assert grpc_ingress["spec"]["tls"][0]["secretName"] == "prodseg-tls"
    backend = grpc_ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {
        "name": one(objects, "Service", "-triton")["metadata"]["name"],
        "port": {"name": "grpc"},
    }


def test_gateway_environment(objects):
    env = {
        e["name"]: e["value"] for e in next(iter(containers(one(objects, "Deployment", "-gateway"))))["env"]
    }
    triton_service = one(objects, "Service", "-triton")
    grpc_port = next(p["port"] for p in triton_service["spec"]["ports"] if p["name"] == "grpc")
    assert (
        env["PRODSEG_TRITON_GRPC_URL"]
        == f"{triton_service['metadata']['name']}.prodseg.svc.cluster.local:{grpc_port}"
    )
    assert env["PRODSEG_GATEWAY_DATA_DIR"] == "/data"
    for name in ("MAX_IMAGE_BYTES", "MAX_IN_FLIGHT", "FRAMES_PER_REQUEST", "MAX_CONCURRENT_JOBS"):
        assert env[f"PRODSEG_{name}"].isdigit()


# --- Autoscaling: HPA metric == adapter rule == recording rule ---


def recording_rules() -> set[str]:
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def adapter_exposed_names(objects: list[dict]) -> dict[str, str]:
    """Metric name the adapter exposes -> the series its rule queries (adapter naming semantics)."""
    config = yaml.safe_load(one(objects, "ConfigMap", "prometheus-adapter")["data"]["config.yaml"])
    exposed = {}
    for rule in config["rules"]:
        series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"]).group(0)
        name_as = re.sub(r"\$\{(\d+)\}", r"\\\1", rule["name"]["as"])
        exposed[re.sub(rule["name"]["matches"], name_as, series)] = series
    return exposed


def test_hpa_metric_is_served_by_the_adapter_from_a_recording_rule(objects):
    hpa = one(objects, "HorizontalPodAutoscaler", "-triton")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    exposed = adapter_exposed_names(objects)
    assert name in exposed, f"HPA metric {name} is not among the adapter's {sorted(exposed)}"
    assert exposed[name] in recording_rules()
    assert name == exposed[name] == "prodseg:triton_queue_time_per_request_us:rate1m"
    adapter = one(objects, "ConfigMap", "prometheus-adapter")
    assert adapter["metadata"]["namespace"] == "monitoring"


def test_hpa_targets_and_behaviour(objects):
    triton = one(objects, "HorizontalPodAutoscaler", "-triton")
    assert (
        triton["spec"]["scaleTargetRef"]["name"] == one(objects, "Deployment", "-triton")["metadata"]["name"]
    )
    assert triton["spec"]["minReplicas"] >= 2
    assert triton["spec"]["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert triton["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    gateway = one(objects, "HorizontalPodAutoscaler", "-gateway")
    assert gateway["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    # With an HPA the Deployment must not pin replicas (every upgrade would reset the scale).
    for deployment in by_kind(objects, "Deployment"):
        assert "replicas" not in deployment["spec"]


def test_pod_disruption_budgets_cover_both_components(objects):
    labels = pod_labels(objects)
    budgets = by_kind(objects, "PodDisruptionBudget")
    covered = {n for b in budgets for n, pod in labels.items() if matches(b["spec"]["selector"], pod)}
    assert covered == {d["metadata"]["name"] for d in by_kind(objects, "Deployment")}


# --- Rollout of a model version ---


def test_a_new_model_version_rolls_every_triton_pod(tools):
    old = one(render(sets={"model.version": "1"}), "Deployment", "-triton")
    new = one(render(sets={"model.version": "2"}), "Deployment", "-triton")
    # Selectors are immutable: they must not change, or `helm upgrade` fails.
    assert old["spec"]["selector"] == new["spec"]["selector"]
    assert old["spec"]["template"] != new["spec"]["template"]
    metadata = new["spec"]["template"]["metadata"]
    assert metadata["annotations"]["prodseg.io/model"] == "shelf_segmenter:2"
    assert metadata["labels"]["prodseg.io/model-version"] == "2"
    sync = next(c for c in containers(new) if c["name"] == "sync-model")
    assert {"name": "MODEL_VERSION", "value": "2"} in sync["env"]
    prepare = next(c for c in containers(new) if c["name"] == "prepare-model")
    assert "--version=2" in prepare["command"]
    strategy = new["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    # The gateway does not roll for a model change.
    assert one(render(sets={"model.version": "1"}), "Deployment", "-gateway") == one(
        render(sets={"model.version": "2"}), "Deployment", "-gateway"
    )


def test_engine_build_jobs_per_pool_and_version(tools):
    objects = render(
        sets={
            "model.version": "3",
            "tensorrt.modelVersion": "4",
            "tensorrt.pools[0].name": "a100",
            "tensorrt.pools[0].nodeSelector.prodseg\\.io/pool": "gpu-a100",
            "tensorrt.pools[1].name": "t4",
            "tensorrt.pools[1].nodeSelector.prodseg\\.io/pool": "gpu",
        }
    )
    jobs = by_kind(objects, "Job")
    assert {j["metadata"]["labels"]["prodseg.io/pool"] for j in jobs} == {"a100", "t4"}
    for job in jobs:
        assert job["metadata"]["labels"]["prodseg.io/model-version"] == "4"  # prebuilt before the rollout
        assert len(job["metadata"]["name"]) <= 63
        spec = pod_spec(job)
        assert spec["restartPolicy"] == "Never"
        assert [c["name"] for c in containers(job)] == ["sync-model", "build-engine", "upload-plans"]
        assert spec["serviceAccountName"].endswith("-engine-builder")
    a100 = next(j for j in jobs if j["metadata"]["labels"]["prodseg.io/pool"] == "a100")
    assert pod_spec(a100)["nodeSelector"] == {"prodseg.io/pool": "gpu-a100"}
    # Any change to a Job's spec changes its name (Jobs are immutable).
    again = by_kind(render(sets={"model.version": "3", "tensorrt.modelVersion": "4"}), "Job")
    assert {j["metadata"]["name"] for j in again}.isdisjoint({j["metadata"]["name"] for j in jobs})


def test_scripts_configmap_carries_the_chart_files_and_rolls_pods_when_they_change(objects):
    scripts = one(objects, "ConfigMap", "-scripts")
    for name in ("model-store.sh", "prepare_model.py", "build-engine.sh"):
        assert scripts["data"][name] == (CHART / "files" / name).read_text().rstrip("\n")
    annotations = one(objects, "Deployment", "-triton")["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/scripts"])


def test_prometheus_rule_and_dashboard_embed_the_chart_files(objects):
    rule = one(objects, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES_FILE.read_text())
    dashboard = one(objects, "ConfigMap", "-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["prodsegmenter.json"] == (
        CHART / "files" / "grafana-dashboard.json"
    ).read_text().rstrip("\n")
