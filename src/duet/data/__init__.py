"""Data: scan, split, decode, cache and load images for training and serving.

The TensorFlow hand-off (``tf_dataset``, ``from_tf_dataset``) is public API:
``duet.tf_dataset`` / ``duet.from_tf_dataset`` (implemented in ``duet.api.tf_data``).
``import duet.data`` never imports TensorFlow.
"""
