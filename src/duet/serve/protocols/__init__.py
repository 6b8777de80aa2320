"""The three HTTP dialects of ``duet serve``, one router each, over one ModelService:

- ``simple``: ``POST /v1/predict`` (multipart files or a raw image body) -> top-k JSON;
- ``kserve_v2``: the Open Inference Protocol (KServe V2 / Triton), with the
  binary tensor data and classification extensions;
- ``tfserving``: TensorFlow Serving's REST API (status, metadata, ``:predict``).
"""
