"""Export: a trained run -> ONNX (+ parity gate) + safetensors + model.json + model card.

- ``duet.export.exporter.export_run``: the stage function (imports torch).
- ``duet.artifacts.model_package``: the model folder contract, read and verified by
  ``duet serve`` without torch.
- ``duet.export.onnx_graph``: the uint8-in, normalise-inside graph.
- ``duet.export.parity``: the gate that fails an export that disagrees with PyTorch.

Nothing is imported here, so ``import duet.artifacts.model_package`` stays light.
"""
