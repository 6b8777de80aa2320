"""duet's ONNX graph -> a TensorFlow module that computes the same outputs.

Why a converter of our own (measured 2026-11-29, docs/serving.md): ``onnx2tf``
(the route Ultralytics takes) pins exact versions of tensorflow, numpy, onnx and
onnxruntime (installing it would downgrade the ``tf`` extra), took 101 s on the
demo ResNet-18 and collapsed the dynamic batch to 1; ``litert-torch`` writes
TFLite only (no SavedModel for TF Serving) and pulls jax, transformers and
kagglehub. duet's graphs are image classifiers exported by duet itself
(``duet.exporting.onnx_graph``), so the operator set is small and known.

Layout: ONNX convolutions are NCHW; TensorFlow's CPU kernels want NHWC. Every
4-D activation is therefore held channels-last (``_Value.nhwc``), and each
operator maps its axes and 4-D constants; anything that depends on element
order (Reshape, Flatten, Transpose, Shape) first returns to ONNX's layout. An
operator outside ``SUPPORTED`` refuses the conversion with its name, before any
file is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from duet.errors import ModelError
from duet.system.tensorflow_import import import_tensorflow

tf = import_tensorflow()

TO_NHWC, TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)
NCHW_AXIS_IN_NHWC = {0: 0, 1: 3, 2: 1, 3: 2}
_DTYPES: dict[int, Any] = {
    onnx.TensorProto.FLOAT: tf.float32,
    onnx.TensorProto.UINT8: tf.uint8,
    onnx.TensorProto.INT8: tf.int8,
    onnx.TensorProto.INT32: tf.int32,
    onnx.TensorProto.INT64: tf.int64,
    onnx.TensorProto.BOOL: tf.bool,
    onnx.TensorProto.DOUBLE: tf.float64,
}


class UnsupportedGraph(ModelError):
    """The ONNX graph uses an operator or attribute this converter does not map."""


@dataclass(frozen=True)
class _Value:
    tensor: Any  # tf.Tensor, or np.ndarray while still a constant
    nhwc: bool = False  # a 4-D NCHW value held as NHWC

    @property
    def const(self) -> bool:
        return isinstance(self.tensor, np.ndarray)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _plain(v: _Value) -> Any:
    """The value in ONNX's own layout."""
    return tf.transpose(v.tensor, TO_NCHW) if v.nhwc else v.tensor


def _rank(v: _Value) -> int:
    return len(v.tensor.shape)


def _as_nhwc_operand(v: _Value) -> Any:
    """An operand of an elementwise op whose other operand is NHWC: 4-D values and
    constants that broadcast over NCHW (e.g. (C,1,1) or (1,C,1,1)) move channels last."""
    if v.nhwc:
        return v.tensor
    t = v.tensor
    if _rank(v) == 0 or (v.const and t.size == 1):
        return t
    if _rank(v) < 4:
        t = (
            np.reshape(t, (1,) * (4 - t.ndim) + t.shape)
            if v.const
            else tf.reshape(t, [1] * (4 - _rank(v)) + list(t.shape))
        )
    return np.transpose(t, TO_NHWC) if isinstance(t, np.ndarray) else tf.transpose(t, TO_NHWC)


def _binary(fn: Callable[[Any, Any], Any]) -> Callable[[list[_Value], dict[str, Any]], _Value]:
    def op(xs: list[_Value], _: dict[str, Any]) -> _Value:
        a, b = xs
        if a.nhwc or b.nhwc:
            return _Value(fn(_as_nhwc_operand(a), _as_nhwc_operand(b)), nhwc=True)
        return _Value(fn(a.tensor, b.tensor))

    return op


def _unary(fn: Callable[[Any], Any]) -> Callable[[list[_Value], dict[str, Any]], _Value]:
    return lambda xs, _: _Value(fn(xs[0].tensor), nhwc=xs[0].nhwc)


def _pads(attrs: dict[str, Any], spatial: int) -> list[list[int]]:
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise UnsupportedGraph(f"auto_pad={attrs['auto_pad']!r}")
    p = list(attrs.get("pads", [0] * 2 * spatial))
    return [[0, 0]] + [[p[i], p[i + spatial]] for i in range(spatial)] + [[0, 0]]


def _to_nhwc_input(v: _Value) -> Any:
    if v.nhwc:
        return v.tensor
    if _rank(v) != 4:
        raise UnsupportedGraph(f"a {_rank(v)}-D input to a 2-D convolution or pool")
    return tf.transpose(v.tensor, TO_NHWC)


def _conv(xs: list[_Value], attrs: dict[str, Any]) -> _Value:
    x, w = _to_nhwc_input(xs[0]), xs[1].tensor
    if not isinstance(w, np.ndarray) or w.ndim != 4:
        raise UnsupportedGraph("Conv with non-constant or non-2-D weights")
    group = int(attrs.get("group", 1))
    strides = [1, *attrs.get("strides", [1, 1]), 1]
    dilations = list(attrs.get("dilations", [1, 1]))
    x = tf.pad(x, _pads(attrs, 2))
    c_in = int(x.shape[-1])
    if group == 1:
        y = tf.nn.conv2d(x, np.transpose(w, (2, 3, 1, 0)), strides, "VALID", dilations=[1, *dilations, 1])
    elif group == c_in:
        mult = w.shape[0] // c_in
        kernel = np.transpose(w.reshape(c_in, mult, *w.shape[2:]), (2, 3, 0, 1))
        if any(d > 1 for d in dilations) and any(s > 1 for s in strides):
            # depthwise_conv2d takes strides or dilations, not both (it returns wrong
            # shapes and values, no error): stride 1, then keep every stride-th row/column
            y = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "VALID", dilations=dilations)
            y = y[:, :: strides[1], :: strides[2], :]
        else:
            y = tf.nn.depthwise_conv2d(x, kernel, strides, "VALID", dilations=dilations)
    else:
        outs, per_in, per_out = [], c_in // group, w.shape[0] // group
        for g in range(group):
            part = np.transpose(w[g * per_out : (g + 1) * per_out], (2, 3, 1, 0))
            outs.append(
                tf.nn.conv2d(
                    x[..., g * per_in : (g + 1) * per_in], part, strides, "VALID", dilations=[1, *dilations, 1]
                )
            )
        y = tf.concat(outs, axis=-1)
    if len(xs) > 2:
        # AddV2, not BiasAdd: grappler fuses Conv2D + BiasAdd + Add into one kernel that
        # fails at run time when the Add's other operand broadcasts ((1,1,H,W), (1,1,1,1))
        y = y + xs[2].tensor
    return _Value(y, nhwc=True)


def _ceil_extra(size: int, k: int, s: int, before: int, after: int) -> int:
    """Padding past ``after`` that ceil_mode adds (ONNX and PyTorch: a last window
    may overhang the end, but must start inside the input or the left padding)."""
    out = -(-(size + before + after - k) // s) + 1
    if (out - 1) * s >= size + before:
        out -= 1
    return max(0, (out - 1) * s + k - (size + before + after))


def _pool(kind: str) -> Callable[[list[_Value], dict[str, Any]], _Value]:
    def op(xs: list[_Value], attrs: dict[str, Any]) -> _Value:
        if any(d != 1 for d in attrs.get("dilations", [1, 1])):
            raise UnsupportedGraph(f"{kind} with dilations")
        x = _to_nhwc_input(xs[0])
        k, s = list(attrs["kernel_shape"]), list(attrs.get("strides", [1, 1]))
        pads = _pads(attrs, 2)
        extra = [[0, 0], [0, 0], [0, 0], [0, 0]]
        if attrs.get("ceil_mode", 0):
            for i in (1, 2):
                extra[i][1] = _ceil_extra(int(x.shape[i]), k[i - 1], s[i - 1], *pads[i])
        full = [[p[0], p[1] + e[1]] for p, e in zip(pads, extra)]
        if kind == "MaxPool":
            # Pad with the tensor's own minimum, not -inf: every window holds a real
            # element, so the max is unchanged, and an int8 calibration does not see
            # an infinite range (a -inf pad made LiteRT's XNNPACK refuse the graph).
            low = tf.reduce_min(x) if any(any(p) for p in full) else 0.0
            return _Value(tf.nn.max_pool2d(tf.pad(x, full, constant_values=low), k, s, "VALID"), nhwc=True)
        if not any(any(p) for p in full):
            return _Value(tf.nn.avg_pool2d(x, k, s, "VALID"), nhwc=True)
        # mean over the counted cells of each window: the input, plus the explicit
        # padding when count_include_pad, never the overhang that ceil_mode adds
        counted = tf.ones_like(x[:1, ..., :1])
        counted = tf.pad(counted, pads, constant_values=1.0 if attrs.get("count_include_pad", 0) else 0.0)
        counted = tf.pad(counted, extra)
        total = tf.nn.avg_pool2d(tf.pad(x, full), k, s, "VALID")
        return _Value(total / tf.nn.avg_pool2d(counted, k, s, "VALID"), nhwc=True)

    return op


def _axes(xs: list[_Value], attrs: dict[str, Any]) -> list[int] | None:
    if len(xs) > 1 and xs[1] is not None:
        return [int(a) for a in np.asarray(xs[1].tensor).ravel()]
    return [int(a) for a in attrs["axes"]] if "axes" in attrs else None


def _reduce_mean(xs: list[_Value], attrs: dict[str, Any]) -> _Value:
    x, keep = xs[0], bool(attrs.get("keepdims", 1))
    rank = _rank(x)
    axes = [a % rank for a in (_axes(xs, attrs) or range(rank))]
    if not x.nhwc:
        return _Value(tf.reduce_mean(x.tensor, axis=axes, keepdims=keep))
    y = tf.reduce_mean(x.tensor, axis=[NCHW_AXIS_IN_NHWC[a] for a in axes], keepdims=keep)
    if keep:
        return _Value(y, nhwc=True)
    left = [a for a in TO_NHWC if a not in axes]  # original axes, in the order they are held
    return _Value(y if left == sorted(left) else tf.transpose(y, list(np.argsort(left))))


def _global_average_pool(xs: list[_Value], _: dict[str, Any]) -> _Value:
    return _Value(tf.reduce_mean(_to_nhwc_input(xs[0]), axis=[1, 2], keepdims=True), nhwc=True)


def _reshape(xs: list[_Value], attrs: dict[str, Any]) -> _Value:
    x = _plain(xs[0])
    if not xs[1].const:
        return _Value(tf.reshape(x, xs[1].tensor))
    shape = [int(d) for d in np.asarray(xs[1].tensor).ravel()]
    if attrs.get("allowzero", 0) and 0 in shape:
        raise UnsupportedGraph("Reshape to a zero-sized dimension (allowzero=1)")
    dynamic = tf.shape(x)
    target = [dynamic[i] if d == 0 else d for i, d in enumerate(shape)]
    return _Value(tf.reshape(x, tf.stack(target) if any(d == 0 for d in shape) else shape))


def _flatten(xs: list[_Value], attrs: dict[str, Any]) -> _Value:
    x = _plain(xs[0])
    axis = int(attrs.get("axis", 1)) % len(x.shape)
    lead = tf.reduce_prod(tf.shape(x)[:axis])
    return _Value(tf.reshape(x, tf.stack([lead, -1])))


def _gemm(xs: list[_Value], attrs: dict[str, Any]) -> _Value:
    a, b = _plain(xs[0]), xs[1].tensor
    y = float(attrs.get("alpha", 1.0)) * tf.matmul(
        a, b, transpose_a=bool(attrs.get("transA", 0)), transpose_b=bool(attrs.get("transB", 0))
    )
    if len(xs) > 2:
        y = y + float(attrs.get("beta", 1.0)) * xs[2].tensor
    return _Value(y)


def _axis_op(fn: Callable[[Any, int], Any], default: int) -> Callable[[list[_Value], dict[str, Any]], _Value]:
    def op(xs: list[_Value], attrs: dict[str, Any]) -> _Value:
        x = xs[0]
        axis = int(attrs.get("axis", default)) % _rank(x)
        if x.nhwc:
            return _Value(fn(x.tensor, NCHW_AXIS_IN_NHWC[axis]), nhwc=True)
        return _Value(fn(x.tensor, axis))

    return op


def _concat(xs: list[_Value], attrs: dict[str, Any]) -> _Value:
    axis = int(attrs["axis"])
    if any(v.nhwc for v in xs):
        axis = NCHW_AXIS_IN_NHWC[axis % 4]
        return _Value(tf.concat([_as_nhwc_operand(v) for v in xs], axis), nhwc=True)
    if all(v.const for v in xs):
        return _Value(np.concatenate([v.tensor for v in xs], axis))
    return _Value(tf.concat([tf.cast(v.tensor, xs[0].tensor.dtype) for v in xs], axis))


def _clip(xs: list[_Value], attrs: dict[str, Any]) -> _Value:
    lo = xs[1].tensor if len(xs) > 1 and xs[1] is not None else attrs.get("min", float("-inf"))
    hi = xs[2].tensor if len(xs) > 2 and xs[2] is not None else attrs.get("max", float("inf"))
    return _Value(tf.clip_by_value(xs[0].tensor, lo, hi), nhwc=xs[0].nhwc)


def _cast(xs: list[_Value], attrs: dict[str, Any]) -> _Value:
    to = int(attrs["to"])
    if to not in _DTYPES:
        raise UnsupportedGraph(f"Cast to ONNX type {to}")
    return _Value(tf.cast(xs[0].tensor, _DTYPES[to]), nhwc=xs[0].nhwc)


def _batch_norm(xs: list[_Value], attrs: dict[str, Any]) -> _Value:
    x = _Value(_to_nhwc_input(xs[0]), nhwc=True) if _rank(xs[0]) == 4 else xs[0]
    scale, bias, mean, var = (np.asarray(v.tensor) for v in xs[1:5])
    mult = scale / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
    shift = bias - mean * mult
    if x.nhwc:
        return _Value(x.tensor * mult + shift, nhwc=True)
    shape = [1, -1] + [1] * (_rank(x) - 2)
    return _Value(x.tensor * mult.reshape(shape) + shift.reshape(shape))


def _transpose(xs: list[_Value], attrs: dict[str, Any]) -> _Value:
    x = _plain(xs[0])
    return _Value(tf.transpose(x, attrs.get("perm", list(range(len(x.shape)))[::-1])))


def _gelu(xs: list[_Value], attrs: dict[str, Any]) -> _Value:
    approximate = attrs.get("approximate", b"none") in (b"tanh", "tanh")
    return _Value(tf.nn.gelu(xs[0].tensor, approximate=approximate), nhwc=xs[0].nhwc)


def _layer_norm(xs: list[_Value], attrs: dict[str, Any]) -> _Value:
    x = _plain(xs[0])
    axis = int(attrs.get("axis", -1)) % len(x.shape)
    axes = list(range(axis, len(x.shape)))
    mean, var = tf.nn.moments(x, axes=axes, keepdims=True)
    y = (x - mean) * tf.math.rsqrt(var + float(attrs.get("epsilon", 1e-5))) * xs[1].tensor
    return _Value(y + xs[2].tensor if len(xs) > 2 and xs[2] is not None else y)


def _shape(xs: list[_Value], _: dict[str, Any]) -> _Value:
    return _Value(tf.shape(_plain(xs[0]), out_type=tf.int64))


def _gather(xs: list[_Value], attrs: dict[str, Any]) -> _Value:
    return _Value(tf.gather(_plain(xs[0]), xs[1].tensor, axis=int(attrs.get("axis", 0))))


def _unsqueeze(xs: list[_Value], attrs: dict[str, Any]) -> _Value:
    y = _plain(xs[0])
    rank = len(y.shape) + len(_axes(xs, attrs) or [])
    for a in sorted(a % rank for a in _axes(xs, attrs) or []):
        y = tf.expand_dims(y, a)
    return _Value(y)


def _squeeze(xs: list[_Value], attrs: dict[str, Any]) -> _Value:
    x = _plain(xs[0])
    axes = _axes(xs, attrs)
    return _Value(tf.squeeze(x, axis=[a % len(x.shape) for a in axes] if axes else None))


OPS: dict[str, Callable[[list[_Value], dict[str, Any]], _Value]] = {
    "Add": _binary(tf.add),
    "Sub": _binary(tf.subtract),
    "Mul": _binary(tf.multiply),
    "Div": _binary(tf.divide),
    "Pow": _binary(tf.pow),
    "Relu": _unary(tf.nn.relu),
    "Sigmoid": _unary(tf.sigmoid),
    "Tanh": _unary(tf.tanh),
    "Erf": _unary(tf.math.erf),
    "Sqrt": _unary(tf.sqrt),
    "Identity": _unary(tf.identity),
    "Dropout": _unary(tf.identity),
    "HardSigmoid": lambda xs, a: _Value(
        tf.clip_by_value(float(a.get("alpha", 0.2)) * xs[0].tensor + float(a.get("beta", 0.5)), 0.0, 1.0),
        nhwc=xs[0].nhwc,
    ),
    "HardSwish": _unary(lambda x: x * tf.nn.relu6(x + 3.0) / 6.0),
    "LeakyRelu": lambda xs, a: _Value(tf.nn.leaky_relu(xs[0].tensor, float(a.get("alpha", 0.01))), nhwc=xs[0].nhwc),
    "Gelu": _gelu,
    "Clip": _clip,
    "Cast": _cast,
    "Conv": _conv,
    "MaxPool": _pool("MaxPool"),
    "AveragePool": _pool("AveragePool"),
    "GlobalAveragePool": _global_average_pool,
    "ReduceMean": _reduce_mean,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Gemm": _gemm,
    "MatMul": lambda xs, _: _Value(tf.matmul(_plain(xs[0]), _plain(xs[1]))),
    "Softmax": _axis_op(lambda x, axis: tf.nn.softmax(x, axis=axis), -1),
    "Concat": _concat,
    "BatchNormalization": _batch_norm,
    "Transpose": _transpose,
    "LayerNormalization": _layer_norm,
    "Shape": _shape,
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
}
SUPPORTED = frozenset(OPS) | {"Constant"}


def check_supported(model: onnx.ModelProto) -> None:
    """Raise ``UnsupportedGraph`` naming every operator the converter lacks."""
    missing = sorted(
        {n.op_type for n in model.graph.node if n.op_type not in SUPPORTED or n.domain not in ("", "ai.onnx")}
    )
    if missing:
        raise UnsupportedGraph(f"ONNX operators with no TensorFlow mapping here: {', '.join(missing)}")


class OnnxInTf:
    """The ONNX graph as a TensorFlow module: ``module(inputs...) -> {output name: tensor}``.

    The initialisers stay NumPy arrays, so tracing folds them into the graph as
    constants already in TensorFlow's layout (a convolution's weights are
    transposed once, at trace time, not per call); a SavedModel thus keeps them
    in saved_model.pb, well under protobuf's 2 GiB for the models duet trains."""

    def __init__(self, model: onnx.ModelProto) -> None:
        check_supported(model)
        self._graph = model.graph
        self._consts = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in self._consts]
        self.output_names = [o.name for o in model.graph.output]

    def __call__(self, *inputs: Any) -> dict[str, Any]:
        env: dict[str, _Value] = {name: _Value(tf.convert_to_tensor(x)) for name, x in zip(self.input_names, inputs)}
        env.update({k: _Value(v) for k, v in self._consts.items()})
        for node in self._graph.node:
            attrs = _attrs(node)
            if node.op_type == "Constant":
                env[node.output[0]] = _Value(numpy_helper.to_array(attrs["value"]))
                continue
            missing = [name for name in node.input if name and name not in env]
            if missing:
                raise UnsupportedGraph(f"{node.op_type} reads {missing[0]!r} before it is produced")
            args = [env[name] if name else None for name in node.input]
            env[node.output[0]] = OPS[node.op_type](args, attrs)  # type: ignore[arg-type]
        return {name: tf.convert_to_tensor(_plain(env[name])) for name in self.output_names}
