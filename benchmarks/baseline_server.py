"""The seed-style baseline: FastAPI + PyTorch eager, one frame per JSON request, base64 in and out.

This is how a first prototype typically serves a segmentation model: PNG-in-base64 in a JSON body,
normalisation in Python, float logits back as base64. Same architecture and input size as the
default model (random weights: the point is speed and bytes, not masks).
``python -m benchmarks.baseline_server --port 9100``
"""

from __future__ import annotations

import argparse
import base64

import cv2
import numpy as np
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from training.compat import patch_torchvision_ops

patch_torchvision_ops()

import segmentation_models_pytorch as smp  # noqa: E402
import torch  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


class Frame(BaseModel):
    image: str  # base64 PNG


def create_app(threads: int) -> FastAPI:
    torch.set_num_threads(threads)
    model = smp.Unet(
        "tu-mobilenetv3_small_100", encoder_weights=None, classes=4, decoder_channels=(64, 32, 24, 16, 8)
    ).eval()
    app = FastAPI()

    @app.post("/predict")
    def predict(frame: Frame) -> dict:
        bgr = cv2.imdecode(np.frombuffer(base64.b64decode(frame.image), np.uint8), cv2.IMREAD_COLOR)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        tensor = torch.from_numpy(((rgb - MEAN) / STD).transpose(2, 0, 1)[None].copy())
        with torch.inference_mode():
            logits = model(tensor)[0].numpy()
        return {"shape": list(logits.shape), "logits": base64.b64encode(logits.tobytes()).decode()}

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    uvicorn.run(create_app(args.threads), host="127.0.0.1", port=args.port, log_level="warning")
