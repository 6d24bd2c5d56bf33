"""Turn uploaded bytes into an RGB pixel array, refusing anything that is not a sane photo.

Pure Pillow + NumPy (+ pillow-heif for HEIC): safe to import in any process (no model runtime, no
libpq). Photos are decoded in the model workers, where every upload of the CLI, the API and the
page is read.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageTooLarge, InvalidImage, UnsupportedImage

# Pillow's JPEG reader also opens MPO (JPEG with extra frames, as many cameras write). AVIF is
# Pillow's own (libavif in its wheels, Pillow >= 11.2); HEIF (HEIC, phones' default) comes from
# pillow-heif, registered at first use (its libraries are loaded only by a process that decodes).
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "AVIF", "HEIF")
SUPPORTED = "a JPEG, PNG, WebP, HEIC/HEIF, AVIF, BMP, TIFF or GIF photo"

_heif_registered = False
# ISO-BMFF brands of HEIF/HEIC and AVIF files (the "ftyp" box that opens them).
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif",
                b"avis"}


def _is_heif_container(data: bytes) -> bool:
    """An HEIF/AVIF file by its first box, even when too truncated for any decoder to open."""
    return data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS


def _register_heif() -> None:
    """Teach Pillow HEIF/HEIC. libheif applies the file's rotation and mirroring itself (and
    pillow-heif resets the EXIF orientation to match), so exif_transpose never turns it twice."""
    global _heif_registered
    if not _heif_registered:
        from pillow_heif import register_heif_opener

        register_heif_opener()
        _heif_registered = True

# Pillow's own bomb check is a warning up to 2x its limit; we check the header size ourselves, so
# silence it and keep its hard error as a second line of defence for sizes far beyond ours.
Image.MAX_IMAGE_PIXELS = 200_000_000


def decode_image(data: bytes, max_pixels: int = 40_000_000) -> np.ndarray:
    """Decode ``data`` into a ``(height, width, 3)`` uint8 RGB array.

    The format is detected from the bytes, never from a file name. EXIF orientation is applied;
    grayscale, palette, CMYK, alpha and 16-bit images become 8-bit RGB; GIFs give their first frame.
    Raises :class:`UnsupportedImage`, :class:`InvalidImage` or :class:`ImageTooLarge`.
    """
    if not data:
        raise UnsupportedImage(f"the file is empty: send {SUPPORTED}")
    _register_heif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        if _is_heif_container(data):  # a phone photo cut short: corrupt, not of an unknown kind
            raise InvalidImage("the HEIC/AVIF image is truncated or corrupt") from None
        raise UnsupportedImage(f"not a supported image: send {SUPPORTED}") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image refused as a decompression bomb: {exc}") from None
    except Exception as exc:  # Pillow raises many types for malformed headers
        raise InvalidImage(f"the image header is corrupt ({exc})") from None

    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidImage("the image has no pixels")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"the image is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the limit "
            f"of {max_pixels / 1e6:.0f}; resize it and try again"
        )
    try:
        img.seek(0)  # first frame of animations
        img.load()
        img = ImageOps.exif_transpose(img) or img
        return _to_rgb(img)
    except OSError as exc:
        raise InvalidImage(f"the image is truncated or corrupt ({exc})") from None
    except (ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImage(f"the image could not be decoded ({exc})") from None


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # High bit depth grayscale: scale to 8 bits by the format's range, not by clipping.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        gray = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels become white, as a viewer would show them.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, P
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


# Thumbnails: a small square crop around a face, stored with the face so a UI can show whose it is.
THUMBNAIL_SIZE = 112  # pixels, square
THUMBNAIL_MARGIN = 0.3  # of the face box's larger side, on each side: some hair and chin
THUMBNAIL_QUALITY = 80  # JPEG; ~3-4 KB at this size


def face_thumbnail(image: np.ndarray, x: int, y: int, w: int, h: int) -> bytes:
    """A ``THUMBNAIL_SIZE`` square JPEG of the face at box ``(x, y, w, h)`` of an RGB array, with a
    margin. The square is moved to stay inside the image where it fits, so a face at an edge
    is not cut by a black band; it shrinks only when the image itself is smaller."""
    height, width = image.shape[:2]
    side = round(max(w, h) * (1 + 2 * THUMBNAIL_MARGIN))
    side = max(1, min(side, width, height))
    cx, cy = x + w / 2, y + h / 2
    left = int(min(max(0, round(cx - side / 2)), width - side))
    top = int(min(max(0, round(cy - side / 2)), height - side))
    crop = Image.fromarray(image[top:top + side, left:left + side])
    if side != THUMBNAIL_SIZE:
        crop = crop.resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS,
                           reducing_gap=2.0 if side > 2 * THUMBNAIL_SIZE else None)
    buf = io.BytesIO()
    crop.save(buf, "JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return buf.getvalue()
