"""Object detection for the platform's ``detection`` task: a small anchor-free CenterNet-style detector
(``model``), its targets and loss (``loss``), datasets and loaders for YOLO txt and Pascal VOC
(``data``), COCO-style evaluation (``metrics``), export with decoding in the graph (``export``) and the
training run that publishes a version (``train``)."""
