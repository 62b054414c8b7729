"""Image classification on the platform: data, model, training, evaluation and export.

The pieces the classification task adapter (:mod:`training.tasks.classification`) and the standalone
entry point (``python -m training.classification.train``) share:

- :mod:`.data`: procedural sources (``datagen.products``, ``datagen.engagement``) and loaders for
  the public layouts (ImageFolder ``<split>/<class>/*.jpg``, a CSV of ``image,label``), each bad file
  or row reported with its reason; in-memory arrays and augmented batches for training;
- :mod:`.model`: a timm backbone with random init, and the serving graph (uint8 NHWC in,
  normalisation and softmax inside, ``probabilities`` out);
- :mod:`.metrics`: accuracy, per-class precision/recall/F1, macro F1, confusion matrix, ROC and PR
  curves with AUC, the decision threshold chosen on validation, and their PNG plots;
- :mod:`.export`: ONNX export with a dynamic batch, parity PyTorch vs ONNX Runtime vs OpenVINO, and
  bare-engine latency;
- :mod:`.train`: the training loop and the standalone run (train, evaluate, gate, export, publish).
"""
