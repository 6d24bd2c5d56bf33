"""Make ``facesearch doctor``'s check photo: a face drawn by this script, and its reference embedding.

The photo is drawn with Pillow (hair, face, ears, brows, eyes, nose, mouth as shapes, blurred, then
scaled down), so it is nobody and the project made it; dlib's HOG and CNN detectors both find it.
It is saved as PNG: a lossless format decodes to the same pixels with any libpng, so the detector,
the landmarks and hence the embedding are reproducible (a JPEG decoder may differ by a level here
and there, enough to move a landmark).

The reference embeddings (one per detector: the landmarks start from the detector's box) are
computed with dlib's own ResNet (``runtime="dlib"``); doctor compares the workers' embedding, ONNX
by default, with them.

    python -m bench.make_check_face
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from facesearch.imaging import decode_image
from facesearch.models import FUSION_MODEL, SFACE_MODEL, load_model
from facesearch.models.dlib_resnet import DlibResNet

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "src" / "facesearch" / "data"
SIZE = 200  # px: small, and the face (~110 px) well over HOG's 80 px window


def drawn_face(size: int = SIZE) -> Image.Image:
    """A plain frontal face: flat shapes at 4x, blurred and scaled down to soften the edges."""
    s = 4 * size
    c = s / 2
    img = Image.new("RGB", (s, s), (120, 120, 125))
    draw = ImageDraw.Draw(img)

    def oval(cx: float, cy: float, rx: float, ry: float, fill: tuple[int, int, int]) -> None:
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)

    oval(c, c * 0.62, s * 0.30, s * 0.22, (60, 45, 35))  # hair
    oval(c, c * 1.02, s * 0.27, s * 0.34, (205, 160, 130))  # face
    for side in (-1, 1):
        oval(c + side * s * 0.27, c * 1.02, s * 0.04, s * 0.07, (195, 150, 120))  # ear
        x, y = c + side * s * 0.11, c * 0.92
        draw.rectangle([x - s * 0.07, y - s * 0.065, x + s * 0.07, y - s * 0.05], fill=(70, 50, 40))
        oval(x, y, s * 0.055, s * 0.025, (245, 245, 245))  # eye
        oval(x, y, s * 0.022, s * 0.022, (60, 40, 30))  # iris
    draw.polygon([(c, c * 0.95), (c - s * 0.04, c * 1.18), (c + s * 0.04, c * 1.18)],
                 fill=(185, 140, 110))  # nose
    oval(c, c * 1.19, s * 0.045, s * 0.015, (160, 110, 90))
    draw.chord([c - s * 0.09, c * 1.26, c + s * 0.09, c * 1.38], 0, 180, fill=(170, 80, 80))  # mouth
    return img.filter(ImageFilter.GaussianBlur(s / 100)).resize((size, size), Image.Resampling.LANCZOS)


def main() -> None:
    buf = io.BytesIO()
    drawn_face().save(buf, "PNG", optimize=True)
    png = buf.getvalue()
    image = decode_image(png)  # exactly what a worker will see

    reference: dict[str, object] = {
        "model": DlibResNet.name, "runtime": "dlib",
        "made_by": "bench/make_check_face.py", "faces": {}}
    for detector in ("hog", "cnn"):
        faces = {}
        for runtime in ("dlib", "onnx"):
            model = DlibResNet(detector=detector, runtime=runtime)
            found = model.detect(image)
            if len(found) != 1:
                raise SystemExit(f"{detector}: {len(found)} faces found in the drawn face, not 1")
            model.embed(image, found)
            faces[runtime] = found[0]
        ref, onnx = faces["dlib"], faces["onnx"]
        diff = float(np.max(np.abs(ref.embedding - onnx.embedding)))
        print(f"{detector}: box {ref.box}, score {ref.score:.2f}; onnx differs from dlib by {diff:.1e}")
        reference["faces"][detector] = {  # type: ignore[index]
            "box": ref.box.as_dict(),
            "embedding": [round(float(x), 7) for x in ref.embedding]}

    # The YuNet pipelines, whose embeddings the doctor compares the same way.
    reference["pipelines"] = {}
    cache = Path(tempfile.gettempdir()) / "facesearch-check-face"
    for name in (SFACE_MODEL, FUSION_MODEL):
        model = load_model(name, cache_dir=str(cache))
        found = model.detect(image)
        if len(found) != 1:
            raise SystemExit(f"{name}: {len(found)} faces found in the drawn face, not 1")
        model.embed(image, found)
        print(f"{name}: box {found[0].box}, score {found[0].score:.2f}")
        reference["pipelines"][name] = {  # type: ignore[index]
            "detector": "yunet", "box": found[0].box.as_dict(),
            "embedding": [round(float(x), 7) for x in found[0].embedding]}

    DATA.mkdir(exist_ok=True)
    (DATA / "check-face.png").write_bytes(png)
    (DATA / "check-face.json").write_text(json.dumps(reference, indent=1) + "\n")
    print(f"wrote {DATA / 'check-face.png'} ({len(png):,} bytes) and check-face.json")


if __name__ == "__main__":
    main()
