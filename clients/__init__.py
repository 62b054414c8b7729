"""ProdSegmenter's Python SDK: the model contract, label map, results, video I/O and Triton clients.

Serving-side code: it never imports torch or the training package.
"""
