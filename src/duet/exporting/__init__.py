"""Export: a trained run -> ONNX (+ parity gate) + safetensors + model.json + model card.

- ``exporter``: ``export_run``, the stage function (imports torch).
- ``onnx_graph``: the uint8-in, normalise-inside graph with its metadata.
- ``parity``: the gate that fails an export that disagrees with PyTorch.
- ``quantize``: the int8 variant (static QDQ, calibrated on training images), behind its
  own accuracy gate.
- ``card``: MODEL_CARD.md, generated from model.json.

The folder's contract, ``model.json``, lives in ``duet.artifacts.model_package``, read and
verified by ``duet serve`` without torch. Nothing is imported here, so importing a
submodule stays light.
"""
