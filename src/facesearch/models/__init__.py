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
DLIB_MODEL = "dlib-resnet-v1"

# name -> embedding dimension. Known without loading anything, so the store can size its indexes
# in the API process.
MODEL_DIMS: dict[str, int] = {
    DLIB_MODEL: 128,
    **{DEEPFACE_PREFIX + name: dim for name, dim in DEEPFACE_DIMS.items() if name != "Dlib"},
}


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
    """Load a model by name. Call only in a worker process: this imports the model runtime."""
    model_dim(name)
    if name.startswith(DEEPFACE_PREFIX):
        # DeepFace on TensorFlow: only ever in a worker (TensorFlow and libpq must not share a
        # process, see deepface_model). The dlib detector finds the faces for every model.
        from .deepface_model import DeepFaceModel

        return DeepFaceModel(name, detector=detector, threads=threads)
    from .dlib_resnet import DlibResNet

    return DlibResNet(detector=detector, runtime=runtime, cache_dir=cache_dir, threads=threads)
