"""Face models. Importing this package is cheap and loads no model runtime: the runtimes (dlib,
onnxruntime) are imported by :func:`load_model`, which only the inference workers call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ModelError

if TYPE_CHECKING:
    from .base import FaceModel

# name -> embedding dimension. Known without loading anything, so the store can size its indexes
# in the API process.
MODEL_DIMS: dict[str, int] = {"dlib-resnet-v1": 128}


def model_dim(name: str) -> int:
    try:
        return MODEL_DIMS[name]
    except KeyError:
        known = ", ".join(sorted(MODEL_DIMS))
        raise ModelError(f"unknown model {name!r}; known models: {known}") from None


def load_model(name: str, *, detector: str = "hog", runtime: str = "onnx",
               cache_dir: str | None = None, threads: int = 1) -> FaceModel:
    """Load a model by name. Call only in a worker process: this imports the model runtime."""
    model_dim(name)
    from .dlib_resnet import DlibResNet

    return DlibResNet(detector=detector, runtime=runtime, cache_dir=cache_dir, threads=threads)
