"""duet's ONNX -> TensorFlow converter (``duet.exporting.tf_graph``) computes what
ONNX Runtime computes, operator by operator.

Each test builds a small ONNX graph by hand (opset 20 and 17, seeded random
weights), runs it in onnxruntime and in ``OnnxInTf`` traced once by a
``tf.function`` with a dynamic batch, at batch 1 and 5, and asserts the largest
difference is at most TOL relative to the output's magnitude. Most graphs are
built twice: reading the graph input directly (an NCHW value) and after a
convolution (an activation the converter holds as NHWC), so both layouts of
every operator are checked. The last test converts a real duet export
(``test_resnet``) and compares its three outputs.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

if importlib.util.find_spec("torchvision") is not None:
    import torchvision  # noqa: F401  (before TensorFlow: see duet.system.tensorflow_import)
pytest.importorskip("tensorflow", reason="TensorFlow is not importable (pip install 'duet[tf]')", exc_type=ImportError)

import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from duet.data.preprocess import PreprocessSpec
from duet.exporting.onnx_graph import GRAPH_OUTPUTS, export_onnx
from duet.exporting.tf_graph import OnnxInTf, UnsupportedGraph
from duet.system.tensorflow_import import import_tensorflow
from duet.training import models

tf = import_tensorflow()

OPSETS = (20, 17)
BATCHES = (1, 5)
TOL = 1e-5  # max |ONNX Runtime - TensorFlow| / max(1, max |ONNX Runtime|)
C, H, W = 6, 10, 7  # H != W and odd sizes: a swapped axis or a ceil_mode overhang shows
LEADS = ("input", "conv")  # the operator reads the graph input (NCHW) or a convolution's output (NHWC)

Nodes = list[onnx.NodeProto]
Inits = dict[str, np.ndarray]


def _rand(seed: int, *shape: int, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    return np.asarray(np.random.default_rng(seed).uniform(low, high, shape), np.float32)


def _model(nodes: Nodes, inits: Inits, opset: int, *, dtype: int = TensorProto.FLOAT, shape: tuple = (C, H, W)) -> Any:
    """A graph ``x (N, *shape) -> y``, with ``inits`` as initialisers."""
    graph = helper.make_graph(
        nodes,
        "case",
        [helper.make_tensor_value_info("x", dtype, ["N", *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    return model


def _lead(lead: str) -> tuple[Nodes, Inits]:
    """``x -> h``: unchanged (NCHW) or through a 3x3 convolution (held NHWC)."""
    if lead == "input":
        return [helper.make_node("Identity", ["x"], ["h"])], {}
    return [helper.make_node("Conv", ["x", "lead_w", "lead_b"], ["h"], pads=[1, 1, 1, 1])], {
        "lead_w": _rand(1, C, C, 3, 3, low=-0.3, high=0.3),
        "lead_b": _rand(2, C),
    }


def _tf_fn(model: Any, dtype: Any, shape: tuple) -> Callable[[np.ndarray], dict[str, Any]]:
    """``OnnxInTf(model)`` traced once for any batch size. Without autograph: the
    converter's loop is plain Python over the nodes and needs none, and autograph's
    one-time conversion of tf_graph costs ~3.4 s (measured here), 2.5x per trace."""
    core = OnnxInTf(model)
    return tf.function(core.__call__, input_signature=[tf.TensorSpec([None, *shape], dtype)], autograph=False)


def _assert_matches(
    model: Any, *, batches: tuple = BATCHES, low: float = -2.0, high: float = 2.0, tol: float = TOL
) -> None:
    """Run ``model`` in ONNX Runtime and in TensorFlow (one trace, dynamic batch) and compare every output."""
    x_info = model.graph.input[0]
    uint8 = x_info.type.tensor_type.elem_type == TensorProto.UINT8
    shape = tuple(d.dim_value for d in x_info.type.tensor_type.shape.dim[1:])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    fn = _tf_fn(model, tf.uint8 if uint8 else tf.float32, shape)
    names = [o.name for o in model.graph.output]
    for batch in batches:
        rng = np.random.default_rng(100 + batch)
        if uint8:
            x = rng.integers(0, 256, (batch, *shape), dtype=np.uint8)
        else:
            x = rng.uniform(low, high, (batch, *shape)).astype(np.float32)
        want = dict(zip(names, session.run(names, {x_info.name: x})))
        got = {k: v.numpy() for k, v in fn(x).items()}
        for name in names:
            assert got[name].shape == want[name].shape, (name, batch, got[name].shape, want[name].shape)
            diff = float(np.abs(got[name].astype(np.float64) - want[name]).max())
            scale = max(1.0, float(np.abs(want[name]).max()))
            assert diff <= tol * scale, f"{name} at batch {batch}: max |diff| {diff:.3g} > {tol * scale:.3g}"


# ---- convolutions ------------------------------------------------------------------------------

CONVS = {
    # name: (weight shape, attributes)
    "group1_pads_strides_dilations": ((8, C, 3, 3), {"pads": [1, 2, 0, 1], "strides": [2, 1], "dilations": [1, 2]}),
    "depthwise": ((C, 1, 3, 3), {"group": C, "pads": [1, 1, 1, 1], "strides": [2, 2]}),
    "depthwise_multiplier2": ((2 * C, 1, 3, 3), {"group": C, "pads": [0, 1, 2, 1], "dilations": [2, 1]}),
    "grouped_3": ((9, C // 3, 3, 3), {"group": 3, "pads": [1, 1, 1, 1], "strides": [1, 2]}),
    # tf.nn.depthwise_conv2d takes strides or dilations, not both: the converter strides after
    "depthwise_strided_dilated": (
        (C, 1, 3, 3),
        {"group": C, "pads": [2, 1, 2, 2], "strides": [2, 2], "dilations": [2, 2]},
    ),
}


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", sorted(CONVS))
@pytest.mark.parametrize("lead", LEADS)
def test_conv_matches_onnx_runtime(case: str, bias: bool, opset: int, lead: str) -> None:
    w_shape, attrs = CONVS[case]
    nodes, inits = _lead(lead)
    inits["w"] = _rand(3, *w_shape)
    inputs = ["h", "w"]
    if bias:
        inits["b"] = _rand(4, w_shape[0])
        inputs.append("b")
    nodes.append(helper.make_node("Conv", inputs, ["y"], kernel_shape=list(w_shape[2:]), **attrs))
    _assert_matches(_model(nodes, inits, opset))


# ---- pooling -----------------------------------------------------------------------------------

MAXPOOLS = {
    "k3_s2_pads1": {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    "k3_s2_ceil": {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
    "k2_s2_asym_pads_ceil": {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 0, 0, 1], "ceil_mode": 1},
    "k3x2_s1x2_pads_ceil": {"kernel_shape": [3, 2], "strides": [1, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
}


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("case", sorted(MAXPOOLS))
@pytest.mark.parametrize("lead", LEADS)
def test_maxpool_matches_onnx_runtime(case: str, opset: int, lead: str) -> None:
    nodes, inits = _lead(lead)
    nodes.append(helper.make_node("MaxPool", ["h"], ["y"], **MAXPOOLS[case]))
    _assert_matches(_model(nodes, inits, opset))


@pytest.mark.parametrize("case", sorted(MAXPOOLS))
def test_maxpool_padding_never_wins_over_all_negative_inputs(case: str) -> None:
    """Every value is in [-5, -1]: a zero pad would show up as a 0 maximum at the borders."""
    model = _model([helper.make_node("MaxPool", ["x"], ["y"], **MAXPOOLS[case])], {}, 20)
    _assert_matches(model, low=-5.0, high=-1.0)
    x = np.random.default_rng(0).uniform(-5.0, -1.0, (2, C, H, W)).astype(np.float32)
    assert float(_tf_fn(model, tf.float32, (C, H, W))(x)["y"].numpy().max()) < -1.0 + 1e-6


AVGPOOLS = {
    "k3_s2_pads1": {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    "k3_s2_pads1_ceil": {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
    "k2_s2_ceil": {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
    "k3_s1_nopad": {"kernel_shape": [3, 3]},
}


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("case", sorted(AVGPOOLS))
@pytest.mark.parametrize("lead", LEADS)
def test_averagepool_matches_onnx_runtime(case: str, count_include_pad: int, opset: int, lead: str) -> None:
    nodes, inits = _lead(lead)
    nodes.append(helper.make_node("AveragePool", ["h"], ["y"], count_include_pad=count_include_pad, **AVGPOOLS[case]))
    _assert_matches(_model(nodes, inits, opset))


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("lead", LEADS)
def test_global_average_pool_matches_onnx_runtime(opset: int, lead: str) -> None:
    nodes, inits = _lead(lead)
    nodes.append(helper.make_node("GlobalAveragePool", ["h"], ["y"]))
    _assert_matches(_model(nodes, inits, opset))


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("axes", [[2, 3], [1], [0, -2]], ids=["hw", "c", "n_h"])
@pytest.mark.parametrize("lead", LEADS)
def test_reduce_mean_matches_onnx_runtime(axes: list[int], keepdims: int, opset: int, lead: str) -> None:
    """Axes as an input from opset 18, as an attribute before."""
    nodes, inits = _lead(lead)
    if opset >= 18:
        inits["axes"] = np.array(axes, np.int64)
        nodes.append(helper.make_node("ReduceMean", ["h", "axes"], ["y"], keepdims=keepdims))
    else:
        nodes.append(helper.make_node("ReduceMean", ["h"], ["y"], axes=axes, keepdims=keepdims))
    _assert_matches(_model(nodes, inits, opset))


# ---- element order: Flatten, Reshape, Transpose ------------------------------------------------


def _torchscript_flatten() -> tuple[Nodes, Inits]:
    """Reshape to ``concat(shape(h)[0:1], [-1])``: the shape computed in the graph."""
    nodes = [
        helper.make_node("Shape", ["h"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "unsq"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["h", "target"], ["y"]),
    ]
    return nodes, {"zero": np.array(0, np.int64), "unsq": np.array([0], np.int64), "minus1": np.array([-1], np.int64)}


def _reshape_to(shape: list[int]) -> Callable[[], tuple[Nodes, Inits]]:
    return lambda: ([helper.make_node("Reshape", ["h", "shape"], ["y"])], {"shape": np.array(shape, np.int64)})


ORDER_CASES: dict[str, Callable[[], tuple[Nodes, Inits]]] = {
    "flatten_axis1": lambda: ([helper.make_node("Flatten", ["h"], ["y"], axis=1)], {}),
    "flatten_axis2": lambda: ([helper.make_node("Flatten", ["h"], ["y"], axis=2)], {}),
    "reshape_0_minus1": _reshape_to([0, -1]),
    "reshape_minus1_chw": _reshape_to([-1, C * H * W]),
    "reshape_0_c_minus1": _reshape_to([0, C, -1]),
    "reshape_computed_shape": _torchscript_flatten,
    "transpose_0231": lambda: ([helper.make_node("Transpose", ["h"], ["y"], perm=[0, 2, 3, 1])], {}),
}


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("case", sorted(ORDER_CASES))
@pytest.mark.parametrize("lead", LEADS)
def test_flatten_and_reshape_keep_nchw_element_order(case: str, opset: int, lead: str) -> None:
    nodes, inits = _lead(lead)
    more, more_inits = ORDER_CASES[case]()
    _assert_matches(_model(nodes + more, {**inits, **more_inits}, opset))


# ---- the classifier head: Gemm, MatMul, Softmax --------------------------------------------------


def _head(op: str, seed: int = 7, **attrs: Any) -> tuple[Nodes, Inits]:
    """Flatten the 4-D ``h``, then ``op`` to 5 classes."""
    k = C * H * W
    nodes = [helper.make_node("Flatten", ["h"], ["f"])]
    if op == "MatMul":
        return nodes + [helper.make_node("MatMul", ["f", "w"], ["y"])], {"w": _rand(seed, k, 5, low=-0.1, high=0.1)}
    w = _rand(seed, 5, k, low=-0.1, high=0.1) if attrs.get("transB") else _rand(seed, k, 5, low=-0.1, high=0.1)
    return nodes + [helper.make_node("Gemm", ["f", "w", "b"], ["y"], **attrs)], {"w": w, "b": _rand(seed + 1, 5)}


def _softmax(head: tuple[Nodes, Inits]) -> tuple[Nodes, Inits]:
    nodes, inits = head
    nodes[-1].output[0] = "logits"
    return [*nodes, helper.make_node("Softmax", ["logits"], ["y"], axis=1)], inits


HEADS = {
    "gemm_transB": lambda: _head("Gemm", transB=1),
    "gemm_plain": lambda: _head("Gemm"),
    "gemm_alpha_beta": lambda: _head("Gemm", transB=1, alpha=0.5, beta=2.0),
    "matmul": lambda: _head("MatMul"),
    "gemm_transB_softmax": lambda: _softmax(_head("Gemm", transB=1)),
}


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("case", sorted(HEADS))
@pytest.mark.parametrize("lead", LEADS)
def test_gemm_matmul_and_softmax_match_onnx_runtime(case: str, opset: int, lead: str) -> None:
    nodes, inits = _lead(lead)
    head, head_inits = HEADS[case]()
    _assert_matches(_model(nodes + head, {**inits, **head_inits}, opset))


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("lead", LEADS)
def test_softmax_over_channels_of_a_4d_tensor(opset: int, lead: str) -> None:
    nodes, inits = _lead(lead)
    nodes.append(helper.make_node("Softmax", ["h"], ["y"], axis=1))
    _assert_matches(_model(nodes, inits, opset))


# ---- channels: Concat, BatchNormalization, broadcasting constants --------------------------------


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("lead", LEADS)
def test_concat_on_channels_matches_onnx_runtime(opset: int, lead: str) -> None:
    """``h``, relu(``h``) and the raw input ``x``: NHWC and NCHW operands mixed when lead is conv."""
    nodes, inits = _lead(lead)
    nodes += [
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Concat", ["h", "r", "x"], ["y"], axis=1),
    ]
    _assert_matches(_model(nodes, inits, opset))


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("lead", LEADS)
def test_batch_normalization_matches_onnx_runtime(opset: int, lead: str) -> None:
    nodes, inits = _lead(lead)
    inits |= {
        "scale": _rand(11, C, low=0.5, high=1.5),
        "bias": _rand(12, C),
        "mean": _rand(13, C),
        "var": _rand(14, C, low=0.1, high=2.0),
    }
    nodes.append(helper.make_node("BatchNormalization", ["h", "scale", "bias", "mean", "var"], ["y"], epsilon=1e-3))
    _assert_matches(_model(nodes, inits, opset))


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("const_first", [False, True], ids=["act_op_const", "const_op_act"])
@pytest.mark.parametrize("shape", [(1, C, 1, 1), (C, 1, 1), (W,)], ids=str)
@pytest.mark.parametrize("op", ["Sub", "Div"])
@pytest.mark.parametrize("lead", LEADS)
def test_elementwise_with_broadcast_constants(op: str, shape: tuple, const_first: bool, opset: int, lead: str) -> None:
    """(1,C,1,1) and (C,1,1) broadcast over channels; (W,) over the last NCHW axis."""
    nodes, inits = _lead(lead)
    inits["k"] = _rand(21, *shape, low=0.5, high=2.0)  # positive: Div stays well conditioned
    nodes.append(helper.make_node(op, ["k", "h"] if const_first else ["h", "k"], ["y"]))
    low = 0.5 if (op == "Div" and const_first) else -2.0  # Div by the activation: keep it away from 0
    if lead == "conv" and op == "Div" and const_first:
        nodes[-1].input[1] = "pos"
        nodes.insert(-1, helper.make_node("Sigmoid", ["h"], ["s"]))
        nodes.insert(-1, helper.make_node("Add", ["s", "one"], ["pos"]))
        inits["one"] = np.array(1.0, np.float32)
    _assert_matches(_model(nodes, inits, opset), low=low)


@pytest.mark.parametrize("shape", [(1, 1, H, W), (1, 1, 1, 1), (H, W)], ids=str)
def test_add_broadcast_over_channels_after_a_biased_conv(shape: tuple) -> None:
    """Grappler fused Conv2D + BiasAdd + Add into a kernel that failed at run time on an
    operand broadcast over channels ("Must provide as many biases..."): the bias is an AddV2."""
    nodes, inits = _lead("conv")
    inits["k"] = _rand(22, *shape)
    nodes.append(helper.make_node("Add", ["h", "k"], ["y"]))
    _assert_matches(_model(nodes, inits, 20))


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("lead", LEADS)
def test_elementwise_between_two_activations_of_different_layouts(opset: int, lead: str) -> None:
    """``h`` (NHWC after a convolution) minus and times ``x`` (the NCHW input)."""
    nodes, inits = _lead(lead)
    nodes += [helper.make_node("Sub", ["h", "x"], ["d"]), helper.make_node("Mul", ["x", "d"], ["y"])]
    _assert_matches(_model(nodes, inits, opset))


# ---- activations ---------------------------------------------------------------------------------

ACTIVATIONS: dict[str, tuple[int, Callable[[], tuple[Nodes, Inits]]]] = {
    # name: (lowest opset, nodes)
    "HardSwish": (14, lambda: ([helper.make_node("HardSwish", ["h"], ["y"])], {})),
    "HardSigmoid_default": (6, lambda: ([helper.make_node("HardSigmoid", ["h"], ["y"])], {})),
    "HardSigmoid_torch": (6, lambda: ([helper.make_node("HardSigmoid", ["h"], ["y"], alpha=1 / 6, beta=0.5)], {})),
    "Sigmoid": (6, lambda: ([helper.make_node("Sigmoid", ["h"], ["y"])], {})),
    "Relu": (6, lambda: ([helper.make_node("Relu", ["h"], ["y"])], {})),
    "Tanh": (6, lambda: ([helper.make_node("Tanh", ["h"], ["y"])], {})),
    "LeakyRelu": (6, lambda: ([helper.make_node("LeakyRelu", ["h"], ["y"], alpha=0.1)], {})),
    "Erf": (13, lambda: ([helper.make_node("Erf", ["h"], ["y"])], {})),
    "Clip_0_6": (
        13,
        lambda: (
            [helper.make_node("Clip", ["h", "lo", "hi"], ["y"])],
            {"lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)},
        ),
    ),
    "Clip_min_only": (13, lambda: ([helper.make_node("Clip", ["h", "lo"], ["y"])], {"lo": np.array(-0.5, np.float32)})),
    "Clip_max_only": (
        13,
        lambda: ([helper.make_node("Clip", ["h", "", "hi"], ["y"])], {"hi": np.array(0.25, np.float32)}),
    ),
    "Gelu": (20, lambda: ([helper.make_node("Gelu", ["h"], ["y"])], {})),
    "Gelu_tanh": (20, lambda: ([helper.make_node("Gelu", ["h"], ["y"], approximate="tanh")], {})),
}


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("case", sorted(ACTIVATIONS))
@pytest.mark.parametrize("lead", LEADS)
def test_activation_matches_onnx_runtime(case: str, opset: int, lead: str) -> None:
    since, build = ACTIVATIONS[case]
    if opset < since:
        pytest.skip(f"{case} is defined from opset {since}")
    nodes, inits = _lead(lead)
    more, more_inits = build()
    _assert_matches(_model(nodes + more, {**inits, **more_inits}, opset), low=-6.0, high=6.0)


# ---- the graph's input: uint8 pixels ---------------------------------------------------------------


@pytest.mark.parametrize("opset", OPSETS)
def test_cast_uint8_then_normalise_and_convolve(opset: int) -> None:
    """duet's graphs start so: uint8 NCHW -> float -> (x/255 - mean) / std -> Conv."""
    nodes = [
        helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["xf", "k255"], ["x01"]),
        helper.make_node("Sub", ["x01", "mean"], ["xc"]),
        helper.make_node("Div", ["xc", "std"], ["xn"]),
        helper.make_node("Conv", ["xn", "w"], ["y"], strides=[2, 2], pads=[3, 3, 3, 3]),
    ]
    inits = {
        "k255": np.array(255.0, np.float32),
        "mean": np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1),
        "std": np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1),
        "w": _rand(31, 8, 3, 7, 7, low=-0.1, high=0.1),
    }
    _assert_matches(_model(nodes, inits, opset, dtype=TensorProto.UINT8, shape=(3, 16, 12)))


@pytest.mark.parametrize("opset", OPSETS)
def test_cast_uint8_to_float_is_exact(opset: int) -> None:
    model = _model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], {}, opset, dtype=TensorProto.UINT8)
    _assert_matches(model, tol=0.0)


# ---- refusals ------------------------------------------------------------------------------------


def test_an_unsupported_operator_is_refused_by_name() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Range", ["start", "limit", "delta"], ["rng"]),
        helper.make_node("Cast", ["rng"], ["rf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["r", "rf"], ["y"]),
    ]
    inits = {"start": np.array(0.0, np.float32), "limit": np.array(W, np.float32), "delta": np.array(1.0, np.float32)}
    with pytest.raises(UnsupportedGraph, match=r"no TensorFlow mapping here: Range$"):
        OnnxInTf(_model(nodes, inits, 20))


def test_every_unsupported_operator_is_named_once() -> None:
    nodes = [
        helper.make_node("Range", ["start", "limit", "delta"], ["a"]),
        helper.make_node("Range", ["start", "limit", "delta"], ["b"]),
        helper.make_node("NonZero", ["x"], ["nz"]),
        helper.make_node("Relu", ["x"], ["y"]),
    ]
    inits = {"start": np.array(0, np.int64), "limit": np.array(4, np.int64), "delta": np.array(1, np.int64)}
    with pytest.raises(UnsupportedGraph, match=r"no TensorFlow mapping here: NonZero, Range$"):
        OnnxInTf(_model(nodes, inits, 20))


# ---- a real duet export ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    spec = PreprocessSpec(image_size=32)
    model = models.build("test_resnet", 3, image_size=32)
    path = tmp_path_factory.mktemp("tf_graph") / "model.onnx"
    export_onnx(model, spec, path)
    return path


def test_a_duet_export_converts_and_matches_onnx_runtime(resnet_onnx: Path) -> None:
    model = onnx.load(str(resnet_onnx))
    assert [o.name for o in model.graph.output] == list(GRAPH_OUTPUTS)
    session = ort.InferenceSession(str(resnet_onnx), providers=["CPUExecutionProvider"])
    fn = _tf_fn(model, tf.uint8, (3, 32, 32))
    for batch in (1, 4):
        pixels = np.random.default_rng(batch).integers(0, 256, (batch, 3, 32, 32), dtype=np.uint8)
        want = dict(zip(GRAPH_OUTPUTS, session.run(list(GRAPH_OUTPUTS), {"pixels": pixels})))
        got = fn(pixels)
        for name in GRAPH_OUTPUTS:
            assert got[name].shape == want[name].shape, (name, batch)
            diff = float(np.abs(got[name].numpy() - want[name]).max())
            assert diff <= 1e-4 * max(1.0, float(np.abs(want[name]).max())), f"{name} at batch {batch}: {diff:.3g}"
        np.testing.assert_allclose(got["probabilities"].numpy().sum(axis=1), 1.0, atol=1e-5)
