"""ProdSegmenter's command line and the embedded stack (a real Triton server plus the gateway)."""
