"""The contracts between stages, as files. Writers and readers of those files import their
layout from here, never from each other. No torch.

- ``run_dir``: the run folder training writes and every later stage reads (``RunPaths``,
  ``create_run_dir``, config.yaml and run.json, ``load_run`` -> ``RunInfo``).
- ``model_package``: the exported model folder and its ``model.json`` (``ModelPackage``,
  ``read_package``, file hashes and ``verify_files``), written by export, read by serve.
- ``registry``: numbered versions of runs and the champion pointer (``Registry``,
  ``ChampionWatcher``), written by ``duet registry``/``duet retrain``, followed by
  ``duet serve`` for hot swaps.
"""
