"""Shared tests every task adapter must pass (as smp tests each architecture with one base tester).

Subclass :class:`AdapterTester` in ``test_<task>_adapter.py``, set ``task``, and give three
fixtures: ``contract`` (the task's model in a scratch repository, a small input keeps it fast),
``config`` (a :class:`training.config.PipelineConfig` for it, test-sized) and ``splits`` (its
:class:`training.tasks.DataSplits`, a few samples each). The tests below then check the adapter's
side of the interface documented in :mod:`training.tasks`; add the task's own tests beside them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from clients.contract import OUTPUTS, ModelContract, Task
from training.config import PipelineConfig
from training.export import (
    ServingModel,
    engine_predictor,
    export_onnx,
    output_dims,
    serving_model,
    torch_predictor,
)
from training.tasks import Check, DataSplits, TaskAdapter, adapter_for

_TYPES = {"TYPE_UINT8": np.uint8, "TYPE_FP32": np.float32, "TYPE_INT32": np.int32}


class AdapterTester:
    task: ClassVar[Task]

    @pytest.fixture
    def adapter(self) -> TaskAdapter:
        return adapter_for(self.task)

    def test_is_the_registered_adapter_of_its_task(self, adapter: TaskAdapter) -> None:
        assert adapter.task == self.task and adapter_for(self.task.value) is adapter

    def test_specs_are_frozen_dataclasses_with_defaults(self, adapter: TaskAdapter) -> None:
        for spec in (adapter.loss_spec, adapter.gate_spec):
            instance = spec()  # every field has a default
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(instance, dataclasses.fields(spec)[0].name, None)

    def test_splits_are_sized_sequences(self, splits: DataSplits) -> None:
        assert len(splits.train) > 0 and len(splits.test) > 0
        assert splits.train[0] is not None and isinstance(splits.report, dict)

    def test_batches_are_uint8_images_and_reproducible(
        self, adapter: TaskAdapter, config: PipelineConfig, contract: ModelContract, splits: DataSplits
    ) -> None:
        data = adapter.load_training_data(splits.train, contract)
        images, targets = adapter.sample_batch(data, config.augment, 3, np.random.default_rng(0))
        again, _ = adapter.sample_batch(data, config.augment, 3, np.random.default_rng(0))
        assert images.dtype == np.uint8 and images.ndim == 4 and images.shape[0] == 3 and images.shape[3] == 3
        assert np.array_equal(images, again)
        assert targets is not None

    def test_loss_is_finite_and_trains_the_network(
        self, adapter: TaskAdapter, config: PipelineConfig, contract: ModelContract, splits: DataSplits
    ) -> None:
        torch.manual_seed(0)
        net = ServingModel(adapter.build_model(config.model, contract))
        loss_fn = adapter.loss(config, torch.device("cpu"))
        data = adapter.load_training_data(splits.train, contract)
        images, targets = adapter.sample_batch(data, config.augment, 2, np.random.default_rng(1))
        loss = loss_fn(net(torch.from_numpy(images)), targets)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())

    def test_serving_outputs_follow_the_tasks_contract(
        self, adapter: TaskAdapter, config: PipelineConfig, contract: ModelContract
    ) -> None:
        serving = serving_model(adapter.build_model(config.model, contract), adapter, contract)
        images = np.random.default_rng(2).integers(0, 256, (2, contract.height, contract.width, 3), np.uint8)
        outputs = torch_predictor(serving, contract.output_names)(images)
        assert list(outputs) == [rule.name for rule in OUTPUTS[contract.task]]
        dims = output_dims(contract)
        for rule in OUTPUTS[contract.task]:
            from tritonclient.grpc import model_config_pb2

            dtype = _TYPES[model_config_pb2.DataType.Name(rule.data_type)]
            assert outputs[rule.name].dtype == dtype, rule.name
            assert list(outputs[rule.name].shape) == [2, *dims[rule.name]], rule.name

    def test_exported_graph_agrees_with_pytorch(
        self, adapter: TaskAdapter, config: PipelineConfig, contract: ModelContract, tmp_path: Path
    ) -> None:
        torch.manual_seed(3)
        model = adapter.build_model(config.model, contract).eval()
        export_onnx(model, tmp_path / "model.onnx", contract, adapter)
        images = np.random.default_rng(4).integers(0, 256, (2, contract.height, contract.width, 3), np.uint8)
        reference = torch_predictor(serving_model(model, adapter, contract), contract.output_names)(images)
        agreeing, total = adapter.agreement(reference, engine_predictor(tmp_path / "model.onnx")(images))
        assert total > 0 and agreeing / total >= 0.99
        assert adapter.agreement(reference, reference) == (total, total)

    def test_evaluation_reports_the_headline_metric(
        self,
        adapter: TaskAdapter,
        config: PipelineConfig,
        contract: ModelContract,
        splits: DataSplits,
        tmp_path: Path,
    ) -> None:
        model = adapter.build_model(config.model, contract)
        predict = torch_predictor(serving_model(model, adapter, contract), contract.output_names)
        result = adapter.evaluate(
            predict, splits.test, contract, "pytorch", tmp_path, worst_k=1, batch_size=2
        )
        assert result.images == len(splits.test) and result.engine == "pytorch"
        metrics = result.metrics()
        assert adapter.headline in metrics and all(isinstance(v, float | int) for v in metrics.values())
        assert result.metrics("test")[f"test/{adapter.headline}"] == metrics[adapter.headline]
        assert (tmp_path / "evaluation.json").is_file()

    def test_gate_checks_hold_the_floors(
        self,
        adapter: TaskAdapter,
        config: PipelineConfig,
        contract: ModelContract,
        splits: DataSplits,
        tmp_path: Path,
    ) -> None:
        model = adapter.build_model(config.model, contract)
        predict = torch_predictor(serving_model(model, adapter, contract), contract.output_names)
        result = adapter.evaluate(predict, splits.test, contract, "pytorch", batch_size=2)
        checks = adapter.gate_checks(result, adapter.gate_spec())
        assert checks and all(isinstance(c, Check) and c.ok for c in checks)  # default floors are zero
        strict = self.impossible_floors(adapter)
        assert not all(c.ok for c in adapter.gate_checks(result, strict))

    def impossible_floors(self, adapter: TaskAdapter):
        """Floors no model reaches; override when the headline floor has another name."""
        return adapter.gate_spec(**{f"min_{adapter.headline}": 1.01})
