"""Serving: an exported model behind HTTP (simple JSON, KServe V2, TF Serving REST), with
dynamic batching, deadlines, limits, auth, Prometheus metrics and a live drift watch.

Imports no torch: ``duet[serve]`` runs an exported model with ONNX Runtime alone (the
``torch`` runtime imports it only when chosen).

- ``settings``: ``ServeConfig`` and ``Limits``, validated once at the edge; the API key.
- ``app``: the FastAPI app and the uvicorn server around one service (``serve``), and
  following a registry's champion (``follow_registry``).
- ``service``: ``ModelService``, what every protocol calls: checks, decode, infer.
- ``protocols/``: one router per HTTP dialect (``simple``, ``kserve_v2``, ``tfserving``).
- ``runtimes``: uint8 pixels -> logits and probabilities (ONNX Runtime or torch).
- ``batcher``: the dynamic batcher: concurrent requests share one runtime call.
- ``fairpool``: decode threads shared round robin between requests.
- ``images``: encoded bytes -> the model's input, exactly the evaluation path.
- ``drift_watch``: a window of recent requests against the run's reference profile.
- ``metrics``: the Prometheus metrics; ``errors``: client errors as JSON.
- ``auth``, ``limits``, ``encoding``, ``deadlines``: ASGI middleware and the connection
  guard (API key, body limit, Content-Encoding, read and drain deadlines).
"""
