"""Procedural data with exact labels (torch-free): shelves, cracks, faces, products.

Shared by training (datasets) and serving-side tools (demo, load tests, benchmarks, tests), so it
imports only numpy, OpenCV and the SDK, never torch or the training package.
"""
