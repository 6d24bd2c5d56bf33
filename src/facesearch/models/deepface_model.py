"""DeepFace's recognition models (``deepface:ArcFace`` etc.) on TensorFlow, in the model workers only.

Faces are found by facesearch's dlib detector (HOG or CNN, with its 5 landmarks); each face is cut
out upright (dlib's face chip: rotated so the eyes are level, as DeepFace's ``align=True`` does).
From there it is what ``DeepFace.represent(chip, detector_backend="skip")`` computes: DeepFace's
own resize and normalization, then DeepFace's network, the embeddings L2-normalized (float32, of
the length :data:`facesearch.models.MODEL_DIMS` gives). Keras networks run as one compiled
``tf.function`` (traced at load) instead of represent's eager call, ~3x faster for one face.

Why only in the workers: TensorFlow links its own BoringSSL, whose symbols clash with libpq's
OpenSSL; a process holding both dies with ``free(): invalid pointer`` on its first TLS database
connection (the crash of the system facesearch replaces). The API process talks to the database and
never imports this module's runtime: TensorFlow and DeepFace are imported in :class:`DeepFaceModel`'s
constructor, which only :func:`facesearch.models.load_model` calls, in a spawned worker.

Weights are never downloaded (these machines cannot, and a service should not fetch code-like files
at start-up): :func:`check_installed` looks for DeepFace's weights file first, without importing
anything heavy, so ``facesearch serve`` can refuse to start with a message naming the file.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from .base import Face, FaceModel, l2_normalize

PREFIX = "deepface:"

# DeepFace's TensorFlow weights file of each model, as DeepFace's own loaders name them
# (deepface 0.0.103, deepface/models/facial_recognition/tf/*.py and onnx/SFace.py). DeepFace looks
# for them in $DEEPFACE_HOME/.deepface/weights/ (DEEPFACE_HOME defaults to the home directory).
WEIGHTS: dict[str, str] = {
    "VGG-Face": "vgg_face_weights.h5",
    "Facenet": "facenet_weights.h5",
    "Facenet512": "facenet512_weights.h5",
    "OpenFace": "openface_weights.h5",
    "DeepFace": "VGGFace2_DeepFace_weights_val-0.9034.h5",
    "DeepID": "deepid_keras_weights.h5",
    "ArcFace": "arcface_weights.h5",
    "SFace": "face_recognition_sface_2021dec.onnx",
    "GhostFaceNet": "ghostfacenet_v1.h5",
}
# What DeepFace needs to run on TensorFlow >= 2.16, by import name (the ``deepface`` extra installs it).
RUNTIME_MODULES = ("deepface", "tensorflow", "tf_keras")
INSTALL_HINT = "pip install 'facesearch[deepface]'"
# DeepFace's crop around its detector's box is looser than dlib's tight HOG box; 0.25 (dlib's own
# chip padding) brings the eyes to about a third of the way down, as in a DeepFace crop.
CHIP_PADDING = 0.25


def deepface_name(model: str) -> str:
    """``deepface:ArcFace`` -> ``ArcFace``; ModelError for a model facesearch cannot run."""
    name = model.removeprefix(PREFIX)
    if name not in WEIGHTS:
        known = ", ".join(PREFIX + n for n in WEIGHTS)
        raise ModelError(f"facesearch cannot run {model}: the DeepFace models it runs are {known}")
    return name


def deepface_home() -> Path:
    """Where DeepFace keeps ``.deepface/weights``: $DEEPFACE_HOME, else the home directory (as
    deepface.commons.folder_utils.get_deepface_home)."""
    return Path(os.environ.get("DEEPFACE_HOME") or os.path.expanduser("~"))


def weights_path(model: str) -> Path:
    """The weights file DeepFace loads for ``model`` (``deepface:<Name>``)."""
    return deepface_home() / ".deepface" / "weights" / WEIGHTS[deepface_name(model)]


def check_installed(model: str) -> Path:
    """Make sure ``model`` can load without a download: DeepFace and TensorFlow are installed and
    the weights file is in place. Returns the weights file; raises ModelError saying what to do.

    Cheap and imports nothing heavy (no TensorFlow): the API process runs it before it starts."""
    missing = [m for m in RUNTIME_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelError(f"{model} needs DeepFace on TensorFlow, but {', '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} not installed: {INSTALL_HINT}")
    path = weights_path(model)
    if not path.is_file():
        env = os.environ.get("DEEPFACE_HOME")
        where = f"DEEPFACE_HOME={env}" if env else "DEEPFACE_HOME is unset, so the home directory"
        raise ModelError(
            f"{model} needs DeepFace's weights file {path.name}, expected at {path} ({where}). "
            "facesearch never downloads weights: copy the file there from a machine where DeepFace "
            f"has used {deepface_name(model)} (it keeps it in ~/.deepface/weights/), or set "
            "DEEPFACE_HOME to the folder that holds .deepface/weights/.")
    return path


class DeepFaceModel(FaceModel):
    """One of DeepFace's recognition models behind facesearch's dlib detector."""

    def __init__(self, model: str, *, detector: str = "hog", threads: int = 1) -> None:
        from . import MODEL_DIMS

        self.name = model
        self.dim = MODEL_DIMS[model]
        self._deepface_name = deepface_name(model)
        check_installed(model)  # before DeepFace could try to download the file
        # TensorFlow is DeepFace's engine here: the weights checked above are its TensorFlow files.
        os.environ["DEEPFACE_BACKEND_ENGINE"] = "tensorflow"
        os.environ["TF_USE_LEGACY_KERAS"] = "1"  # DeepFace's networks are tf-keras (Keras 2) ones
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no CUDA-probing lines in the log
        import tensorflow as tf

        # Several workers share the cores: keep TensorFlow's thread pools to this worker's share
        # (possible only before TensorFlow runs its first operation; a worker loads one model).
        with contextlib.suppress(RuntimeError):  # TensorFlow already running in this process
            tf.config.threading.set_intra_op_parallelism_threads(max(1, threads))
            tf.config.threading.set_inter_op_parallelism_threads(1)
        from deepface import DeepFace

        try:
            client = DeepFace.build_model(self._deepface_name, task="facial_recognition")
        except Exception as exc:  # e.g. a truncated or foreign weights file
            raise ModelError(f"{model}: DeepFace could not load {weights_path(model)}: "
                             f"{' '.join(str(exc).split())}") from exc
        if client.output_shape != self.dim:
            raise ModelError(f"{model}: DeepFace's model gives {client.output_shape} numbers, "
                             f"facesearch expects {self.dim}")
        # represent() resizes to (input_shape[1], input_shape[0]) rows x columns ("thanks to
        # DeepID", whose input is not square); a square chip is padded to that by DeepFace.
        self._rows, self._cols = client.input_shape[1], client.input_shape[0]
        self._chip_size = max(self._rows, self._cols)
        self._forward = _compiled(client, tf, self._rows, self._cols)
        # Detection is exactly the dlib model's (same faces, boxes and landmarks for every model);
        # its small recognition network is loaded too, unused (~20 MB, 0.2 s) but simpler than a
        # second detector class to keep in step.
        from .dlib_resnet import DlibResNet

        self._dlib = DlibResNet(detector=detector, runtime="dlib")

    def detect(self, image: np.ndarray, **options: Any) -> list[Face]:
        """The dlib model's detection (``options``: see :meth:`FaceModel.detect`)."""
        return self._dlib.detect(image, **options)

    def detect_batch(self, images: list[np.ndarray], **options: Any) -> list[tuple[list[Face], int]]:
        return self._dlib.detect_batch(images, **options)

    def embed(self, image: np.ndarray, faces: list[Face]) -> None:
        self.embed_batch([(image, faces)])

    def embed_batch(self, items: list[tuple[np.ndarray, list[Face]]]) -> None:
        """One network call (one batch) for the faces of all ``items``."""
        from deepface.modules.preprocessing import normalize_input, resize_image

        chips, faces = self._chips(items)
        if not faces:
            return
        # As represent() prepares each face: BGR, resized and padded to the input, scaled to [0, 1]
        # (resize_image), then the model's normalization ("base", DeepFace's default: none).
        batch = np.concatenate([normalize_input(resize_image(chip[:, :, ::-1], (self._rows, self._cols)),
                                                normalization="base") for chip in chips])
        vectors = self._forward(batch.astype(np.float32))
        for face, vector in zip(faces, l2_normalize(vectors), strict=True):
            face.embedding = vector

    def _chips(self, items: list[tuple[np.ndarray, list[Face]]]) -> tuple[list[np.ndarray], list[Face]]:
        """Each face cut out upright and square (eyes level), at the model's input size."""
        from .dlib_resnet import face_chips

        return face_chips(items, self._chip_size, CHIP_PADDING)


def _compiled(client: Any, tf: Any, rows: int, cols: int) -> Callable[[np.ndarray], np.ndarray]:
    """DeepFace's network as a function of a float32 ``(n, rows, cols, 3)`` batch -> ``(n, dim)``.

    A Keras network is wrapped in one ``tf.function`` for every batch size and traced now, so no
    request pays the tracing; other networks (SFace runs on OpenCV/ONNX) use DeepFace's forward."""
    import tf_keras

    model = client.model
    if not isinstance(model, tf_keras.Model):
        return lambda batch: np.asarray(client.forward(batch), dtype=np.float32).reshape(len(batch), -1)
    spec = tf.TensorSpec([None, rows, cols, 3], tf.float32)
    run = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    run(np.zeros((1, rows, cols, 3), np.float32))
    return lambda batch: np.asarray(run(batch), dtype=np.float32)
