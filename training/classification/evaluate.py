"""Score a classifier on a held-out split as serving sees it, and gate on the result.

A predictor is anything mapping uint8 ``[N, H, W, 3]`` to ``{"probabilities": [N, C]}``: the
PyTorch serving model or an exported graph on an engine. Images are resized to the model input as
clients resize them. Binary models choose their decision threshold on the validation split (best
F1 of the positive class) and are scored on the test split at that threshold; their ROC and PR
curves are plotted from the test split.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clients.atomic import write_text
from training.classification.data import Sample, to_model_input
from training.classification.metrics import (
    binary_report,
    choose_threshold,
    classification_report,
    plot_confusion,
    plot_pr,
    plot_roc,
)

Predictor = Callable[[np.ndarray], dict[str, np.ndarray]]
OUTPUT = "probabilities"


@dataclass(frozen=True)
class ClassificationEvaluation:
    """Held-out quality: what evaluation.json and the model card hold."""

    images: int
    engine: str
    class_names: tuple[str, ...]
    report: dict[str, Any]  # accuracy, macro_f1, per_class, confusion_matrix
    binary: dict[str, Any] | None = None  # roc_auc, average_precision, threshold, at_threshold
    plots: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.report["accuracy"]

    @property
    def macro_f1(self) -> float:
        return self.report["macro_f1"]

    @property
    def roc_auc(self) -> float | None:
        return self.binary["roc_auc"] if self.binary else None

    def metrics(self, prefix: str = "") -> dict[str, float]:
        lead = f"{prefix}/" if prefix else ""
        numbers = {f"{lead}accuracy": self.accuracy, f"{lead}macro_f1": self.macro_f1}
        numbers |= {f"{lead}f1/{name}": row["f1"] for name, row in self.report["per_class"].items()}
        if self.binary:
            numbers |= {
                f"{lead}roc_auc": self.binary["roc_auc"],
                f"{lead}average_precision": self.binary["average_precision"],
                f"{lead}threshold": self.binary["threshold"],
                f"{lead}accuracy_at_threshold": self.binary["at_threshold"]["accuracy"],
            }
        return numbers

    def to_dict(self) -> dict[str, Any]:
        """Headline numbers flat (as model cards list them: scores, then ``per_class_<metric>``
        mappings), then the details: per-class rows, confusion matrix, binary curves' summary."""
        per_class = self.report["per_class"]
        flat: dict[str, Any] = {"accuracy": self.accuracy, "macro_f1": self.macro_f1}
        if self.binary:
            flat |= {key: self.binary[key] for key in ("roc_auc", "average_precision", "threshold")} | {
                "accuracy_at_threshold": self.binary["at_threshold"]["accuracy"]
            }
        for metric in ("precision", "recall", "f1"):
            flat[f"per_class_{metric}"] = {name: row[metric] for name, row in per_class.items()}
        return {
            "images": self.images,
            "engine": self.engine,
            "classes": list(self.class_names),
            **flat,
            "per_class": per_class,
            "confusion_matrix": self.report["confusion_matrix"],
            "binary": self.binary,
            "plots": self.plots,
        }


def predict_probabilities(
    predict: Predictor, dataset: Sequence[Sample], height: int, width: int, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``[N, C]`` and labels ``[N]`` of a whole split, in batches."""
    probabilities, labels = [], []
    for start in range(0, len(dataset), batch_size):
        samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = np.stack([to_model_input(s.image, height, width) for s in samples])
        probabilities.append(np.asarray(predict(batch)[OUTPUT], np.float64))
        labels.extend(s.label for s in samples)
    return np.concatenate(probabilities), np.array(labels, np.int64)


def evaluate(
    predict: Predictor,
    test: Sequence[Sample],
    class_names: Sequence[str],
    height: int,
    width: int,
    engine: str,
    validation: Sequence[Sample] | None = None,
    out_dir: Path | None = None,
    batch_size: int = 32,
) -> ClassificationEvaluation:
    """Score ``test``; a binary model's threshold comes from ``validation`` (else from ``test`` itself,
    recorded as such: only for scoring the validation split during training).

    With ``out_dir``: ``evaluation.json``, ``confusion.png`` and, binary, ``roc.png`` and ``pr.png``.
    """
    class_names = tuple(class_names)
    probabilities, labels = predict_probabilities(predict, test, height, width, batch_size)
    if probabilities.shape[1] != len(class_names):
        raise ValueError(
            f"the model returns {probabilities.shape[1]} probabilities for {len(class_names)} classes"
        )
    report = classification_report(probabilities, labels, class_names)
    binary = None
    if len(class_names) == 2:
        if validation is not None and len(validation):
            val_probabilities, val_labels = predict_probabilities(
                predict, validation, height, width, batch_size
            )
            threshold, chosen_on = choose_threshold(val_probabilities[:, 1], val_labels), "validation"
        else:  # scoring the validation split itself (during training): choose on it, and say so
            threshold, chosen_on, val_labels = (
                choose_threshold(probabilities[:, 1], labels),
                "this split",
                labels,
            )
        binary = binary_report(probabilities, labels, class_names, threshold)
        binary |= {"threshold_chosen_on": chosen_on, "validation_images": int(len(val_labels))}
    plots: list[str] = []
    if out_dir is not None:
        out_dir = Path(out_dir)
        title = f"{engine}, {len(labels)} held-out images"
        plot_confusion(
            report["confusion_matrix"], class_names, out_dir / "confusion.png", f"confusion ({title})"
        )
        plots.append("confusion.png")
        if binary is not None:
            scores = probabilities[:, 1]
            plot_roc(scores, labels, out_dir / "roc.png", f"ROC of {class_names[1]} ({title})")
            plot_pr(
                scores, labels, binary["threshold"], out_dir / "pr.png", f"PR of {class_names[1]} ({title})"
            )
            plots += ["roc.png", "pr.png"]
    evaluation = ClassificationEvaluation(len(labels), engine, class_names, report, binary, plots)
    if out_dir is not None:
        write_text(Path(out_dir) / "evaluation.json", json.dumps(evaluation.to_dict(), indent=2) + "\n")
    return evaluation


# -------------------------------------------------------------------------------------------- gate


@dataclass(frozen=True)
class Floors:
    """The classification gate: absolute floors on held-out quality (0 disables one).

    ``min_roc_auc`` applies to binary models only; ``min_class_f1`` maps class names to floors.
    """

    min_accuracy: float = 0.0
    min_macro_f1: float = 0.0
    min_roc_auc: float = 0.0
    min_class_f1: dict[str, float] = field(default_factory=dict)


def gate_checks(evaluation: ClassificationEvaluation, floors: Floors) -> list[tuple[bool, str]]:
    """One ``(passed, text)`` per floor that is set."""
    checks: list[tuple[bool, str]] = []

    def floor(name: str, value: float | None, minimum: float) -> None:
        if minimum:
            ok = value is not None and value >= minimum
            checks.append((ok, f"{name} {value} >= {minimum}"))

    floor("accuracy", evaluation.accuracy, floors.min_accuracy)
    floor("macro F1", evaluation.macro_f1, floors.min_macro_f1)
    if floors.min_roc_auc:
        if evaluation.binary is None:
            checks.append((False, f"ROC AUC >= {floors.min_roc_auc}: the model is not binary"))
        else:
            floor("ROC AUC", evaluation.roc_auc, floors.min_roc_auc)
    for name, minimum in floors.min_class_f1.items():
        row = evaluation.report["per_class"].get(name)
        if row is None:
            checks.append((False, f"F1 of {name!r}: no such class ({', '.join(evaluation.class_names)})"))
        else:
            floor(f"F1 {name}", row["f1"], minimum)
    return checks
