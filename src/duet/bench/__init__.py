"""Measurements behind docs/benchmarks.md: duet beside the peers, same files, same run.

- ``data``: ``duet bench data``: input-pipeline images/s beside torchvision's ImageFolder;
  ``tf_peers``: its TensorFlow rows (Keras generators, tf.data, duet's tf backend).
- ``train``: ``duet bench train``: end-to-end training images/s beside the model's own
  limit, in fp32 and bf16.
- ``serve``: ``duet bench serve``: serving latency and throughput beside a naive app,
  the bare runtime (batch 1) and its ceiling (best batch).
- ``monitor``: ``duet bench monitor``: the drift monitor and the accuracy estimate on
  shifted images, against true labels; ``shifts``: those image shifts.
- ``sample_data``: a reproducible folder of photo-sized JPEGs from real photographs.
"""
