"""The two steps every table and text ONNX graph (``tabular_graph``, ``text_graph``)
takes the same way: the trained model exported by ``torch.onnx.export(...,
dynamo=True)``, and that half joined to the hand-built preprocessing with
``onnx.compose.merge_models`` and checked."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import torch

import duet
from duet.errors import ModelError


def dynamo_proto(
    wrapper: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: tuple[Any, ...],
    opset: int,
    what: str,
) -> Any:
    """``wrapper`` as an ONNX ModelProto; ModelError naming ``what`` ("tabular", "text") when it cannot be."""
    try:
        # The exporter reports its steps on stdout; keep stdout clean for --json.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper,
                example,
                None,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    except Exception as e:  # torch.export fails in many ways on untraceable models
        raise ModelError(f"cannot export this {what} model to ONNX: {type(e).__name__}: {e}") from None
    if program is None:
        raise ModelError(f"torch.onnx.export returned no program for the {what} model")
    return program.model_proto


def merge_and_save(pre: Any, trained: Any, io_map: list[tuple[str, str]], what: str, path: Path) -> Any:
    """``pre`` then ``trained`` (already prefixed) as one checked graph ``duet_<what>``, saved to ``path``."""
    import onnx
    from onnx import compose, helper

    merged = compose.merge_models(pre, trained, io_map=io_map, producer_name="duet", producer_version=duet.__version__)
    merged.graph.name = f"duet_{what}"
    # merge_models (onnx 1.23) lists a domain shared by both models twice; keep one entry per domain.
    imports = {o.domain: o.version for o in merged.opset_import}
    del merged.opset_import[:]
    merged.opset_import.extend(helper.make_opsetid(domain, v) for domain, v in imports.items())
    try:
        onnx.checker.check_model(merged, full_check=True)
    except Exception as e:
        raise ModelError(f"the merged {what} ONNX graph is invalid: {type(e).__name__}: {e}") from None
    onnx.save(merged, str(path))
    return merged
