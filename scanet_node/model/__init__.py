"""The model stage: SCANet, its checkpoints and cards, inference, training and evaluation.

- :mod:`~scanet_node.model.network`: SCANet and the slice-averaged ResNet34 baseline (plain torch).
- :mod:`~scanet_node.model.checkpoint`: one-file checkpoints with their model card; refusals.
- :mod:`~scanet_node.model.predictor`: ``Predictor(checkpoint).predict(model_input)``.
- :mod:`~scanet_node.model.train`, :mod:`~scanet_node.model.experiment`: cross-validated
  training, the final model, held-out evaluation, Table-1 reports and plots.
- :mod:`~scanet_node.model.metrics`, :mod:`~scanet_node.model.features`: the metrics and the
  HU-feature logistic-regression baseline.

Never touches DICOM: it takes the ``imaging`` stage's model input and returns plain data.
"""
