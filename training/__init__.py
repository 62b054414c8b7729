"""Training, export and publishing of the segmentation models (needs the ``training`` extra)."""
