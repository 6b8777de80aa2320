"""Evaluation: what a trained model gets right, on which images.

- ``inference``: a run's best weights in its architecture (``load_model``), and predictions
  of files or samples in the run's preprocessing (``predict_samples``, ``predict_file``, ``top_k``).
- ``metrics``: pure numpy metrics over labels and probabilities (``compute_metrics``).
- ``report``: the metrics written for people: report.json, report.md,
  confusion_matrix.png (``write_report``) and the terminal summary (``format_summary``).
- ``evaluate``: the ``duet evaluate`` stage: a run's held-out split or a labelled
  folder, through inference, metrics and report, into RUN/eval/.
"""
