"""The FastAPI gateway: video upload and chunked segmentation jobs in front of Triton."""
