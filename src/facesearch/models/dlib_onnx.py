"""Run dlib's face-recognition ResNet under onnxruntime.

`convert_resnet` reads ``dlib_face_recognition_resnet_model_v1.dat`` (the network
written by dlib's ``serialize()``, type ``anet_type`` from dlib's
``examples/dnn_face_recognition_ex.cpp``) and builds the same network as an ONNX
graph. The ONNX outputs match dlib's ``compute_face_descriptor`` to about 1e-6.
They cannot be bit-identical because the convolutions add up terms in a
different order.

ONNX model interface:

* input ``chips``: uint8 ``[N, 150, 150, 3]``, RGB, i.e. a stack of what
  ``dlib.get_face_chip(img, shape, size=150, padding=0.25)`` returns.
  The graph does dlib's ``input_rgb_image_sized<150>`` preprocessing
  ``(pixel - channel_mean) / 256`` itself.
* output ``embeddings``: float32 ``[N, 128]``, the raw (not normalised)
  descriptor. ``N`` is dynamic.

How dlib serialises things (dlib/serialize.h, dlib/float_details.h, dlib/cuda/tensor.h,
dlib/dnn/core.h):

* integers: one control byte (bit 7 = negative for signed types, low nibble =
  number of bytes), then the magnitude as little-endian bytes;
* bool: the ASCII character ``'0'`` or ``'1'``;
* std::string: an unsigned length, then the raw bytes;
* float/double scalars: dlib's *portable* format, i.e. two integers, a mantissa
  (int64) and an exponent (int16), with value ``ldexp(mantissa, exponent)``;
* tensors: version int (2), four int64 dims, then raw little-endian IEEE float32;
* ``add_loss_layer``: version, loss details, subnetwork. ``add_layer``: version,
  **subnetwork**, layer details, then training state. ``add_tag_layer`` and
  ``add_skip_layer``: version and subnetwork only. So the stream is
  ``loss, header(top) ... header(bottom), input layer, details(bottom) ... details(top)``.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "CHIP_SIZE",
    "DlibFormatError",
    "OnnxFaceEncoder",
    "cached_model_path",
    "convert_resnet",
    "load_session",
]

CHIP_SIZE = 150
EMBEDDING_DIM = 128
INPUT_NAME = "chips"
OUTPUT_NAME = "embeddings"
OPSET = 17
# Bump when the generated graph changes so that cached models get rebuilt.
CONVERTER_VERSION = 1


# --------------------------------------------------------------------------------------
# Network description (mirrors the C++ templates, top layer first)


@dataclass
class _Layer:
    kind: str  # loss, fc, avg_pool, max_pool, relu, affine, con, add_prev, skip, tag, input
    args: dict[str, int] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # filled by the parser


def _block(n: int, stride: int) -> list[_Layer]:
    # block = BN<con<N,3,3,1,1,relu<BN<con<N,3,3,stride,stride,SUBNET>>>>>
    return [
        _Layer("affine"),
        _Layer("con", {"n": n, "k": 3, "stride": 1}),
        _Layer("relu"),
        _Layer("affine"),
        _Layer("con", {"n": n, "k": 3, "stride": stride}),
    ]


def _ares(n: int) -> list[_Layer]:
    # relu<add_prev1<block<N,affine,1,tag1<SUBNET>>>>
    return [_Layer("relu"), _Layer("add_prev", {"tag": 1}), *_block(n, 1), _Layer("tag", {"id": 1})]


def _ares_down(n: int) -> list[_Layer]:
    # relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,affine,2,tag1<SUBNET>>>>>>>
    return [
        _Layer("relu"),
        _Layer("add_prev", {"tag": 2}),
        _Layer("avg_pool", {"k": 2, "stride": 2}),
        _Layer("skip", {"tag": 1}),
        _Layer("tag", {"id": 2}),
        *_block(n, 2),
        _Layer("tag", {"id": 1}),
    ]


def _anet_layers() -> list[_Layer]:
    """The layers of dlib's ``anet_type``, top (loss) to bottom (input)."""
    return [
        _Layer("loss"),
        _Layer("fc", {"n": EMBEDDING_DIM}),
        _Layer("avg_pool", {"k": 0, "stride": 1}),  # avg_pool_everything
        *_ares_down(256),  # alevel0
        *_ares(256), *_ares(256), *_ares_down(256),  # alevel1
        *_ares(128), *_ares(128), *_ares_down(128),  # alevel2
        *_ares(64), *_ares(64), *_ares(64), *_ares_down(64),  # alevel3
        *_ares(32), *_ares(32), *_ares(32),  # alevel4
        _Layer("max_pool", {"k": 3, "stride": 2}),
        _Layer("relu"),
        _Layer("affine"),
        _Layer("con", {"n": 32, "k": 7, "stride": 2}),
        _Layer("input", {"size": CHIP_SIZE}),
    ]


# --------------------------------------------------------------------------------------
# Reader for dlib's serialization format


class DlibFormatError(ValueError):
    """The file is not the network this converter expects."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.buf = memoryview(data)
        self.pos = 0

    def _take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise DlibFormatError(f"unexpected end of file at byte {self.pos}")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def read_int(self, signed: bool = True) -> int:
        ctrl = self._take(1)[0]
        size = ctrl & (0x0F if signed else 0x8F)
        if size == 0 or size > 8:
            raise DlibFormatError(f"bad integer control byte {ctrl:#x} at byte {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little")
        return -value if signed and ctrl & 0x80 else value

    def read_uint(self) -> int:
        return self.read_int(signed=False)

    def read_bool(self) -> bool:
        ch = self._take(1)[0]
        if ch not in (ord("0"), ord("1")):
            raise DlibFormatError(f"bad bool at byte {self.pos - 1}")
        return ch == ord("1")

    def read_float(self) -> float:
        """A float/double in dlib's portable format (mantissa, exponent)."""
        if self.buf[self.pos] & 0x70:
            raise DlibFormatError("old ASCII float format is not supported")
        mantissa = self.read_int()
        exponent = self.read_int()
        specials = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
        if exponent in specials:
            return specials[exponent]
        return math.ldexp(float(mantissa), exponent)

    def read_string(self) -> str:
        return bytes(self._take(self.read_uint())).decode("ascii")

    def expect(self, *names: str) -> str:
        name = self.read_string()
        if name not in names:
            raise DlibFormatError(f"expected {' or '.join(names)}, found {name!r}")
        return name

    def version(self, lo: int, hi: int, what: str) -> int:
        v = self.read_int()
        if not lo <= v <= hi:
            raise DlibFormatError(f"unexpected {what} version {v}")
        return v

    def tensor(self) -> npt.NDArray[np.float32]:
        self.version(2, 2, "tensor")
        shape = tuple(self.read_int() for _ in range(4))
        count = int(np.prod(shape))
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        self.version(1, 1, "alias_tensor")
        n, k, nr, nc = (self.read_int() for _ in range(4))
        return n, k, nr, nc


# --------------------------------------------------------------------------------------
# Layer details


def _read_details(r: _Reader, layer: _Layer) -> None:
    kind, args, d = layer.kind, layer.args, layer.data
    if kind == "con":
        version = r.expect("con_4", "con_5", "con_6")
        params = r.tensor().ravel()
        num_filters = r.read_int()
        nr, nc, stride_y, stride_x, pad_y, pad_x = (r.read_int() for _ in range(6))
        filters = r.alias_tensor()
        r.alias_tensor()  # biases: (1, num_filters), stored after the filters
        for _ in range(4):  # learning-rate / weight-decay multipliers
            r.read_float()
        use_bias = r.read_bool() if version in ("con_5", "con_6") else True
        use_relu = r.read_bool() if version == "con_6" else False
        k, s = args["k"], args["stride"]
        expected_pad = k // 2 if s == 1 else 0  # con_'s default padding
        found = (num_filters, nr, nc, stride_y, stride_x, pad_y, pad_x)
        if found != (args["n"], k, k, s, s, expected_pad, expected_pad):
            raise DlibFormatError(f"unexpected con_ parameters {found}")
        nw = int(np.prod(filters))
        d["weight"] = params[:nw].reshape(filters)  # (out, in, kh, kw) like ONNX
        d["bias"] = params[nw : nw + num_filters] if use_bias else None
        d["relu"] = use_relu
        d["pad"] = pad_y
    elif kind == "affine":
        version = r.expect("affine_", "affine_2", "bn_con2")
        params = r.tensor().ravel()
        gamma_shape = r.alias_tensor()
        r.alias_tensor()  # beta has the same shape
        ng = int(np.prod(gamma_shape))
        gamma, beta = params[:ng], params[ng : 2 * ng]
        if version == "bn_con2":
            # A batch-norm layer loaded as affine_: dlib folds the running statistics
            # (float arithmetic, see affine_'s constructor from bn_).
            r.tensor()  # means
            r.tensor()  # invstds
            running_means = r.tensor().ravel()
            running_vars = r.tensor().ravel()
            r.read_uint()  # num_updates
            r.read_uint()  # running_stats_window_size
            for _ in range(4):
                r.read_float()
            eps = np.float32(r.read_float())
            gamma = gamma / np.sqrt(running_vars + eps)
            beta = beta - gamma * running_means
            disabled = False
        else:
            if r.read_int() != 0:
                raise DlibFormatError("affine_ layer is not in CONV_MODE")
            disabled = r.read_bool() if version == "affine_2" else False
        d["gamma"] = gamma.astype(np.float32)
        d["beta"] = beta.astype(np.float32)
        d["disabled"] = disabled
    elif kind == "relu":
        version = r.expect("relu_", "relu_2")
        d["disabled"] = r.read_bool() if version == "relu_2" else False
    elif kind in ("max_pool", "avg_pool"):
        r.expect(f"{kind}_2")
        nr, nc, stride_y, stride_x, pad_y, pad_x = (r.read_int() for _ in range(6))
        k, s = args["k"], args["stride"]
        expected_pad = k // 2 if s == 1 else 0
        if (nr, nc, stride_y, stride_x, pad_y, pad_x) != (k, k, s, s, expected_pad, expected_pad):
            raise DlibFormatError(f"unexpected {kind} parameters")
        d["pad"] = pad_y
    elif kind == "add_prev":
        r.expect("add_prev_")
    elif kind == "fc":
        version = r.expect("fc_2", "fc_3")
        num_outputs, num_inputs = r.read_uint(), r.read_uint()
        params = r.tensor().ravel()
        r.alias_tensor()  # weights: (num_inputs, num_outputs)
        r.alias_tensor()  # biases
        bias_mode = r.read_int()  # 0 = FC_HAS_BIAS, 1 = FC_NO_BIAS
        for _ in range(4):
            r.read_float()
        use_bias = r.read_bool() if version == "fc_3" else True
        if num_outputs != args["n"] or bias_mode != 1:
            raise DlibFormatError("expected fc_no_bias<128>")
        nw = num_inputs * num_outputs
        d["weight"] = params[:nw].reshape(num_inputs, num_outputs)
        d["bias"] = params[nw : nw + num_outputs] if use_bias and bias_mode == 0 else None
    else:  # pragma: no cover - the layer list is fixed
        raise AssertionError(kind)


def _parse(data: bytes) -> list[_Layer]:
    """Parse the serialized ``anet_type`` into the layer list, with the weights."""
    r = _Reader(data)
    layers = _anet_layers()
    loss, body, inp = layers[0], layers[1:-1], layers[-1]

    r.version(1, 1, "add_loss_layer")
    if r.expect("loss_metric_", "loss_metric_2") == "loss_metric_2":
        loss.data["margin"], loss.data["dist_thresh"] = r.read_float(), r.read_float()

    # Headers, top to bottom. The bottom add_layer wraps the input layer and has
    # its own (later) version numbering.
    versions: list[int] = []
    for i, layer in enumerate(body):
        if layer.kind in ("tag", "skip"):
            versions.append(r.version(1, 1, f"add_{layer.kind}_layer"))
        elif i == len(body) - 1:
            versions.append(r.version(2, 3, "input add_layer"))
        else:
            versions.append(r.version(1, 2, "add_layer"))

    r.expect("input_rgb_image_sized")
    inp.data["mean"] = np.array([r.read_float() for _ in range(3)], dtype=np.float32)
    if (r.read_uint(), r.read_uint()) != (inp.args["size"], inp.args["size"]):
        raise DlibFormatError("expected input_rgb_image_sized<150>")

    # Details, bottom to top, each followed by the add_layer's training state.
    for i in range(len(body) - 1, -1, -1):
        layer = body[i]
        if layer.kind in ("tag", "skip"):
            continue
        _read_details(r, layer)
        for _ in range(3):  # this_layer_setup_called, gradient_input_is_stale, ...
            r.read_bool()
        r.tensor()  # x_grad
        r.tensor()  # cached_output
        if i == len(body) - 1:
            r.tensor()  # grad_final
            if versions[i] >= 3:
                r.read_uint()  # _sample_expansion_factor
        elif versions[i] == 2:
            r.tensor()  # params_grad
    if r.pos != len(data):
        raise DlibFormatError(f"{len(data) - r.pos} trailing bytes")
    return layers


# --------------------------------------------------------------------------------------
# ONNX graph construction


class _GraphBuilder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, base: str, value: npt.ArrayLike, dtype: type = np.float32) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], base: str, **attrs: Any) -> str:
        out = self.name(base)
        self.nodes.append(helper.make_node(op_type, inputs, [out], out, **attrs))
        return out


def _build_graph(layers: list[_Layer]) -> onnx.ModelProto:
    g = _GraphBuilder()
    inp = layers[-1]
    size = inp.args["size"]

    # input_rgb_image_sized: float((pixel - mean) / 256), NHWC uint8 -> NCHW float
    x = g.op("Cast", [INPUT_NAME], "to_float", to=TensorProto.FLOAT)
    x = g.op("Sub", [x, g.const("rgb_mean", inp.data["mean"])], "centered")
    x = g.op("Mul", [x, g.const("scale", np.float32(1.0 / 256.0))], "scaled")  # exact
    x = g.op("Transpose", [x], "nchw", perm=[0, 3, 1, 2])
    shape = (3, size, size)  # (k, nr, nc) as dlib computes it

    tags: dict[int, tuple[str, tuple[int, int, int]]] = {}
    for layer in reversed(layers[1:-1]):
        kind, d = layer.kind, layer.data
        c, h, w = shape
        if kind == "con":
            k, s, p = layer.args["k"], layer.args["stride"], int(d["pad"])
            ins = [x, g.const("con_w", d["weight"])]
            if d["bias"] is not None:
                ins.append(g.const("con_b", d["bias"]))
            x = g.op("Conv", ins, "con", kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)
            if d["relu"]:
                x = g.op("Relu", [x], "relu")
            shape = (layer.args["n"], 1 + (h + 2 * p - k) // s, 1 + (w + 2 * p - k) // s)
        elif kind == "affine":
            if not d["disabled"]:
                gamma = np.asarray(d["gamma"]).reshape(1, c, 1, 1)
                beta = np.asarray(d["beta"]).reshape(1, c, 1, 1)
                x = g.op("Mul", [x, g.const("gamma", gamma)], "affine_mul")
                x = g.op("Add", [x, g.const("beta", beta)], "affine")
        elif kind == "relu":
            if not d["disabled"]:
                x = g.op("Relu", [x], "relu")
        elif kind in ("max_pool", "avg_pool"):
            k, s, p = layer.args["k"], layer.args["stride"], int(d["pad"])
            if k == 0:  # avg_pool_everything
                x = g.op("GlobalAveragePool", [x], "avg_pool_everything")
                shape = (c, 1, 1)
            else:
                # dlib pools over the part of the window inside the image (subm_clipped)
                op = "MaxPool" if kind == "max_pool" else "AveragePool"
                extra = {} if kind == "max_pool" else {"count_include_pad": 0}
                x = g.op(op, [x], kind, kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, **extra)
                shape = (c, 1 + (h + 2 * p - k) // s, 1 + (w + 2 * p - k) // s)
        elif kind == "tag":
            tags[layer.args["id"]] = (x, shape)
        elif kind == "skip":
            x, shape = tags[layer.args["tag"]]
        elif kind == "add_prev":
            # tt::add: output has the max of each dimension; each input contributes
            # where it exists (i.e. both are zero-padded at the end).
            y, yshape = tags[layer.args["tag"]]
            out = (max(c, yshape[0]), max(h, yshape[1]), max(w, yshape[2]))
            x = _pad_to(g, x, shape, out)
            y = _pad_to(g, y, yshape, out)
            x = g.op("Add", [x, y], "add_prev")
            shape = out
        elif kind == "fc":
            x = g.op("Flatten", [x], "flatten", axis=1)  # k, nr, nc order like dlib
            x = g.op("MatMul", [x, g.const("fc_w", d["weight"])], "fc")
            if d["bias"] is not None:
                x = g.op("Add", [x, g.const("fc_b", d["bias"])], "fc_bias")
        else:  # pragma: no cover
            raise AssertionError(kind)
    g.nodes.append(helper.make_node("Identity", [x], [OUTPUT_NAME], name=OUTPUT_NAME))

    graph = helper.make_graph(
        g.nodes,
        "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", size, size, 3])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", EMBEDDING_DIM])],
        initializer=g.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="facesearch.models.dlib_onnx",
        producer_version=str(CONVERTER_VERSION),
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _pad_to(
    g: _GraphBuilder, x: str, shape: tuple[int, int, int], out: tuple[int, int, int]
) -> str:
    if shape == out:
        return x
    pads = [0, 0, 0, 0, 0, *(o - s for o, s in zip(out, shape, strict=True))]
    return g.op("Pad", [x, g.const("pads", pads, np.int64)], "pad")


# --------------------------------------------------------------------------------------
# Public API


def convert_resnet(dat_path: Path) -> onnx.ModelProto:
    """Convert ``dlib_face_recognition_resnet_model_v1.dat`` to an ONNX model.

    Input ``chips`` is uint8 ``[N, 150, 150, 3]`` RGB face chips, output
    ``embeddings`` is float32 ``[N, 128]``. Raises `DlibFormatError` if the file
    does not hold dlib's ``anet_type`` network.
    """
    return _build_graph(_parse(Path(dat_path).read_bytes()))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cached_model_path(dat_path: Path, cache_dir: Path) -> Path:
    """Where `load_session` keeps the converted model for this source file."""
    digest = _sha256(Path(dat_path))
    return Path(cache_dir) / f"dlib_resnet_{digest[:32]}_v{CONVERTER_VERSION}.onnx"


def load_session(
    dat_path: Path, cache_dir: Path, threads: int = 1, spin: bool = True
) -> onnxruntime.InferenceSession:
    """An onnxruntime session for the network in ``dat_path``.

    The converted model is cached in ``cache_dir`` under a name containing the
    sha256 of the ``.dat`` content (and the converter version), so a changed source
    file gets converted again. The cache file is written atomically.
    """
    path = cached_model_path(dat_path, cache_dir)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        data = convert_resnet(dat_path).SerializeToString()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spin:  # idle threads sleep instead of busy-waiting on cores other work needs
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(
        str(path), sess_options=opts, providers=["CPUExecutionProvider"]
    )


class OnnxFaceEncoder:
    """Face descriptors with dlib's ResNet, computed by onnxruntime."""

    def __init__(self, dat_path: Path, cache_dir: Path, threads: int = 1) -> None:
        self.threads = threads
        self.session = load_session(dat_path, cache_dir, threads)
        self._source = (dat_path, cache_dir)
        self._wide: dict[int, onnxruntime.InferenceSession] = {}

    def embed(self, chips: npt.NDArray[np.uint8], threads: int = 0) -> npt.NDArray[np.float32]:
        """``[N, 150, 150, 3]`` uint8 RGB chips -> ``[N, 128]`` float32 descriptors. ``threads``
        above the encoder's own count runs them on a second session with that many threads,
        made on first use (~0.2 s) and never spinning while idle."""
        chips = np.asarray(chips)
        if chips.dtype != np.uint8 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
            raise ValueError(
                f"expected uint8 [N, {CHIP_SIZE}, {CHIP_SIZE}, 3], got {chips.dtype} {chips.shape}"
            )
        if len(chips) == 0:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        session = self.session
        if threads > self.threads:
            if threads not in self._wide:
                self._wide[threads] = load_session(*self._source, threads, spin=False)
            session = self._wide[threads]
        out = session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(chips)})[0]
        return np.asarray(out, dtype=np.float32)
