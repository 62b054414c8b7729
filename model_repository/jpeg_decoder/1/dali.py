"""GPU jpeg_decoder (configs/gpu.pbtxt): nvJPEG through NVIDIA DALI's Triton backend.

The DALI backend serializes this pipeline itself when the model loads (its "autoserialization":
``default_model_filename: "dali.py"`` in configs/gpu.pbtxt; it runs the image's ``python3`` and
writes the serialized pipeline under /tmp), so no hand-built model.dali is kept anywhere. DALI is
in the NGC tritonserver image only: nothing in this repository imports this file, and the python
backend (config.pbtxt, the CPU decoder) loads 1/model.py and never looks at it.

Tensors, as in ../config.pbtxt:
    input  "jpeg":   UINT8 [batch, L], one JPEG per row, zero-padded (nvJPEG stops at the end marker)
    output "images": UINT8 [batch, H, W, 3] RGB, decoded on the GPU and left there for the model
"""

from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.triton import autoserialize

# The config's max_batch_size: the most frames one Triton batch hands the pipeline.
MAX_BATCH_SIZE = 128


@autoserialize
@pipeline_def(batch_size=MAX_BATCH_SIZE, num_threads=4, device_id=0)
def jpeg_decoder():
    # Triton feeds each input to the external_source of the same name: it must be "jpeg".
    jpeg = fn.external_source(device="cpu", name="jpeg", dtype=types.UINT8)
    # "mixed": parse on the CPU, decode on the GPU (nvJPEG). The backend matches pipeline outputs to
    # the config's outputs by position, not by name: this first (only) output is "images".
    return fn.decoders.image(jpeg, device="mixed", output_type=types.RGB)
