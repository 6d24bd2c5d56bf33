"""Decoding: every supported format, orientation and mode; every kind of bad input refused."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesearch.errors import ImageTooLarge, InvalidImage, UnsupportedImage
from facesearch.imaging import THUMBNAIL_MARGIN, THUMBNAIL_SIZE, decode_image, face_thumbnail


@pytest.fixture(scope="module")
def photo(lfw: Path) -> Image.Image:
    return Image.open(lfw / "George_W_Bush" / "George_W_Bush_0001.jpg").convert("RGB")


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_formats_decode_to_rgb(photo: Image.Image, fmt: str) -> None:
    arr = decode_image(encode(photo, fmt))
    assert arr.shape == (250, 250, 3) and arr.dtype == np.uint8
    # Lossy formats differ a little; a wrong channel order or a blank image would differ a lot.
    assert np.abs(arr.astype(int) - np.asarray(photo, dtype=int)).mean() < 12


def test_exif_orientation_is_applied(photo: Image.Image) -> None:
    wide = photo.crop((0, 0, 250, 120))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    arr = decode_image(encode(wide, "JPEG", exif=exif.tobytes()))
    assert arr.shape == (250, 120, 3)


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "LA", "1"])
def test_modes_become_rgb(photo: Image.Image, mode: str) -> None:
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    arr = decode_image(encode(photo.convert(mode), fmt))
    assert arr.shape == (250, 250, 3)
    assert arr.std() > 10  # still a photo, not a blank


def test_sixteen_bit_grayscale_is_scaled_not_clipped(photo: Image.Image) -> None:
    gray = np.asarray(photo.convert("L"), dtype=np.uint16) * 257
    arr = decode_image(encode(Image.fromarray(gray), "PNG"))
    assert np.abs(arr[:, :, 0].astype(int) - np.asarray(photo.convert("L"), dtype=int)).max() <= 1


def test_gif_gives_its_first_frame(photo: Image.Image) -> None:
    frames = [photo, Image.new("RGB", photo.size, (255, 0, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    arr = decode_image(buf.getvalue())
    assert arr[:, :, 0].mean() < 200  # not the red frame


def test_format_comes_from_bytes_not_name(photo: Image.Image, tmp_path: Path) -> None:
    path = tmp_path / "really_a_png.jpg"
    path.write_bytes(encode(photo, "PNG"))
    assert decode_image(path.read_bytes()).shape == (250, 250, 3)


@pytest.mark.parametrize("data, error", [
    (b"", UnsupportedImage),
    (b"hello, this is text pretending to be a photo\n" * 20, UnsupportedImage),
    (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", UnsupportedImage),
])
def test_not_an_image(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error, match="JPEG, PNG"):
        decode_image(data)


def test_truncated_jpeg(photo: Image.Image) -> None:
    data = encode(photo, "JPEG")
    with pytest.raises(InvalidImage, match=r"truncated|corrupt"):
        decode_image(data[: len(data) // 2])


def test_pixel_limit(photo: Image.Image) -> None:
    big = photo.resize((2000, 1000))
    with pytest.raises(ImageTooLarge, match=r"2\.0 megapixels, over the limit of 1"):
        decode_image(encode(big, "JPEG"), max_pixels=1_000_000)


def test_decompression_bomb_refused_before_decoding() -> None:
    # 400 MP of one colour compresses to a few hundred kB: refused from the header alone.
    bomb = encode(Image.new("1", (20_000, 20_000)), "PNG")
    assert len(bomb) < 2_000_000
    with pytest.raises(ImageTooLarge):
        decode_image(bomb)


@pytest.mark.parametrize(("size", "box"), [
    ((250, 250), (67, 80, 109, 108)),  # a centred face
    ((250, 250), (-20, -10, 90, 100)),  # over the top-left corner
    ((640, 200), (560, 120, 120, 120)),  # over the bottom-right edge, in a wide image
    ((60, 40), (5, 5, 50, 50)),  # an image smaller than the thumbnail
])
def test_face_thumbnail_is_a_small_square_jpeg(size: tuple[int, int], box: tuple[int, int, int, int]) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    data = face_thumbnail(image, *box)
    thumb = Image.open(io.BytesIO(data))
    assert thumb.format == "JPEG" and thumb.size == (THUMBNAIL_SIZE, THUMBNAIL_SIZE)


def test_face_thumbnail_shows_the_face(photo: Image.Image) -> None:
    """The crop is centred on the box, with a margin: its middle is the box's middle."""
    image = np.asarray(photo)
    x, y, w, h = 67, 80, 109, 108
    thumb = np.asarray(Image.open(io.BytesIO(face_thumbnail(image, x, y, w, h))), dtype=float)
    side = round(max(w, h) * (1 + 2 * THUMBNAIL_MARGIN))
    left, top = round(x + w / 2 - side / 2), round(y + h / 2 - side / 2)
    expected = photo.crop((left, top, left + side, top + side)).resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    assert np.abs(thumb - np.asarray(expected, dtype=float)).mean() < 6  # JPEG's loss only
    assert len(face_thumbnail(image, x, y, w, h)) < 6000
