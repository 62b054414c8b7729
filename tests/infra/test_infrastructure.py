"""The Bicep, its parameter files, the deploy and rollout scripts and the chart agree with each
other (no Bicep CLI or Azure here: these are the offline checks), and `make tools` is idempotent."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
import yaml

from tests.charts.toolbox import NAMESPACE, RELEASE, ROOT, by_kind, render, run

INFRA = ROOT / "infra"
BICEP = (INFRA / "aks" / "main.bicep").read_text()
ENVIRONMENTS = sorted((INFRA / "aks" / "environments").glob("*.parameters.json"))


def bicep_params() -> dict[str, bool]:
    """Parameter name -> whether it has a default."""
    return {
        m.group(1): bool(m.group(2)) for m in re.finditer(r"^param (\w+) \w+( = .+)?$", BICEP, re.MULTILINE)
    }


@pytest.mark.parametrize("parameters", ENVIRONMENTS, ids=lambda p: p.stem)
def test_parameter_files_set_declared_parameters(parameters):
    given = json.loads(parameters.read_text())["parameters"]
    declared = bicep_params()
    assert set(given) <= set(declared), set(given) - set(declared)
    assert {name for name, has_default in declared.items() if not has_default} <= set(given)
    assert given["environmentName"]["value"] == parameters.name.split(".")[0]
    assert (INFRA / "helm" / f"values-{parameters.name.split('.')[0]}.yaml").exists()
    assert given["gpuPoolMaxCount"]["value"] >= given["gpuPoolMinCount"]["value"]


def test_bicep_declares_what_the_issue_asks_for():
    for resource in (
        "Microsoft.ContainerService/managedClusters",
        "Microsoft.ContainerRegistry/registries",
        "Microsoft.Storage/storageAccounts/blobServices/containers",
        "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials",
        "Microsoft.OperationalInsights/workspaces",
    ):
        assert f"'{resource}@" in BICEP, resource
    assert "workloadIdentity: { enabled: true }" in BICEP and "oidcIssuerProfile: { enabled: true }" in BICEP
    assert "allowSharedKeyAccess: false" in BICEP
    for pool in ("system", "cpu", "gpu"):
        assert f"name: '{pool}'" in BICEP
    assert BICEP.count("enableAutoScaling: true") == 2  # cpu and gpu pools: autoscaler bounds


@pytest.mark.k8s
def test_chart_defaults_match_the_cluster_bicep_builds(tools):
    objects = render(release=RELEASE)
    triton = next(d for d in by_kind(objects, "Deployment") if d["metadata"]["name"].endswith("-triton"))
    spec = triton["spec"]["template"]["spec"]
    # The GPU pool's taint and labels.
    taint_key, taint_value, taint_effect = re.search(
        r"name: 'gpu'.*?nodeTaints: \[ '([^=]+)=([^:]+):(\w+)' \]", BICEP, re.S
    ).groups()
    assert {"key": taint_key, "operator": "Exists", "effect": taint_effect} in spec["tolerations"]
    gpu_labels = re.search(r"name: 'gpu'.*?nodeLabels: \{ '([^']+)': '([^']+)' \}", BICEP, re.S).groups()
    assert spec["nodeSelector"] == {gpu_labels[0]: gpu_labels[1]}
    cpu_labels = re.search(r"name: 'cpu'.*?nodeLabels: \{ '([^']+)': '([^']+)' \}", BICEP, re.S).groups()
    gateway = next(d for d in by_kind(objects, "Deployment") if d["metadata"]["name"].endswith("-gateway"))
    assert gateway["spec"]["template"]["spec"]["nodeSelector"] == {cpu_labels[0]: cpu_labels[1]}
    # The federated credentials name the chart's service accounts in the deploy namespace.
    assert f"param appNamespace string = '{NAMESPACE}'" in BICEP
    assert f"param helmRelease string = '{RELEASE}'" in BICEP
    accounts = {a["metadata"]["name"] for a in by_kind(objects, "ServiceAccount")}
    for variable, component in (
        ("tritonServiceAccount", "triton"),
        ("engineBuilderServiceAccount", "engine-builder"),
    ):
        assert f"{RELEASE}-{component}" in accounts
        assert f"var {variable} = '${{chartFullname}}-{component}'" in BICEP


def test_deploy_dry_run_prints_infrastructure_then_helm():
    result = subprocess.run(
        ["bash", str(INFRA / "deploy.sh"), "dev", "--dry-run", "--image-tag", "t1",
         "--models-file", "charts/prodsegmenter/ci/cpu-only-values.yaml", "--api-keys", "infra/checkov.yaml"],
        capture_output=True, text=True, check=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    lines = result.stdout.splitlines()
    index = {
        key: next(i for i, line in enumerate(lines) if line.startswith(key))
        for key in (
            "az deployment group create",
            "az acr build",
            "helm upgrade --install kube-prometheus-stack",
            f"kubectl -n {NAMESPACE} create secret generic {RELEASE}-api-keys",
            f"helm upgrade --install {RELEASE} charts/prodsegmenter",
            "helm upgrade --install prometheus-adapter",
        )
    }
    assert list(index.values()) == sorted(index.values()), "steps out of order"
    chart_line = lines[index[f"helm upgrade --install {RELEASE} charts/prodsegmenter"]]
    for expected in (
        "--values infra/helm/values-dev.yaml",
        "azure.workload.identity"
        if False
        else "azure.workloadIdentity.tritonClientId=<output:tritonIdentityClientId>",
        "gateway.image.tag=t1",
        "modelStore.source.blob.accountUrl=<output:modelStoreBlobEndpoint>",
        "--values charts/prodsegmenter/ci/cpu-only-values.yaml",
        f"--namespace {NAMESPACE}",
        "--atomic",
    ):
        assert expected in chart_line, expected
    assert (
        "--parameters @infra/aks/environments/dev.parameters.json"
        in lines[index["az deployment group create"]]
    )
    # The key store goes into the Secret the chart mounts, from the file (never into Helm values).
    secret = lines[index[f"kubectl -n {NAMESPACE} create secret generic {RELEASE}-api-keys"]]
    assert "--from-file=api-keys.json=infra/checkov.yaml" in secret and "kubectl apply -f -" in secret
    adapter = lines[index["helm upgrade --install prometheus-adapter"]]
    chart_values = yaml.safe_load((ROOT / "charts" / "prodsegmenter" / "values.yaml").read_text())
    assert f"rules.existing={chart_values['monitoring']['prometheusAdapter']['configMapName']}" in adapter


def test_deploy_without_api_keys_checks_the_secret_exists():
    result = subprocess.run(
        ["bash", str(INFRA / "deploy.sh"), "dev", "--dry-run"], capture_output=True, text=True, check=True
    )
    assert f"kubectl -n {NAMESPACE} get secret {RELEASE}-api-keys" in result.stdout
    assert "create secret" not in result.stdout


def test_deploy_refuses_an_unknown_environment():
    result = subprocess.run(
        ["bash", str(INFRA / "deploy.sh"), "staging", "--dry-run"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "no infra/aks/environments/staging.parameters.json" in result.stderr


def test_rollout_prints_publish_upgrade_and_rollback():
    result = subprocess.run(
        ["make", "-s", "rollout", "MODEL=crack_segmenter", "VERSION=5", "ENV=prod"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    text = result.stdout
    steps = [
        "az storage blob upload-batch",
        "--source model_repository/crack_segmenter",
        "python3 infra/model_values.py --model crack_segmenter --engine-version 5",
        "prodseg.io/model=crack_segmenter,prodseg.io/model-version=5",
        "python3 infra/model_values.py --model crack_segmenter --version 5",
        "--reuse-values -f crack_segmenter-v5.json",
        f"rollout status deployment/{RELEASE}-triton",
        "-L model.prodseg.io/crack_segmenter",
        "/v2/models/crack_segmenter/versions/5/ready",
        f"helm rollback {RELEASE}",
        f"kubectl -n {NAMESPACE} rollout undo deployment/{RELEASE}-triton",
    ]
    positions = [text.index(step) for step in steps]
    assert positions == sorted(positions)
    assert "rg-prodseg-prod" in text
    assert "--set models" not in text  # Helm would replace the whole list
    for args in (["VERSION=5"], ["MODEL=crack_segmenter"]):
        bad = subprocess.run(["make", "-s", "rollout", *args], cwd=ROOT, capture_output=True, text=True)
        assert bad.returncode != 0 and "usage: make rollout MODEL=NAME VERSION=N" in bad.stderr
    bad = subprocess.run(["bash", str(INFRA / "rollout.sh"), "5"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--model NAME is required" in bad.stderr


def test_release_and_names_agree_between_scripts_and_chart():
    defaults = (INFRA / "defaults.sh").read_text()
    assert f'RELEASE="${{PRODSEG_RELEASE:-{RELEASE}}}"' in defaults
    assert f'NAMESPACE="${{PRODSEG_NAMESPACE:-{NAMESPACE}}}"' in defaults
    values = yaml.safe_load((ROOT / "charts" / "prodsegmenter" / "values.yaml").read_text())
    assert f'ADAPTER_CONFIGMAP="{values["monitoring"]["prometheusAdapter"]["configMapName"]}"' in defaults
    assert f'MODEL_PREFIX="{values["modelStore"]["source"]["blob"]["prefix"]}"' in defaults
    assert 'API_KEYS_SECRET="$RELEASE-api-keys"' in defaults  # the chart's <fullname>-api-keys


@pytest.mark.k8s
def test_yaml_files_pass_yamllint(tools):
    files = [
        ROOT / "charts" / "prodsegmenter" / "values.yaml",
        ROOT / "charts" / "prodsegmenter" / "Chart.yaml",
        ROOT / "charts" / "prodsegmenter" / "files" / "prometheus-rules.yaml",
        *(ROOT / "charts" / "prodsegmenter" / "ci").glob("*.yaml"),
        *(INFRA / "helm").glob("*.yaml"),
        *(INFRA / "monitoring" / "tests").glob("*.yaml"),
        INFRA / "checkov.yaml",
        INFRA / "yamllint.yaml",
    ]
    config = INFRA / "yamllint.yaml"
    result = run([tools.path("yamllint"), "--strict", "-c", str(config), *map(str, files)], tools)
    assert result.returncode == 0, result.stdout


@pytest.mark.k8s
def test_make_tools_is_idempotent_and_fast(tools):
    started = time.monotonic()
    result = subprocess.run(["make", "-s", "tools"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 5
    assert result.stdout == "" and result.stderr == "", "a second run should install nothing"
    helm = run([tools.path("helm"), "version", "--short"], tools).stdout
    assert helm.startswith("v3.17.2")
    promtool = run([tools.path("promtool"), "--version"], tools)
    assert "2.42.0" in promtool.stdout + promtool.stderr
