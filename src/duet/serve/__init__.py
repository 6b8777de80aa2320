"""Serving: an exported model behind HTTP (simple JSON, KServe V2, TF Serving REST), with
dynamic batching, deadlines, limits, auth, Prometheus metrics and a live drift watch.

Imports no torch: ``duet[serve]`` runs an exported model with ONNX Runtime alone.
"""
