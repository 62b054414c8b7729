"""Image classification on the platform: data, network, metrics and evaluation.

The parts the classification task adapter (:mod:`training.tasks.classification`) plugs into the one
training pipeline (``prodseg pipeline --config training/configs/returns_classifier.yaml``):

- :mod:`.data`: procedural sources (``datagen.products``, ``datagen.engagement``) and loaders for
  the public layouts (ImageFolder ``<split>/<class>/*.jpg``, a CSV of ``image,label``), each bad file
  or row reported with its reason; in-memory arrays and augmented batches for training;
- :mod:`.model`: a timm backbone with random init, and the softmax serving head;
- :mod:`.metrics`: accuracy, per-class precision/recall/F1, macro F1, confusion matrix, ROC and PR
  curves with AUC, the decision threshold chosen on validation, and their PNG plots;
- :mod:`.evaluate`: scoring a predictor on a split as serving sees it, and the gate's floors;
- :mod:`.report`: a run's held-out figures and bare-engine latency into
  ``benchmarks/results/classifiers_training.json``.
"""
