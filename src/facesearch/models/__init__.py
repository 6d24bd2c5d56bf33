"""Face models. Importing this package is cheap and loads no model runtime: the runtimes (dlib,
onnxruntime, TensorFlow) are imported by :func:`load_model`, which only the inference workers call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ModelError

if TYPE_CHECKING:
    from .base import FaceModel

# DeepFace's recognition models and the length of their embeddings, as DeepFace's own source
# declares them (serengil/deepface, deepface/models/facial_recognition/*.py, ``output_shape``).
# VGG-Face gave 2622 numbers before DeepFace moved to its 4096-d layer (early 2024, issue 944).
DEEPFACE_DIMS: dict[str, int] = {
    "VGG-Face": 4096, "Facenet": 128, "Facenet512": 512, "OpenFace": 128, "DeepFace": 4096,
    "DeepID": 160, "ArcFace": 512, "Dlib": 128, "SFace": 128, "GhostFaceNet": 512,
}
# DeepFace's "Dlib" is dlib's ResNet (face_recognition_model_v1), the network facesearch runs: its
# galleries import as our own model. Every other DeepFace model is "deepface:<Name>".
DEEPFACE_PREFIX = "deepface:"
DLIB_MODEL = "dlib-resnet-v1"  # dlib's HOG (or MMOD) detector, 5 landmarks, ResNet-34
SFACE_MODEL = "sface-2021dec"  # YuNet detector, SFace embedding (OpenCV Zoo)
FUSION_MODEL = "sface-dlib-v1"  # YuNet; SFace and dlib's ResNet, the two vectors concatenated
DEFAULT_MODEL = SFACE_MODEL

# name -> embedding dimension. Known without loading anything, so the store can size its indexes
# in the API process.
MODEL_DIMS: dict[str, int] = {
    SFACE_MODEL: 128,
    FUSION_MODEL: 256,
    DLIB_MODEL: 128,
    **{DEEPFACE_PREFIX + name: dim for name, dim in DEEPFACE_DIMS.items() if name != "Dlib"},
}


# name -> the default (recognize, verify) thresholds: cosine distances calibrated on LFW
# (bench/bench_models.py, docs/BENCHMARKS.md). recognize: the largest with at most 1 % of strangers
# matching someone in the open-set gallery of 1,680 people (one photo each), chosen on half the
# people, checked on the other half; verify: at most 0.1 % of different-person pairs under it.
# DeepFace's models have none of ours: DeepFace's own published thresholds stand in (README).
THRESHOLDS: dict[str, tuple[float, float]] = {
    DLIB_MODEL: (0.047, 0.074),
    SFACE_MODEL: (0.513, 0.64),
    FUSION_MODEL: (0.298, 0.374),
    **{DEEPFACE_PREFIX + name: (t, t) for name, t in {
        "ArcFace": 0.68, "Facenet512": 0.30, "Facenet": 0.40, "VGG-Face": 0.68, "SFace": 0.593,
        "GhostFaceNet": 0.65, "OpenFace": 0.10, "DeepFace": 0.23, "DeepID": 0.015}.items()},
}


def default_thresholds(name: str) -> tuple[float, float]:
    """``(recognize, verify)`` cosine-distance thresholds for model ``name``."""
    model_dim(name)
    return THRESHOLDS[name]


def model_dim(name: str) -> int:
    try:
        return MODEL_DIMS[name]
    except KeyError:
        known = ", ".join(sorted(MODEL_DIMS))
        raise ModelError(f"unknown model {name!r}; known models: {known}") from None


def check_model_files(name: str) -> None:
    """Raise ModelError, saying what to do, if ``name`` cannot load here without a download (its
    runtime or weights are missing). Cheap and imports no model runtime: the API process calls it
    before it starts, so a service that could never load its model does not start at all."""
    model_dim(name)
    if name.startswith(DEEPFACE_PREFIX):
        from .deepface_model import check_installed

        check_installed(name)


def load_model(name: str, *, detector: str = "hog", runtime: str = "onnx",
               cache_dir: str | None = None, threads: int = 1) -> FaceModel:
    """Load a model by name. Call only in a worker process: this imports the model runtime.
    ``detector`` and ``runtime`` apply to dlib's and DeepFace's pipelines, which find faces with
    dlib; the SFace pipelines always use YuNet."""
    model_dim(name)
    if name.startswith(DEEPFACE_PREFIX):
        # DeepFace on TensorFlow: only ever in a worker (TensorFlow and libpq must not share a
        # process, see deepface_model). The dlib detector finds the faces for every model.
        from .deepface_model import DeepFaceModel

        return DeepFaceModel(name, detector=detector, threads=threads)
    if name == DLIB_MODEL:
        from .dlib_resnet import DlibResNet

        return DlibResNet(detector=detector, runtime=runtime, cache_dir=cache_dir, threads=threads)

    from .base import Pipeline, cache_path
    from .sface import SFace
    from .yunet import YuNet

    cache = cache_path(cache_dir)
    sface = SFace(cache, threads=threads)
    if name == SFACE_MODEL:
        return Pipeline(YuNet(cache), sface)
    from .dlib_resnet import DlibResNetEmbedder
    from .fusion import Fusion

    # The lean fusion: one detector (YuNet) for both, dlib's landmarks found in YuNet's boxes.
    dlib_net = DlibResNetEmbedder(cache, runtime=runtime, threads=threads, own_landmarks=True)
    return Pipeline(YuNet(cache), Fusion(FUSION_MODEL, sface, dlib_net))
