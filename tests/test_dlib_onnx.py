"""The ONNX conversion of dlib's face ResNet gives dlib's descriptors, and its cache works."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

dlib = pytest.importorskip("dlib")
face_recognition_models = pytest.importorskip("face_recognition_models")
onnxruntime = pytest.importorskip("onnxruntime")

from bench.lfw import lfw_chips  # noqa: E402
from facesearch.models.dlib_onnx import (  # noqa: E402
    OnnxFaceEncoder,
    cached_model_path,
    convert_resnet,
    load_session,
)

REPO = Path(__file__).resolve().parent.parent
FACES = Path(os.environ.get("FACESEARCH_FACES", REPO.parent / "shared" / "faces"))
DAT = Path(face_recognition_models.face_recognition_model_location())
N_PHOTOS = 60  # one photo each of the first people (alphabetically) with a HOG-detected face
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    """Face chips exactly as dlib cuts them: HOG + 5 landmarks + get_face_chip(150, 0.25)."""
    lfw = FACES / "lfw"
    if not lfw.is_dir():
        pytest.skip(f"LFW photos not found at {lfw} (set FACESEARCH_FACES to the folder with lfw/)")
    out = lfw_chips(lfw, N_PHOTOS)
    assert len(out) >= 50, f"only {len(out)} faces found under {lfw}"
    return out


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> OnnxFaceEncoder:
    return OnnxFaceEncoder(DAT, tmp_path_factory.mktemp("onnx-cache"), threads=2)


def test_matches_dlib(chips: np.ndarray, encoder: OnnxFaceEncoder) -> None:
    net = dlib.face_recognition_model_v1(str(DAT))
    expected = np.array([np.array(net.compute_face_descriptor(c)) for c in chips])
    batched = encoder.embed(chips)
    assert batched.dtype == np.float32 and batched.shape == (len(chips), 128)
    diff = float(np.abs(batched.astype(np.float64) - expected).max())
    assert diff <= TOLERANCE, f"max abs diff {diff:.3g} over {len(chips)} faces"
    # Batch size must not change the result either.
    single = np.concatenate([encoder.embed(chips[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(single, batched[:5], rtol=0, atol=1e-6)
    # Nor the threads lent to a lone task (a second session, made on first use).
    one = OnnxFaceEncoder(DAT, Path(encoder._source[1]), threads=1)
    lent = np.concatenate([one.embed(chips[i : i + 1], threads=2) for i in range(5)])
    assert list(one._wide) == [2]
    np.testing.assert_allclose(lent, batched[:5], rtol=0, atol=1e-6)


def test_embed_rejects_bad_input(encoder: OnnxFaceEncoder) -> None:
    assert encoder.embed(np.zeros((0, 150, 150, 3), np.uint8)).shape == (0, 128)
    with pytest.raises(ValueError):
        encoder.embed(np.zeros((150, 150, 3), np.uint8))
    with pytest.raises(ValueError):
        encoder.embed(np.zeros((1, 150, 150, 3), np.float32))


def _run(session: onnxruntime.InferenceSession, chips: np.ndarray) -> np.ndarray:
    return session.run(["embeddings"], {"chips": chips})[0]


def test_cache_reused_and_rebuilt_on_change(tmp_path: Path) -> None:
    source = tmp_path / "model.dat"
    shutil.copyfile(DAT, source)
    cache = tmp_path / "cache"
    rng = np.random.default_rng(0)
    probe = rng.integers(0, 256, (2, 150, 150, 3), dtype=np.uint8)

    before = _run(load_session(source, cache), probe)
    (first,) = cache.glob("*.onnx")
    assert first == cached_model_path(source, cache)
    os.utime(first, ns=(10**18, 10**18))  # a marker: rewriting the file would change it

    # Same content, new mtime: the cached model is used as is.
    os.utime(source, ns=(2 * 10**18, 2 * 10**18))
    np.testing.assert_array_equal(_run(load_session(source, cache), probe), before)
    assert list(cache.glob("*.onnx")) == [first]
    assert first.stat().st_mtime_ns == 10**18

    # Different content: double the final fc weights in the .dat; the model is rebuilt from
    # the new file, so the descriptors double (exactly: scaling by 2 is exact in float32).
    model = convert_resnet(source)
    matmul = next(n for n in model.graph.node if n.op_type == "MatMul")
    init = next(i for i in model.graph.initializer if i.name == matmul.input[1])
    weights = np.frombuffer(init.raw_data, dtype="<f4")
    data = source.read_bytes()
    at = data.find(weights.tobytes())
    assert at > 0 and data.find(weights.tobytes(), at + 1) == -1
    doubled = (weights * 2).astype("<f4").tobytes()
    source.write_bytes(data[:at] + doubled + data[at + len(doubled) :])

    after = _run(load_session(source, cache), probe)
    np.testing.assert_allclose(after, 2 * before, rtol=1e-6, atol=0)
    files = sorted(cache.iterdir())
    assert len(files) == 2 and cached_model_path(source, cache) in files
    assert not list(cache.glob("*.tmp")), "temporary file left behind"
