"""An A/B report from a real run: two versions of the shelf model on the embedded stack, split 50/50 by
the gateway, 20 clients sending generated shelves, and feedback verdicts on some answers.

    .venv/bin/python -m benchmarks.ab_report     # -> benchmarks/results/ab_report.json

Version 2 is a copy of version 1's weights (this machine trains no second shelf model for it), so the
report shows the routing, the per-version figures and the tests with no real difference to find.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import httpx

from clients.atomic import write_text
from clients.contract import default_repository
from datagen.shelves import render_scene
from prodseg.stack import GatewayProcess, serving_env
from prodseg.triton_server import TritonServer

MODEL = "shelf_segmenter"
RESULT = Path(__file__).parent / "results" / "ab_report.json"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "repository"
        repository.mkdir()
        shutil.copy2(default_repository() / "onnx_runner.py", repository)
        shutil.copytree(default_repository() / MODEL, repository / MODEL, symlinks=True)
        shutil.copytree(repository / MODEL / "1", repository / MODEL / "2", symlinks=True)
        with TritonServer(repository=repository, models=(MODEL,)) as triton:
            gateway = GatewayProcess(
                triton.grpc_url, data_dir=Path(tmp) / "data", env=serving_env(triton)
            ).start()
            try:
                command = [sys.executable, "-m", "prodseg.cli", "ab", "start", "--model", MODEL, "--split",
                           "1=50,2=50", "--gateway", gateway.url, "--triton-http", triton.http_url,
                           "--repository", str(repository)]  # fmt: skip
                subprocess.run(command, check=True, capture_output=True)
                with httpx.Client(base_url=gateway.url, timeout=60) as client:
                    for i in range(80):
                        scene = render_scene(500 + i, 192, 320)
                        png = cv2.imencode(".png", cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))[1].tobytes()
                        headers = {"X-Client-Id": f"store-{i % 20}"}
                        answer = client.post(f"/v1/models/{MODEL}/images", files={"file": ("s.png", png)},
                                             params={"format": "json"}, headers=headers).json()  # fmt: skip
                        if i % 2 == 0:  # a reviewer marks every other answer
                            verdict = "correct" if i % 6 else "wrong"
                            kept = answer["results"][0]["prediction_id"]
                            form = {"prediction_id": kept, "verdict": verdict}
                            client.post(f"/v1/models/{MODEL}/feedback", headers=headers, data=form)
                    report = client.get(f"/v1/models/{MODEL}/ab").json()
            finally:
                gateway.stop()
    write_text(
        RESULT, json.dumps({"what": __doc__.strip().splitlines()[0], "report": report}, indent=2) + "\n"
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
