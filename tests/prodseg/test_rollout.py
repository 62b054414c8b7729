"""``prodseg rollout``: the version sequence each replica goes through, the config edits, bad input,
and, on two real Triton servers, a rollout under continuous traffic that fails no request, a failed
rollout that leaves every replica on the old version, and ``prodseg deploy`` of the registry's
production version to two replicas, rolled over the same way."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clients.contract import ModelContract, read_model_config
from clients.repository import served_versions, versions
from clients.triton_admin import TritonAdmin
from clients.triton_client import InferenceError, TritonModelClient
from loadtest.rollout import scratch_repository
from prodseg.cli import app
from prodseg.processes import stop_process_groups
from prodseg.rollout import (
    Replica,
    RolloutError,
    model_configs,
    replicas_from,
    swap_steps,
    write_served_versions,
)
from prodseg.triton_server import TritonServer
from tests.conftest import copy_model
from tests.training import mlflow_helpers

MODEL = "shelf_segmenter"

# A scratch MLflow store (the registry of record) for the deploy test, never out/mlflow.db.
empty_mlflow_store = mlflow_helpers.empty_mlflow_store
mlflow_uri = mlflow_helpers.mlflow_uri


def said(result) -> str:
    """The command's output with Rich's line wrapping undone."""
    return " ".join(result.output.split())


# --- the sequence and the config edits -----------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "wanted", "steps"),
    [
        ([1], [2], [[1, 2], [2]]),  # load 2 beside 1, then serve 2 alone
        ([2], [1], [[1, 2], [1]]),  # a rollback is the same swap the other way round
        ([1, 2], [2], [[2]]),  # already loaded (e.g. after an A/B test): just switch
        ([2], [2], []),  # nothing to do
        ([3], [1, 2], [[1, 2, 3], [1, 2]]),  # back to an A/B pair
        ([], [1], [[1]]),
    ],
)
def test_every_swap_loads_the_new_versions_before_it_drops_the_old(current, wanted, steps):
    assert swap_steps(current, wanted) == steps
    for before, after in zip([current, *steps], steps, strict=False):
        # every wanted version is served before any current one is dropped
        if set(after) != set(wanted):
            assert set(before) <= set(after)


def small_repository(tmp_path: Path) -> Path:
    """The shelf model's configs with two version folders (a placeholder file each)."""
    model_dir = tmp_path / MODEL
    copy_model(MODEL, model_dir, keep_versions=())
    for version in (1, 2):
        (model_dir / str(version)).mkdir()
        (model_dir / str(version) / "model.onnx").write_bytes(b"placeholder")
    return model_dir


def test_the_policy_is_written_into_every_config_and_nothing_else_changes(tmp_path):
    model_dir = small_repository(tmp_path)
    before = {path: path.read_text() for path in model_configs(model_dir)}
    assert len(before) == 3  # config.pbtxt, configs/cpu.pbtxt, configs/gpu.pbtxt

    written = write_served_versions(model_dir, [2, 1])

    assert sorted(written) == sorted(before)
    for path, old_text in before.items():
        config = read_model_config(path)  # Triton's own schema parses the result
        assert served_versions(config, versions(model_dir)) == [1, 2]
        changed = [
            (a, b)
            for a, b in zip(old_text.splitlines(), path.read_text().splitlines(), strict=True)
            if a != b
        ]
        assert len(changed) == 1 and "version_policy" in changed[0][1]
    assert not list(model_dir.rglob("*.partial"))


def test_an_unpublished_version_changes_no_config(tmp_path):
    model_dir = small_repository(tmp_path)
    before = {path: path.read_text() for path in model_configs(model_dir)}
    with pytest.raises(RolloutError, match=r"no published version \[3\]"):
        write_served_versions(model_dir, [2, 3])
    assert {path: path.read_text() for path in model_configs(model_dir)} == before


def test_replicas_share_one_repository_or_have_one_each(tmp_path):
    shared = replicas_from("127.0.0.1:8000, http://127.0.0.1:9000", "/r", tmp_path)
    assert shared == [Replica("127.0.0.1:8000", Path("/r")), Replica("127.0.0.1:9000", Path("/r"))]
    own = replicas_from("a:1,b:2", "/ra,/rb", tmp_path)
    assert [r.repository for r in own] == [Path("/ra"), Path("/rb")]
    assert replicas_from("a:1", None, tmp_path) == [Replica("a:1", tmp_path)]
    with pytest.raises(RolloutError, match="3 repositories for 2 replicas"):
        replicas_from("a:1,b:2", "/1,/2,/3", tmp_path)


def test_the_cli_refuses_bad_input_with_exit_2_before_changing_anything(tmp_path):
    model_dir = small_repository(tmp_path)
    before = {path: path.read_text() for path in model_configs(model_dir)}
    runner = CliRunner()
    args = ["rollout", "--model", MODEL, "--triton", "127.0.0.1:1", "--repository", str(tmp_path)]
    unpublished = runner.invoke(app, [*args, "--version", "7"])
    assert unpublished.exit_code == 2
    assert "version 7 is not published" in said(unpublished)
    unreachable = runner.invoke(app, [*args, "--version", "2"])
    assert unreachable.exit_code == 2
    assert "127.0.0.1:1 is not reachable" in said(unreachable)
    unknown = runner.invoke(
        app, ["rollout", "--model", "nope", "--version", "2", "--repository", str(tmp_path)]
    )
    assert unknown.exit_code == 2 and "no model 'nope'" in said(unknown)
    assert {path: path.read_text() for path in model_configs(model_dir)} == before


# --- on real Triton servers ----------------------------------------------------------------------


def start_replicas(tmp_path: Path, repositories: list[Path]) -> list[TritonServer]:
    servers: list[TritonServer] = []
    try:
        for index, repository in enumerate(repositories):
            log = tmp_path / f"triton-{index}.log"
            servers.append(TritonServer(repository=repository, models=(MODEL,), log_path=log).start())
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


class FrameSender(threading.Thread):
    """Sends frames back to back through the round-robin client (no retries: every error counts)
    and records the version that answered each one."""

    def __init__(self, endpoints: str) -> None:
        super().__init__(daemon=True)
        self.endpoints = endpoints
        self.contract = ModelContract.load(MODEL)
        self.answered: list[str] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        asyncio.run(self._send())

    async def _send(self) -> None:
        frame = np.zeros((1, self.contract.height, self.contract.width, 3), np.uint8)
        async with TritonModelClient(self.endpoints, self.contract, retries=0) as client:
            while not self.stop.is_set():
                try:
                    _, version = await client.infer_versioned(frame)
                    self.answered.append(version)
                except InferenceError as error:
                    self.errors.append(str(error))


@pytest.mark.triton
@pytest.mark.slow
def test_a_rollout_under_traffic_fails_no_request_and_ends_on_the_new_version(tmp_path):
    repository = tmp_path / "repository"  # one repository shared by both replicas
    old, new = scratch_repository(repository, MODEL)
    servers = start_replicas(tmp_path, [repository, repository])
    sender = FrameSender(",".join(server.grpc_url for server in servers))
    triton = ",".join(server.http_url for server in servers)
    command = ["rollout", "--model", MODEL, "--version", str(new), "--triton", triton]
    try:
        sender.start()
        deadline = time.monotonic() + 60
        while len(sender.answered) < 10 and sender.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)  # traffic flows before the rollout
        answered_before = len(sender.answered)
        result = CliRunner().invoke(app, [*command, "--repository", str(repository)])
        answered_until_done = len(sender.answered)
        time.sleep(1.0)  # and keeps flowing after it
    finally:
        sender.stop.set()
        sender.join(timeout=30)
        stop_process_groups([server.process for server in servers], 10)

    assert result.exit_code == 0, result.output
    assert sender.errors == []
    assert answered_before >= 10 and answered_until_done > answered_before
    assert len(sender.answered) > answered_until_done
    assert set(sender.answered) <= {str(old), str(new)}
    assert sender.answered[-1] == str(new)
    report = json.loads(result.stdout)
    assert report["ok"] and report["serving"] == {s.http_url: [new] for s in servers}
    steps = [(entry["replica"], entry["versions"]) for entry in report["timeline"]]
    assert steps == [(s.http_url, v) for s in servers for v in ([old, new], [new])]  # one replica at a time
    assert f"roll back: prodseg rollout --model {MODEL} --version {old}" in said(result)
    for config in model_configs(repository / MODEL):
        assert served_versions(read_model_config(config), [old, new]) == [new]


@pytest.mark.triton
@pytest.mark.slow
def test_a_failed_rollout_puts_every_replica_back_on_the_old_version(tmp_path):
    repositories = [tmp_path / "repository-a", tmp_path / "repository-b"]  # one copy each, as pods
    for repository in repositories:
        old, new = scratch_repository(repository, MODEL)
    broken = repositories[1] / MODEL / str(new) / "model.onnx"
    broken.write_bytes(b"not an ONNX graph")  # the second replica's copy of the new version is broken
    servers = start_replicas(tmp_path, repositories)
    try:
        triton = ",".join(server.http_url for server in servers)
        result = CliRunner().invoke(
            app,
            ["rollout", "--model", MODEL, "--version", str(new), "--triton", triton]
            + ["--repository", ",".join(map(str, repositories))],
        )
        serving = [TritonAdmin(server.http_url).ready_versions(MODEL) for server in servers]
    finally:
        stop_process_groups([server.process for server in servers], 10)

    assert result.exit_code == 1, result.output
    assert "rollout failed" in said(result)
    assert f"{servers[1].http_url}: Triton at {servers[1].http_url} could not load {MODEL}" in said(result)
    # The first replica had finished (it served the new version alone); it is back on the old one too.
    assert serving == [[old], [old]]
    for repository in repositories:
        for config in model_configs(repository / MODEL):
            assert served_versions(read_model_config(config), [old, new]) == [old]


@pytest.mark.triton
@pytest.mark.slow
def test_a_deploy_to_two_replicas_rolls_them_over_one_at_a_time_and_fails_no_request(tmp_path, mlflow_uri):
    """The registry says production is the new version; `prodseg deploy --triton r1,r2` makes both
    replicas serve it, one at a time, while frames keep flowing."""
    pytest.importorskip("mlflow")  # the registry of record (training extra)
    from mlflow.tracking import MlflowClient

    from training import registry

    repository = tmp_path / "repository"  # shared by both replicas
    old, new = scratch_repository(repository, MODEL)
    registry.promote(repository, MODEL, old)  # registers the versions; production is the old one
    # Production moves in MLflow (its UI, or a promote on another machine): the fleet does not follow yet.
    MlflowClient(mlflow_uri, registry_uri=mlflow_uri).set_registered_model_alias(
        MODEL, "production", str(new)
    )
    servers = start_replicas(tmp_path, [repository, repository])
    sender = FrameSender(",".join(server.grpc_url for server in servers))
    triton = ",".join(server.http_url for server in servers)
    command = ["deploy", "--model", MODEL, "--alias", "production", "--repository", str(repository)]
    try:
        sender.start()
        deadline = time.monotonic() + 60
        while len(sender.answered) < 10 and sender.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)  # traffic flows before the deploy
        assert set(sender.answered) == {str(old)}
        answered_before = len(sender.answered)
        result = CliRunner().invoke(app, [*command, "--triton", triton])
        answered_until_done = len(sender.answered)
        time.sleep(1.0)  # and keeps flowing after it
        serving = [TritonAdmin(server.http_url).ready_versions(MODEL) for server in servers]
    finally:
        sender.stop.set()
        sender.join(timeout=30)
        stop_process_groups([server.process for server in servers], 10)

    assert result.exit_code == 0, result.output
    assert sender.errors == []
    assert answered_until_done > answered_before and len(sender.answered) > answered_until_done
    assert sender.answered[-1] == str(new)
    assert serving == [[new], [new]]
    report = json.loads(result.stdout)
    assert report["ok"] and report["serving"] == {s.http_url: [new] for s in servers}
    steps = [(entry["replica"], entry["versions"]) for entry in report["timeline"]]
    assert steps == [(s.http_url, v) for s in servers for v in ([old, new], [new])]  # one replica at a time
    assert f"production is version {new}" in said(result) and "rolled out replica by replica" in said(result)
    for config in model_configs(repository / MODEL):
        assert served_versions(read_model_config(config), [old, new]) == [new]
