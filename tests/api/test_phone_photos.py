"""Phone photos: HEIC/HEIF (pillow-heif) and AVIF (Pillow's own), made at run time from LFW photos,
decoded with their orientation, in the decoder, the CLI and the API; cut-short ones refused like
any corrupt photo."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesearch.errors import InvalidImage
from facesearch.imaging import _register_heif, decode_image

from ..conftest import photos_of
from .conftest import assert_error

FORMATS = {"HEIF": ".heic", "AVIF": ".avif"}
PERSON = "Tony_Blair"


def encode(img: Image.Image, fmt: str, orientation: int | None = None) -> bytes:
    _register_heif()  # pillow-heif's encoder too
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, fmt, quality=90, exif=exif.tobytes())
    return buf.getvalue()


@pytest.fixture(scope="module")
def portrait(lfw: Path) -> Image.Image:
    return Image.open(photos_of(lfw, PERSON)[0]).convert("RGB")


def difference(a: np.ndarray, b: Image.Image) -> float:
    assert a.shape == (b.height, b.width, 3), a.shape
    return float(np.abs(a.astype(int) - np.asarray(b, dtype=int)).mean())


@pytest.mark.parametrize("fmt", FORMATS)
def test_decodes_upright(portrait: Image.Image, fmt: str) -> None:
    wide = portrait.crop((0, 40, 250, 200))  # not square, so a missed rotation shows in the shape
    assert difference(decode_image(encode(wide, fmt)), wide) < 6
    # Stored on its side as a phone held upright does, with EXIF orientation 6 (rotate 90° CW to
    # show): decoded upright, the same pixels as the original. (HEIF: pillow-heif writes it as the
    # container's rotation, which libheif applies; AVIF: the EXIF tag, which exif_transpose does.)
    sideways = wide.transpose(Image.Transpose.ROTATE_90)
    assert difference(decode_image(encode(sideways, fmt, orientation=6)), wide) < 6


@pytest.mark.parametrize("fmt", FORMATS)
def test_cut_short_or_damaged_is_invalid(portrait: Image.Image, fmt: str) -> None:
    data = encode(portrait, fmt)
    for cut in (60, len(data) // 2, len(data) - 8):
        with pytest.raises(InvalidImage, match=r"truncated|corrupt|decoded"):
            decode_image(data[:cut])


def test_cli_enrolls_and_recognizes_phone_photos(cli, lfw: Path, tmp_path: Path) -> None:
    photos = photos_of(lfw, PERSON)
    root = tmp_path / "people" / PERSON
    root.mkdir(parents=True)
    for i, (fmt, suffix) in enumerate([*FORMATS.items(), *FORMATS.items()]):
        (root / f"{i}{suffix}").write_bytes(encode(Image.open(photos[i]).convert("RGB"), fmt))
    out = json.loads(cli("enroll", tmp_path / "people", "--domain", "phones-cli", "--json").stdout)
    assert out["photos"] == 4 and out["enrolled"] == 4, out
    held_out = tmp_path / "held.avif"
    held_out.write_bytes(encode(Image.open(photos[5]).convert("RGB"), "AVIF", orientation=1))
    got = json.loads(cli("recognize", held_out, "--domain", "phones-cli", "--json").stdout)
    assert got["faces"][0]["matches"][0]["person"] == PERSON
    bad = tmp_path / "cut.heic"
    bad.write_bytes(encode(Image.open(photos[5]).convert("RGB"), "HEIF")[:500])
    proc = cli("recognize", bad, "--domain", "phones-cli", check=False)
    assert proc.returncode == 1 and "truncated or corrupt" in proc.stderr


def test_api_enroll_recognize_and_refuse(server, lfw: Path, portrait: Image.Image) -> None:
    photos = photos_of(lfw, PERSON)
    domain = "phones-api"
    assert server.admin.post("/v1/domains", json={"name": domain}).status_code == 201
    files = [("photo", (f"{i}{FORMATS[fmt]}", encode(Image.open(p).convert("RGB"), fmt), "image/heic"))
             for i, (p, fmt) in enumerate(zip(photos[:4], ["HEIF", "AVIF"] * 2, strict=True))]
    r = server.admin.post(f"/v1/domains/{domain}/enroll", data={"name": "Tony Blair"}, files=files,
                          params={"face": "largest"})
    assert r.status_code == 201 and r.json()["enrolled"] == 4, r.text
    # A sideways HEIC, as a phone writes it: found upright and recognized.
    sideways = Image.open(photos[5]).convert("RGB").transpose(Image.Transpose.ROTATE_90)
    r = server.admin.post(f"/v1/domains/{domain}/recognize",
                          files={"photo": ("p.heic", encode(sideways, "HEIF", 6), "image/heic")})
    assert r.status_code == 200, r.text
    assert r.json()["faces"][0]["matches"][0]["name"] == "Tony Blair"
    # Raw body, AVIF.
    r = server.admin.post("/v1/detect", content=encode(portrait, "AVIF"),
                          headers={"Content-Type": "image/avif"})
    assert r.status_code == 200 and r.json()["faces_found"] >= 1
    for fmt in FORMATS:
        cut = encode(portrait, fmt)[:300]
        r = server.admin.post(f"/v1/domains/{domain}/recognize",
                              files={"photo": ("cut" + FORMATS[fmt], cut, "image/heic")})
        assert "truncated or corrupt" in assert_error(r, 422, "invalid_image")["message"]
    assert server.admin.get("/healthz").status_code == 200
