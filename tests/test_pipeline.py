"""The face model in its worker processes, on real LFW photos."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesearch.errors import InvalidImage, UnsupportedImage
from facesearch.models import DLIB_MODEL, default_thresholds

from .conftest import photos_of


def read(path: Path) -> bytes:
    return path.read_bytes()


def test_one_face_with_box_landmarks_and_unit_embedding(pool, lfw: Path) -> None:
    a = pool.analyze(read(lfw / "Colin_Powell" / "Colin_Powell_0001.jpg"))
    assert (a.width, a.height) == (250, 250)
    assert a.faces_found >= 1
    face = a.faces[0]
    # LFW centres the person; the largest face is theirs.
    assert 60 < face.box.x + face.box.w / 2 < 190 and 60 < face.box.y + face.box.h / 2 < 190
    assert len(face.landmarks) == 5
    assert face.embedding.shape == (128,) and face.embedding.dtype == np.float32
    assert abs(np.linalg.norm(face.embedding) - 1) < 1e-5
    assert set(a.timings_ms) == {"decode", "detect", "embed"}


def test_same_person_near_different_people_far(pool, lfw: Path) -> None:
    powell = [pool.analyze(read(p)).faces[0].embedding for p in photos_of(lfw, "Colin_Powell")[:3]]
    blair = pool.analyze(read(photos_of(lfw, "Tony_Blair")[0])).faces[0].embedding
    same = [1 - powell[0] @ powell[i] for i in (1, 2)]
    verify = default_thresholds(DLIB_MODEL)[1]  # the session pool's model
    assert max(same) < verify
    assert 1 - powell[0] @ blair > verify


def test_embedding_is_deterministic_across_workers(pool, lfw: Path) -> None:
    data = read(lfw / "Tony_Blair" / "Tony_Blair_0002.jpg")
    futures = [pool.submit(data, max_pixels=10**8, max_faces=5) for _ in range(4)]
    vectors = [pool.result(f).faces[0].embedding for f in futures]
    assert all(np.array_equal(vectors[0], v) for v in vectors)


def two_faces(lfw: Path) -> bytes:
    """A photo we make: two LFW portraits side by side, the left one larger."""
    left = Image.open(lfw / "Colin_Powell" / "Colin_Powell_0001.jpg").resize((300, 300))
    right = Image.open(lfw / "Tony_Blair" / "Tony_Blair_0001.jpg")
    canvas = Image.new("RGB", (560, 300), (128, 128, 128))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (310, 25))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_several_faces_largest_first_and_max_faces(pool, lfw: Path) -> None:
    a = pool.analyze(two_faces(lfw))
    assert a.faces_found == 2
    assert a.faces[0].box.area > a.faces[1].box.area
    assert a.faces[0].box.x < 300 < a.faces[1].box.x
    capped = pool.analyze(two_faces(lfw), max_faces=1)
    assert capped.faces_found == 2 and len(capped.faces) == 1
    assert np.allclose(capped.faces[0].embedding, a.faces[0].embedding, atol=1e-6)


def test_no_face(pool) -> None:
    gradient = np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))
    buf = io.BytesIO()
    Image.fromarray(gradient).save(buf, "PNG")
    a = pool.analyze(buf.getvalue())
    assert a.faces == [] and a.faces_found == 0


def test_detect_only_skips_embedding(pool, lfw: Path) -> None:
    a = pool.analyze(read(lfw / "Colin_Powell" / "Colin_Powell_0001.jpg"), embed=False)
    assert a.faces and a.faces[0].embedding is None and "embed" not in a.timings_ms


def test_thumbnails_only_when_asked(pool, lfw: Path) -> None:
    """Recognize skips them; enrollment asks, one JPEG per face kept, alone or in a batch."""
    assert all(f.thumbnail is None for f in pool.analyze(two_faces(lfw)).faces)
    a = pool.analyze(two_faces(lfw), thumbnails=True)
    assert len(a.faces) == 2 and "thumbnail" in a.timings_ms
    for face in a.faces:
        assert Image.open(io.BytesIO(face.thumbnail)).size == (112, 112)
    (b,) = pool.result(pool.submit_batch([two_faces(lfw)], max_pixels=10**8, max_faces=1,
                                         thumbnails=True))
    assert len(b.faces) == 1 and b.faces[0].thumbnail == a.faces[0].thumbnail


def test_small_faces_are_found(pool, lfw: Path) -> None:
    """A ~45 px face in a 600 px photo (upsampling finds faces from about 40 px)."""
    face = Image.open(lfw / "Colin_Powell" / "Colin_Powell_0001.jpg").resize((110, 110))
    canvas = Image.new("RGB", (600, 450), (90, 110, 90))
    canvas.paste(face, (300, 200))
    buf = io.BytesIO()
    canvas.save(buf, "PNG")
    a = pool.analyze(buf.getvalue())
    assert a.faces_found == 1 and a.faces[0].box.w < 60


def test_min_face_and_largest_only(pool, lfw: Path) -> None:
    """A large face (~120 px) and a small one (~40 px) in a 500 px photo: the default finds both;
    ``min_face=80`` only the large one; ``largest`` (enrollment, verify) skips the small-face
    search when a large face is there, and still finds a lone small face."""
    canvas = Image.new("RGB", (500, 375), (90, 110, 90))
    canvas.paste(Image.open(lfw / "Colin_Powell" / "Colin_Powell_0001.jpg").resize((300, 300)), (0, 40))
    small = Image.open(lfw / "Tony_Blair" / "Tony_Blair_0001.jpg").resize((90, 90))
    canvas.paste(small, (360, 100))
    both = pool.analyze(png(canvas))
    assert both.faces_found == 2 and both.faces[0].box.w > 100 > 50 > both.faces[1].box.w
    for options in ({"min_face": 80}, {"largest": True}):
        one = pool.analyze(png(canvas), **options)
        assert one.faces_found == 1, options
        assert abs(one.faces[0].box.x - both.faces[0].box.x) < 15, options  # the same, large face
    lone = Image.new("RGB", (500, 375), (90, 110, 90))
    lone.paste(small, (200, 120))
    assert pool.analyze(png(lone), min_face=80).faces_found == 0
    found = pool.analyze(png(lone), largest=True)
    assert found.faces_found == 1 and found.faces[0].box.w < 50


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_bad_input_errors_cross_the_process_boundary(pool, lfw: Path) -> None:
    with pytest.raises(UnsupportedImage):
        pool.analyze(b"not an image")
    jpeg = read(lfw / "Colin_Powell" / "Colin_Powell_0001.jpg")
    with pytest.raises(InvalidImage):
        pool.analyze(jpeg[: len(jpeg) // 3])
    assert pool.analyze(jpeg).faces  # the worker is still fine


def test_model_runtime_and_libpq_never_share_a_process(pool, db_url: str, lfw: Path) -> None:
    """Rule 1: workers have no libpq; a process using the store and the pool loads no dlib."""
    reports = pool.process_reports()
    assert sorted(r["pid"] for r in reports) == sorted(pool.pids()) and len(reports) == pool.workers
    assert all(r["model_loaded"] and not r["libpq_loaded"] for r in reports)

    script = textwrap.dedent(f"""
        import sys
        from facesearch.inference import ModelPool, ModelSpec
        from facesearch.store import BlockingGallery
        if __name__ == "__main__":
            gallery = BlockingGallery({db_url!r})
            gallery.list_domains()
            with ModelPool(ModelSpec(), workers=1) as pool:
                assert pool.analyze(open({str(lfw / "Colin_Powell" / "Colin_Powell_0001.jpg")!r},
                                         "rb").read()).faces
            maps = open("/proc/self/maps").read()
            assert "libpq" in maps, "the parent should be the one talking to PostgreSQL"
            assert "dlib" not in sys.modules and "_dlib_pybind11" not in maps, "model runtime in parent"
            print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_cnn_detector_option(lfw: Path) -> None:
    """dlib's MMOD CNN detector (slow on CPU: seconds per photo) finds the same face."""
    from facesearch.inference import ModelPool, ModelSpec

    data = read(lfw / "Colin_Powell" / "Colin_Powell_0001.jpg")
    with ModelPool(ModelSpec(detector="cnn"), workers=1) as cnn:
        a = cnn.analyze(data)
    assert a.faces_found == 1
    box = a.faces[0].box
    assert 60 < box.x + box.w / 2 < 190 and a.faces[0].embedding.shape == (128,)


def test_batch_matches_single_photos_and_keeps_errors_in_place(pool, lfw: Path) -> None:
    photos = [read(p) for p in photos_of(lfw, "Colin_Powell")[:3]]
    batch = [*photos[:2], b"not a photo", two_faces(lfw), photos[2]]
    results = pool.result(pool.submit_batch(batch, max_pixels=10**8, max_faces=1))
    assert isinstance(results[2], UnsupportedImage)
    assert results[3].faces_found == 2 and len(results[3].faces) == 1
    for i in (0, 1, 4):
        single = pool.analyze(batch[i]).faces[0].embedding
        assert np.abs(results[i].faces[0].embedding - single).max() < 1e-5


def test_saved_hog_detector_is_dlibs_own(tmp_path: Path, lfw: Path) -> None:
    """Workers load the HOG detector from a saved copy (dlib builds it in ~0.9 s): same boxes and
    scores as dlib's, and a damaged copy is made again."""
    dlib = pytest.importorskip("dlib")
    from facesearch.models.dlib_resnet import frontal_face_detector

    images = [np.asarray(Image.open(io.BytesIO(two_faces(lfw))))]
    images += [np.asarray(Image.open(p).convert("RGB")) for p in sorted(lfw.glob("A*/*_0001.jpg"))[:12]]
    reference = dlib.get_frontal_face_detector()

    def found(detector) -> list:
        return [[(r.left(), r.top(), r.right(), r.bottom(), round(s, 6))
                 for r, s in zip(*detector.run(image, up, 0.0)[:2], strict=True)]
                for image in images for up in (0, 1)]

    expected = found(reference)
    assert sum(map(len, expected)) >= 20
    assert found(frontal_face_detector(tmp_path)) == expected  # made and saved
    [copy] = tmp_path.glob("*.svm")
    assert found(frontal_face_detector(tmp_path)) == expected  # loaded from the copy
    copy.write_bytes(b"damaged")
    assert found(frontal_face_detector(tmp_path)) == expected
    assert copy.stat().st_size > 1000 and not list(tmp_path.glob("*.tmp"))
