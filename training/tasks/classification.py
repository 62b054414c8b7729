"""The classification task adapter: timm backbones, softmax in the graph, accuracy / macro F1 / ROC AUC.

The parts live in :mod:`training.classification` (data, model, metrics, evaluation); this module
maps them onto :class:`training.tasks.TaskAdapter`, so ``prodseg pipeline --config
training/configs/returns_classifier.yaml`` runs them through the one pipeline. Config meaning:

- ``model``: ``arch: timm`` and ``encoder``: any timm classification model (random init, or
  ``encoder_weights``: a local state dict), ``options`` passed to ``timm.create_model`` except
  ``coord_channels`` and ``aux_outputs`` (:mod:`training.classification.model`);
- ``data``: ``kind: procedural`` with ``generator: products | engagement`` (``datagen``), or
  ``kind: folder`` with ``root``: an ImageFolder (``<split>/<class>/`` or ``<class>/``) or a CSV
  file of ``image,label`` (images relative to the CSV's folder);
- ``augment``: ``crop`` is the smallest random crop resized back to the input (at or above the input
  size: off), ``hflip``, ``vflip``, ``transpose`` (square inputs), and the shared photometric jitter;
- ``loss``: ``label_smoothing``, and ``aux_weight``: the weight of a mean-squared error on the
  auxiliary targets procedural data knows (the engagement generator's five property scores, 0..1),
  predicted by a training-only head (``model.options.aux_outputs`` = their number); the exported
  graph has the class probabilities only. ``gate``: ``min_accuracy``, ``min_macro_f1``, ``min_roc_auc``
  (binary models), ``min_class_f1`` per class name.

Binary models choose their decision threshold on the validation split: the test split this adapter
builds carries its validation split, and :meth:`evaluate` uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clients.contract import ModelContract, Task
from training.classification import data as classification_data
from training.classification.evaluate import ClassificationEvaluation, Floors, evaluate, gate_checks
from training.classification.model import SoftmaxHead, build_backbone
from training.tasks import Check, DataSplits, Outputs, Predictor, TaskAdapter, register

if TYPE_CHECKING:
    import torch

    from training.config import AugmentSpec, ModelSpec, PipelineConfig


@dataclass(frozen=True)
class ClassificationLoss:
    """The ``loss:`` section: cross-entropy with label smoothing (0 for none), plus ``aux_weight``
    times the mean-squared error of the auxiliary head on the data's auxiliary targets (0: none)."""

    label_smoothing: float = 0.05
    aux_weight: float = 0.0


@dataclass(frozen=True, eq=False)
class HeldOut(Sequence[classification_data.Sample]):
    """The test split, carrying the validation split a binary model's threshold is chosen on."""

    items: Sequence[classification_data.Sample]
    validation: Sequence[classification_data.Sample]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> classification_data.Sample:  # type: ignore[override]
        return self.items[index]


class ClassificationAdapter(TaskAdapter):
    task = Task.CLASSIFICATION
    headline = "accuracy"
    loss_spec = ClassificationLoss
    gate_spec = Floors  # min_accuracy, min_macro_f1, min_roc_auc, min_class_f1

    def check_config(self, config: PipelineConfig) -> None:
        from training.compat import patch_torchvision_ops

        if config.model.arch != "timm":
            raise config.error(
                "model.arch", f"classification models are 'timm' backbones, got {config.model.arch!r}"
            )
        patch_torchvision_ops()
        import timm

        if not timm.is_model(config.model.encoder):
            raise config.error("model.encoder", f"{config.model.encoder!r} is not a timm model")
        generator = getattr(config.data, "generator", None)
        if config.data.kind == "procedural" and generator not in ("products", "engagement"):
            raise config.error("data.generator", f"expected products or engagement, got {generator!r}")
        self._check_aux(config)

    @staticmethod
    def _check_aux(config: PipelineConfig) -> None:
        """``loss.aux_weight`` needs data with auxiliary targets and a head of their number."""
        weight = config.loss.aux_weight
        aux_outputs = int(config.model.options.get("aux_outputs", 0))
        if weight < 0:
            raise config.error("loss.aux_weight", f"must be >= 0, got {weight}")
        if weight == 0:
            if aux_outputs:
                raise config.error("model.options.aux_outputs", "an auxiliary head needs loss.aux_weight > 0")
            return
        names = (
            classification_data.generator_aux_names(config.data.generator)
            if config.data.kind == "procedural"
            else ()
        )
        if not names:
            raise config.error(
                "loss.aux_weight", "this data has no auxiliary targets (only the engagement generator has)"
            )
        if aux_outputs != len(names):
            raise config.error(
                "model.options.aux_outputs",
                f"must be {len(names)} (the auxiliary targets: {', '.join(names)}), got {aux_outputs}",
            )

    def check_contract(self, config: PipelineConfig, contract: ModelContract) -> None:
        names = contract.labels.names
        for name in getattr(config.gate, "min_class_f1", {}) or {}:
            if name not in names:
                raise config.error(
                    "gate.min_class_f1", f"{name!r} is not a class of {contract.model_name} ({names})"
                )
        if config.data.kind == "procedural":
            generated = list(classification_data.generator_classes(config.data.generator))
            if generated != names:
                raise config.error(
                    "data.generator",
                    f"{config.data.generator} labels {generated}, {contract.model_name} has {names}",
                )

    def build_splits(
        self, config: PipelineConfig, contract: ModelContract, work_dir: Path, progress: Any = None
    ) -> DataSplits:
        splits, report = classification_data.make_splits(config.data, contract.labels.names, contract.height)
        return DataSplits(splits["train"], splits["val"], HeldOut(splits["test"], splits["val"]), report)

    def build_model(self, spec: ModelSpec, contract: ModelContract) -> torch.nn.Module:
        import torch

        model = build_backbone(spec.encoder, contract.num_classes, spec.options)
        if spec.encoder_weights is not None:
            model.load_state_dict(torch.load(spec.encoder_weights, map_location="cpu", weights_only=True))
        return model

    def load_training_data(
        self, dataset: Sequence[Any], contract: ModelContract, progress: Any = None, description: str = "load"
    ) -> Sized:
        return classification_data.load_arrays(dataset, contract.height, contract.width)

    def sample_batch(
        self, data: Any, augment: AugmentSpec, batch_size: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, Any]:
        return classification_data.sample_batch(data, augment, batch_size, rng)

    def loss(self, config: PipelineConfig, device: torch.device) -> Callable[[Any, Any], torch.Tensor]:
        import torch

        cross_entropy = torch.nn.CrossEntropyLoss(label_smoothing=config.loss.label_smoothing)
        aux_weight = config.loss.aux_weight

        def loss(outputs: Any, targets: classification_data.Targets) -> torch.Tensor:
            logits, aux = outputs if isinstance(outputs, tuple) else (outputs, None)
            total = cross_entropy(logits, torch.as_tensor(targets.labels, device=device))
            if not aux_weight:
                return total
            if aux is None or targets.aux is None:
                raise ValueError("loss.aux_weight > 0 needs the auxiliary head's output and targets")
            aux_targets = torch.as_tensor(targets.aux, device=device)
            return total + aux_weight * torch.nn.functional.mse_loss(aux, aux_targets)

        return loss

    def serving_head(self, contract: ModelContract) -> torch.nn.Module:
        return SoftmaxHead()

    def agreement(self, reference: Outputs, candidate: Outputs) -> tuple[int, int]:
        """Images whose top class is the same."""
        expected, got = reference["probabilities"].argmax(1), candidate["probabilities"].argmax(1)
        return int((expected == got).sum()), len(expected)

    def evaluate(
        self,
        predict: Predictor,
        dataset: Sequence[Any],
        contract: ModelContract,
        engine: str,
        out_dir: Path | None = None,
        worst_k: int = 6,
        batch_size: int = 4,
    ) -> ClassificationEvaluation:
        return evaluate(
            predict,
            dataset,
            contract.labels.names,
            contract.height,
            contract.width,
            engine,
            validation=getattr(dataset, "validation", None),
            out_dir=out_dir,
            batch_size=max(batch_size, 32),  # 128 px images: larger batches cost nothing extra
        )

    def gate_checks(self, evaluation: ClassificationEvaluation, floors: Floors) -> list[Check]:
        return [Check(ok, text) for ok, text in gate_checks(evaluation, floors)]

    def card(self, evaluation: dict[str, Any]) -> dict[str, Any]:
        binary = evaluation.get("binary")
        if not binary:
            return {}
        return {
            "decision_threshold": {
                "class": evaluation["classes"][1],
                "threshold": binary["threshold"],
                "chosen_on": binary.get("threshold_chosen_on", "validation"),
            }
        }


register(ClassificationAdapter())
