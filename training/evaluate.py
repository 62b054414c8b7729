"""The quality gate: may a candidate be published?

Scoring is the task's (:meth:`training.tasks.TaskAdapter.evaluate`); the gate is one for every task:
the task's own floors (:meth:`TaskAdapter.gate_checks`), agreement of ONNX Runtime and of the served
engine with PyTorch, and no regression on the task's headline metric against the version currently
in production, re-evaluated on the same test split (numbers on a card were measured on other data
and do not compare).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from training.config import GateSpec
from training.export import ParityResult
from training.tasks import Check, Evaluation, TaskAdapter


@dataclass(frozen=True)
class Baseline:
    """The version a candidate must not fall behind, scored on the candidate's test split."""

    version: int
    alias: str | None  # the alias it was found under; None: the latest published version
    evaluation: Evaluation


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reasons: list[str]  # one line per failed check; empty when passed
    checks: list[str]  # one line per check made, passed or not

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gate(
    adapter: TaskAdapter,
    candidate: Evaluation,
    parity: ParityResult | None,
    spec: GateSpec,
    baseline: Baseline | None,
) -> GateResult:
    """Every check of ``spec``; the model passes when none fails."""
    checks = list(adapter.gate_checks(candidate, spec.floors))
    if parity is None:
        checks.append(Check(False, "parity was not measured (export the model first)"))
    else:
        checks.append(
            Check(
                parity.onnxruntime >= spec.min_onnxruntime_agreement,
                f"ONNX Runtime agreement {parity.onnxruntime:.6f} >= {spec.min_onnxruntime_agreement}",
            )
        )
        checks.append(
            Check(
                parity.served >= spec.min_served_agreement,
                f"served engine ({parity.served_engine}, {parity.served_precision}) agreement "
                f"{parity.served:.6f} >= {spec.min_served_agreement}",
            )
        )
    metric = adapter.headline
    if baseline is None:
        checks.append(Check(True, "no published version to compare with (first version)"))
    else:
        ours, theirs = candidate.metrics()[metric], baseline.evaluation.metrics()[metric]
        label = f"v{baseline.version}" + (f" ({baseline.alias})" if baseline.alias else " (latest)")
        checks.append(
            Check(
                ours >= theirs - spec.max_regression,
                f"{metric} {ours:.4f} >= {label} {metric} {theirs:.4f} - max_regression "
                f"{spec.max_regression} on the same {candidate.images} test images",
            )
        )
    return GateResult(
        passed=all(check.ok for check in checks),
        reasons=[f"failed: {check.text}" for check in checks if not check.ok],
        checks=[f"{'ok' if check.ok else 'FAILED'}: {check.text}" for check in checks],
    )
