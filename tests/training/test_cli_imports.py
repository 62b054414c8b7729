"""The training commands' modules stay light and do not import the CLI that registers them."""

from __future__ import annotations

import subprocess
import sys


def test_training_clis_do_not_import_prodseg_cli_or_torch() -> None:
    probe = (
        "import sys, training.pipeline_cli, training.data_cli; "
        "heavy = ('prodseg.cli', 'torch', 'segmentation_models_pytorch'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"  # no cycle with prodseg/cli.py, and --help stays instant
