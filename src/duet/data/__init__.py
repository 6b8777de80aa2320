"""Data: files on disk to uint8 batches on the device, the same for every backend.

A map of the package, in the order data flows:

- Scan and split: ``scan`` (a folder to a ``Manifest``: one row per file, with
  its label, hash, size and fate) and ``split`` (train/val/test by content
  hash: seeded, stratified, stable); ``digits`` writes the bundled demo folder.
- Decode: ``imageio.decode`` is the one decode (EXIF, modes, pixel limits);
  training, evaluation and serving all call it.
- Preprocessing spec: ``preprocess`` (``PreprocessSpec``: load size, crop,
  mean/std; the uint8 load square) with ``resample`` (torch's uint8 resize in
  NumPy, bit for bit, for serving without torch);
  ``augment`` does the float work on the device, batched.
- Contract: ``contract`` (``Sample``, ``Batch``, ``LoaderOptions``, the batch
  plan every backend follows, the ``Loader`` protocol).
- Backends: ``loaders.make_loader(backend, samples, spec, options)`` chooses
  one of ``torch_loader`` (DataLoader workers), ``cache`` (decode once into a
  memory-mapped store; ``cache_dir`` says where) and ``tfdata`` (tf.data).
  Backends import the contract, never each other or the factory.

The TensorFlow hand-off (``tf_dataset``, ``from_tf_dataset``) is public API:
``duet.tf_dataset`` / ``duet.from_tf_dataset`` (implemented in ``duet.api.tf_data``).
``import duet.data`` never imports TensorFlow.
"""
