"""Assertions on the rendered objects: GPU placement, probes, security, NetworkPolicy selectors,
autoscaling metric names, monitoring ports, and the model-version rollout."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import yaml

from clients.wire import JPEG_WIRE_SUFFIX, wire_model_name
from tests.charts.toolbox import CHART, ROOT, RULES_FILE, RenderError, by_kind, one, render, render_notes

DEFAULT_VERSIONS = {
    m["name"]: m["version"] for m in yaml.safe_load((CHART / "values.yaml").read_text())["models"]
}
DEFAULT_MODELS = list(DEFAULT_VERSIONS)
JPEG_WIRE_CODECS = ("jpeg_decoder", "mask_encoder")  # the ensembles' shared steps (clients/wire.py)

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
    jobs = by_kind(objects, "Job")
    assert len(jobs) == len(DEFAULT_MODELS)  # one engine build per model (one GPU pool)
    for workload in workloads(objects):
        spec = pod_spec(workload)
        uses_gpu = workload is triton or workload in jobs
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
    # Each model's config is chosen by prepare-model (configs/gpu.pbtxt on this pool), not by one
    # server-wide --model-config-name.
    triton_args = next(c for c in containers(triton) if c["name"] == "triton")["args"]
    assert not [a for a in triton_args if a.startswith("--model-config-name")]
    assert {m["configName"] for m in prepared_models(triton)} == {"gpu"}


def test_without_gpu_nothing_asks_for_one(tools):
    objects = render(sets={"triton.gpu.enabled": "false"})
    triton = one(objects, "Deployment", "-triton")
    assert not by_kind(objects, "Job")
    for container in containers(triton):
        assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert "tolerations" not in pod_spec(triton)
    assert pod_spec(triton)["nodeSelector"] == {"prodseg.io/pool": "cpu"}
    args = next(c for c in containers(triton) if c["name"] == "triton")["args"]
    assert "--allow-gpu-metrics=false" in args
    # The portable config.pbtxt (ONNX Runtime on CPU) for every model; no plans without a GPU.
    assert {(m["configName"], m["tensorrt"]) for m in prepared_models(triton)} == {("", False)}


# --- Triton: serving contract, probes, drain ---


def triton_container(objects: list[dict]) -> dict:
    return next(c for c in containers(one(objects, "Deployment", "-triton")) if c["name"] == "triton")


def is_companion(name: str) -> bool:
    """A JPEG-wire helper the chart serves after the models (values jpegWire), not a listed model."""
    return name in JPEG_WIRE_CODECS or name.endswith(JPEG_WIRE_SUFFIX)


def prepared(triton: dict) -> list[dict]:
    """Everything the prepare-model init container receives (JSON in its --models argument)."""
    prepare = next(c for c in containers(triton) if c["name"] == "prepare-model")
    (argument,) = [a for a in prepare["command"] if a.startswith("--models=")]
    return json.loads(argument.removeprefix("--models="))


def prepared_models(triton: dict) -> list[dict]:
    """The listed models' entries of prepare-model's list (the JPEG wire's companions follow them)."""
    return [entry for entry in prepared(triton) if not is_companion(entry["name"])]


def prepared_companions(triton: dict) -> list[dict]:
    return [entry for entry in prepared(triton) if is_companion(entry["name"])]


def synced(workload: dict) -> str:
    """The sync init container's MODELS: "name=versions" pairs for files/model-store.sh."""
    sync = next(c for c in containers(workload) if c["name"] == "sync-model")
    return next(e["value"] for e in sync["env"] if e["name"] == "MODELS")


def synced_models(workload: dict) -> str:
    """The listed models' pairs of the sync list (the JPEG wire's companions follow them)."""
    return " ".join(pair for pair in synced(workload).split() if not is_companion(pair.split("=")[0]))


def loaded(objects: list[dict]) -> list[str]:
    """What Triton loads at start, in order (one --load-model each)."""
    args = triton_container(objects)["args"]
    return [a.removeprefix("--load-model=") for a in args if a.startswith("--load-model=")]


def models_file(tmp_path: Path, models: list[dict]) -> Path:
    path = tmp_path / f"models-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    return path


def test_triton_loads_every_listed_model_and_prepares_each(objects):
    assert [name for name in loaded(objects) if not is_companion(name)] == DEFAULT_MODELS
    triton = one(objects, "Deployment", "-triton")
    assert prepared_models(triton) == [
        {
            "name": name,
            "version": version,
            "versions": [version],
            "configName": "gpu",
            "tensorrt": True,
            "engineVersion": version,
        }
        for name, version in DEFAULT_VERSIONS.items()
    ]
    assert synced_models(triton) == " ".join(f"{name}={v}" for name, v in DEFAULT_VERSIONS.items())
    labels = triton["spec"]["template"]["metadata"]["labels"]
    assert {k: v for k, v in labels.items() if k.startswith("model.prodseg.io/")} == {
        f"model.prodseg.io/{name}": str(version) for name, version in DEFAULT_VERSIONS.items()
    }


def test_per_model_config_names_and_tensorrt_switches(tools, tmp_path):
    models = [
        {"name": "shelf_segmenter", "version": 3},
        {"name": "crack_segmenter", "version": 2, "configName": "gpu-int8", "tensorrt": False},
        {"name": "mask_detector", "version": 1, "configName": ""},
    ]
    objects = render([models_file(tmp_path, models)])
    assert prepared_models(one(objects, "Deployment", "-triton")) == [
        {
            "name": "shelf_segmenter",
            "version": 3,
            "versions": [3],
            "configName": "gpu",
            "tensorrt": True,
            "engineVersion": 3,
        },
        {
            "name": "crack_segmenter",
            "version": 2,
            "versions": [2],
            "configName": "gpu-int8",
            "tensorrt": False,
            "engineVersion": 2,
        },
        {
            "name": "mask_detector",
            "version": 1,
            "versions": [1],
            "configName": "",
            "tensorrt": True,
            "engineVersion": 1,
        },
    ]
    jobs = by_kind(objects, "Job")
    assert sorted(j["metadata"]["labels"]["prodseg.io/model"] for j in jobs) == [
        "mask_detector",
        "shelf_segmenter",
    ]
    shelf = next(j for j in jobs if j["metadata"]["labels"]["prodseg.io/model"] == "shelf_segmenter")
    assert synced_models(shelf) == "shelf_segmenter=3"  # a Job syncs only the model it builds
    build = next(c for c in containers(shelf) if c["name"] == "build-engine")
    env = {e["name"]: e["value"] for e in build["env"]}
    assert (env["MODEL_NAME"], env["MODEL_VERSION"], env["CONFIG_NAME"]) == ("shelf_segmenter", "3", "gpu")


# --- The JPEG wire (jpegWire): its companions synced, prepared and loaded after the models ---


def jpeg_wire(models: list[str], decoder_config: str) -> list[dict]:
    """The companions the chart serves for ``models``, in prepare-model's shape: version 1 each."""
    return [
        {"name": name, "version": 1, "versions": [1], "configName": config, "tensorrt": False}
        for name, config in [
            ("jpeg_decoder", decoder_config),
            ("mask_encoder", ""),
            *((wire_model_name(model), "") for model in models),
        ]
    ]


def test_the_gpu_pool_serves_the_jpeg_wire_with_the_dali_decoder(objects):
    triton = one(objects, "Deployment", "-triton")
    companions = jpeg_wire(DEFAULT_MODELS, decoder_config="gpu")  # configs/gpu.pbtxt: DALI (nvJPEG)
    assert prepared_companions(triton) == companions
    names = [c["name"] for c in companions]
    # After the models: loaded, prepared and synced (version 1 of each folder), nothing else.
    assert loaded(objects) == DEFAULT_MODELS + names
    assert [entry["name"] for entry in prepared(triton)] == DEFAULT_MODELS + names
    assert synced(triton) == " ".join([synced_models(triton), *(f"{name}=1" for name in names)])
    # Companions are not models: no pod label, no engine build, not in the rollout annotation, not
    # in the gateway's model list.
    labels = triton["spec"]["template"]["metadata"]["labels"]
    assert not [k for k in labels if k.startswith("model.prodseg.io/") and is_companion(k.split("/")[1])]
    built = {job["metadata"]["labels"]["prodseg.io/model"] for job in by_kind(objects, "Job")}
    assert built == set(DEFAULT_MODELS)
    annotation = triton["spec"]["template"]["metadata"]["annotations"]["prodseg.io/models"]
    assert annotation == synced_models(triton)
    gateway = next(c for c in containers(one(objects, "Deployment", "-gateway")) if c["name"] == "gateway")
    assert {e["name"]: e.get("value") for e in gateway["env"]}["PRODSEG_MODELS"] == ",".join(DEFAULT_MODELS)
    # Strict readiness holds them to the models' standard: a companion that fails keeps the pod unready.
    assert "--strict-readiness=true" in triton_container(objects)["args"]
    assert "JPEG wire: jpeg_decoder, mask_encoder, shelf_segmenter_jpeg" in render_notes()


def test_without_the_jpeg_wire_only_the_models_are_served(tools):
    objects = render(sets={"jpegWire.enabled": "false"})
    triton = one(objects, "Deployment", "-triton")
    assert loaded(objects) == DEFAULT_MODELS
    assert prepared(triton) == prepared_models(triton) and synced(triton) == synced_models(triton)
    assert "JPEG wire" not in render_notes(sets={"jpegWire.enabled": "false"})


def test_the_cpu_pool_serves_the_jpeg_wire_only_with_an_image_that_has_opencv(tools):
    stock = {"triton.gpu.enabled": "false"}
    objects = render(sets=stock)
    triton = one(objects, "Deployment", "-triton")
    assert loaded(objects) == DEFAULT_MODELS  # the python decoder would never load: no OpenCV
    assert prepared(triton) == prepared_models(triton) and synced(triton) == synced_models(triton)
    notes = " ".join(render_notes(sets=stock).split())
    assert "needs OpenCV" in notes and "Clients stay on raw pixels" in notes
    with_opencv = {**stock, "jpegWire.cpuImageHasOpenCV": "true"}
    objects = render(sets=with_opencv)
    # The python/OpenCV decoder: config.pbtxt, like every other companion.
    assert prepared_companions(one(objects, "Deployment", "-triton")) == jpeg_wire(DEFAULT_MODELS, "")
    assert loaded(objects) == DEFAULT_MODELS + [c["name"] for c in jpeg_wire(DEFAULT_MODELS, "")]
    assert "Clients stay on raw pixels" not in render_notes(sets=with_opencv)


def test_a_model_without_a_wire_folder_opts_out_and_companions_are_not_models(tools, tmp_path):
    models = [
        {"name": "shelf_segmenter", "version": 3},
        {"name": "engagement_classifier", "version": 1, "jpegWire": False},
    ]
    objects = render([models_file(tmp_path, models)])
    assert loaded(objects) == [
        "shelf_segmenter",
        "engagement_classifier",
        "jpeg_decoder",
        "mask_encoder",
        "shelf_segmenter_jpeg",
    ]
    # No model wants its wire: the shared steps have nothing to serve either.
    alone = render([models_file(tmp_path, [dict(models[1])])])
    assert loaded(alone) == ["engagement_classifier"]
    # A companion listed as a model would be synced and loaded twice.
    with pytest.raises(RenderError, match="jpeg_decoder is a JPEG-wire companion"):
        render([models_file(tmp_path, [models[0], {"name": "jpeg_decoder", "version": 1}])])


def test_triton_runs_explicit_model_control_with_a_locked_repository_api(objects):
    args = triton_container(objects)["args"]
    assert "--model-control-mode=explicit" in args
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
    assert gateway["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
    ]
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
    rules = {
        tuple(p["port"] for p in rule["ports"]): {
            p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in rule["from"]
        }
        for rule in policy["spec"]["ingress"]
    }
    # The API from the ingress controller; /metrics (its own port) from Prometheus only.
    assert rules == {("http",): {"app-routing-system"}, ("metrics",): {"monitoring"}}


def test_without_ingress_or_peers_nobody_but_monitoring_reaches_the_gateway(tools):
    """An ingress rule with an empty `from` would admit every pod: it must not be rendered."""
    policy = one(render(sets={"ingress.enabled": "false"}), "NetworkPolicy", "-gateway")
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}] and rule["from"]


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
    gateway_monitor = one(objects, "ServiceMonitor", "-gateway")
    assert gateway_monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_gateway_metrics_are_on_their_own_port_never_the_public_one(objects):
    gateway = next(c for c in containers(one(objects, "Deployment", "-gateway")) if c["name"] == "gateway")
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports == {"http": 8080, "metrics": int(env["PRODSEG_METRICS_PORT"])}
    public = one(objects, "Service", "-gateway")
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["http"]
    metrics = one(objects, "Service", "-gateway-metrics")
    assert [(p["targetPort"], p["port"]) for p in metrics["spec"]["ports"]] == [("metrics", ports["metrics"])]
    for ingress in by_kind(objects, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["port"] != {"name": "metrics"}
                assert path["backend"]["service"]["name"] != metrics["metadata"]["name"]


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
    # gRPC's DNS resolver over the headless Service: every ready Triton pod, balanced per call.
    headless = one(objects, "Service", "-triton-headless")
    assert headless["spec"]["clusterIP"] == "None"
    grpc_port = next(p["port"] for p in headless["spec"]["ports"] if p["name"] == "grpc")
    assert (
        env["PRODSEG_TRITON_GRPC_URL"]
        == f"dns:///{headless['metadata']['name']}.prodseg.svc.cluster.local:{grpc_port}"
    )
    assert env["PRODSEG_MODELS"] == ",".join(DEFAULT_MODELS)
    assert env["PRODSEG_TRITON_CONFIG_NAME"] == "gpu"
    assert "PRODSEG_AB_TESTS" not in env and "PRODSEG_RETRAIN_POLICIES" not in env
    for name in ("KEPT_PREDICTIONS", "JOB_RETENTION_S", "RETRAIN_CHECK_S"):
        assert env[f"PRODSEG_{name}"].isdigit()
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


def test_a_new_model_version_rolls_every_triton_pod(tools, tmp_path):
    two = [{"name": "shelf_segmenter", "version": 1}, {"name": "crack_segmenter", "version": 1}]
    old_objects = render([models_file(tmp_path, two)])
    new_objects = render([models_file(tmp_path, [two[0], dict(two[1], version=2)])])
    old, new = one(old_objects, "Deployment", "-triton"), one(new_objects, "Deployment", "-triton")
    # Selectors are immutable: they must not change, or `helm upgrade` fails.
    assert old["spec"]["selector"] == new["spec"]["selector"]
    assert old["spec"]["template"] != new["spec"]["template"]
    metadata = new["spec"]["template"]["metadata"]
    assert metadata["annotations"]["prodseg.io/models"] == "shelf_segmenter=1 crack_segmenter=2"
    assert metadata["labels"]["model.prodseg.io/crack_segmenter"] == "2"
    assert metadata["labels"]["model.prodseg.io/shelf_segmenter"] == "1"
    assert synced_models(new) == "shelf_segmenter=1 crack_segmenter=2"
    assert [m["version"] for m in prepared_models(new)] == [1, 2]
    strategy = new["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    # The gateway does not roll for a model change.
    assert one(old_objects, "Deployment", "-gateway") == one(new_objects, "Deployment", "-gateway")


def test_engine_build_jobs_per_model_pool_and_version(tools, tmp_path):
    models = [
        {"name": "shelf_segmenter", "version": 3, "engineVersion": 4},
        {"name": "engagement_classifier", "version": 1},
    ]
    pools = {
        "tensorrt.pools[0].name": "a100",
        "tensorrt.pools[0].nodeSelector.prodseg\\.io/pool": "gpu-a100",
        "tensorrt.pools[1].name": "t4",
        "tensorrt.pools[1].nodeSelector.prodseg\\.io/pool": "gpu",
    }
    objects = render([models_file(tmp_path, models)], sets=pools)
    jobs = by_kind(objects, "Job")
    built = {
        (j["metadata"]["labels"]["prodseg.io/model"], j["metadata"]["labels"]["prodseg.io/pool"])
        for j in jobs
    }
    assert built == {(m, p) for m in ("shelf_segmenter", "engagement_classifier") for p in ("a100", "t4")}
    # engineVersion 4 is prebuilt before the rollout of version 4; the pods still serve 3.
    assert prepared_models(one(objects, "Deployment", "-triton"))[0]["version"] == 3
    for job in jobs:
        model = job["metadata"]["labels"]["prodseg.io/model"]
        version = "4" if model == "shelf_segmenter" else "1"
        assert job["metadata"]["labels"]["prodseg.io/model-version"] == version
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])  # no "_" in names
        assert len(job["metadata"]["name"]) <= 63
        spec = pod_spec(job)
        assert spec["restartPolicy"] == "Never"
        assert [c["name"] for c in containers(job)] == ["sync-model", "build-engine", "upload-plans"]
        assert spec["serviceAccountName"].endswith("-engine-builder")
    a100 = next(j for j in jobs if j["metadata"]["labels"]["prodseg.io/pool"] == "a100")
    assert pod_spec(a100)["nodeSelector"] == {"prodseg.io/pool": "gpu-a100"}
    # Any change to a Job's spec changes its name (Jobs are immutable).
    again = by_kind(render([models_file(tmp_path, models)]), "Job")
    assert {j["metadata"]["name"] for j in again}.isdisjoint({j["metadata"]["name"] for j in jobs})


def test_scripts_configmap_carries_the_chart_files_and_rolls_pods_when_they_change(objects):
    scripts = one(objects, "ConfigMap", "-scripts")
    for name in ("model-store.sh", "prepare_model.py", "build-engine.sh"):
        assert scripts["data"][name] == (CHART / "files" / name).read_text().rstrip("\n")
    # prepare_model.py imports the one config editor and atomic writer from beside it.
    for name in ("config_text.py", "atomic.py"):
        assert scripts["data"][name] == (ROOT / "clients" / name).read_text().rstrip("\n")
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


# --- API keys ---


def gateway_pod(objects: list[dict]) -> tuple[dict, dict]:
    deployment = one(objects, "Deployment", "-gateway")
    return pod_spec(deployment), next(c for c in containers(deployment) if c["name"] == "gateway")


def key_store_volume(spec: dict, gateway: dict) -> dict:
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    mount = next(m for m in gateway["volumeMounts"] if m["name"] == "api-keys")
    # Mounted as a directory (no subPath), read-only: Secret updates reach the running pod.
    assert mount["readOnly"] is True and "subPath" not in mount
    assert env["PRODSEG_API_KEYS_FILE"] == f"{mount['mountPath']}/api-keys.json"
    return next(v for v in spec["volumes"] if v["name"] == "api-keys")["secret"]


def test_auth_is_on_by_default_with_the_key_store_from_a_secret(objects):
    spec, gateway = gateway_pod(objects)
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    assert env["PRODSEG_AUTH_ENABLED"] == "true"
    secret = key_store_volume(spec, gateway)
    assert secret["secretName"] == "prodsegmenter-api-keys"
    assert secret["items"] == [{"key": "api-keys.json", "path": "api-keys.json"}]
    assert secret["defaultMode"] == 0o440
    # No keys in values: the chart creates no Secret (infra/deploy.sh --api-keys does), and says so.
    assert not [s for s in by_kind(objects, "Secret") if s["metadata"]["name"].endswith("-api-keys")]


def values_file(tmp_path: Path, values: dict) -> Path:
    path = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_a_key_store_from_values_becomes_the_secret(tools, tmp_path):
    store = json.dumps({"keys": [{"name": "ci", "salt": "c2FsdA==", "hash": "aGFzaA==", "models": []}]})
    objects = render([values_file(tmp_path, {"gateway": {"auth": {"keyStore": store}}})])
    secret = one(objects, "Secret", "-api-keys")
    assert base64.b64decode(secret["data"]["api-keys.json"]).decode() == store
    spec, gateway = gateway_pod(objects)
    assert key_store_volume(spec, gateway)["secretName"] == secret["metadata"]["name"]


def test_an_existing_secret_is_mounted_under_its_own_key(tools):
    objects = render(
        sets={"gateway.auth.existingSecret": "team-keys", "gateway.auth.secretKey": "store.json"}
    )
    spec, gateway = gateway_pod(objects)
    secret = key_store_volume(spec, gateway)
    assert secret["secretName"] == "team-keys"
    assert secret["items"] == [{"key": "store.json", "path": "api-keys.json"}]
    assert not [s for s in by_kind(objects, "Secret") if "api-keys" in s["metadata"]["name"]]


def test_auth_off_mounts_no_keys(tools):
    spec, gateway = gateway_pod(render(sets={"gateway.auth.enabled": "false"}))
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    assert env["PRODSEG_AUTH_ENABLED"] == "false" and "PRODSEG_API_KEYS_FILE" not in env
    assert "api-keys" not in {v["name"] for v in spec["volumes"]}


@pytest.mark.parametrize(
    "values, message",
    [
        ({"auth": {"keyStore": "{}", "existingSecret": "x"}}, "set existingSecret or keyStore"),
        ({"auth": {"keyStore": "not json"}}, "gateway.auth.keyStore is not JSON"),
        ({"metricsPort": 8080}, "gateway.metricsPort must differ from the public port"),
    ],
    ids=["both-key-sources", "key-store-not-json", "metrics-on-public-port"],
)
def test_auth_and_metrics_guards(tools, tmp_path, values, message):
    with pytest.raises(RenderError, match=message):
        render([values_file(tmp_path, {"gateway": values})])


# --- NOTES.txt ---


def test_notes_list_the_models_and_say_how_to_roll_one_out(tools):
    notes = render_notes()
    for name, version in DEFAULT_VERSIONS.items():
        assert f"  {name} version {version} (config gpu, TensorRT plans when built)" in notes
    assert "helm get values prodsegmenter -n prodseg --all -o json | python3 infra/model_values.py" in notes
    assert "--set model" not in notes  # a list entry set on the command line replaces the whole list
    # Auth on without keys in values: how to create the Secret the gateway waits for.
    assert (
        "kubectl -n prodseg create secret generic prodsegmenter-api-keys --from-file=api-keys.json=" in notes
    )


def test_notes_warn_when_auth_is_off(tools):
    notes = render_notes(sets={"gateway.auth.enabled": "false"})
    assert "WARNING: gateway.auth.enabled is false" in notes
    assert "create secret" not in notes
