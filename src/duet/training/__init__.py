"""Training: a config and a data folder in, a run folder out.

Read in this order:

- ``config``: ``TrainConfig``, every setting with its default, validated once.
- ``loop``: ``train(config)`` and ``resume(run_dir)``, the front door; the run
  folder's life (created after the cheap checks, removed if the run fails before
  its first checkpoint).
- ``trainer``: ``Trainer.fit``, the epochs: steps, checkpoints, validation, the
  test split once.
- ``faults``: non-finite losses and rollback, out-of-memory micro-batching,
  SIGINT/SIGTERM, files that stop loading; ``FaultPlan`` for tests.
- ``prepare`` (data, model, seeds, loaders), ``step`` (one optimisation step),
  ``validation``, ``records`` (run.json, metrics.jsonl), ``checkpoint``,
  ``state`` (``LoopState``, ``TrainResult``).
- ``models``, ``recipe`` (fine-tuning), ``schedule``, ``precision``,
  ``distributed`` (torchrun), ``lr_find``.

Nothing here imports from evaluation, monitoring or serving: the drift profile
of a finished run is written by the caller (``duet.monitor.profile.ensure_profile``).
"""
