"""Teacher logits for distillation, computed once and cached in the workdir.

``cached_logits(path, train_x, wd)`` scores the training images with an
exported model (``export.load_model``: any ``.npz`` this project writes, e.g.
a zoo CNN or a golf model) and keeps the N x K logits in
``WORKDIR/teachers/<teacher sha256[:16]>_<images sha256[:12]>.npy``: a
changed teacher file or other training images never reuse a stale cache.
``train.make_run`` distils from them when they are passed as
``Data.teacher_logits`` (``distill_alpha``, ``distill_temperature``).

The teacher sees the training images as they are (never the augmented
batches): with ``augment`` on, a warped image is matched to its original's
logits.
"""

from __future__ import annotations

import hashlib
import os

import jax
import numpy as np

from subspace_jax import export
from subspace_jax.errors import InputError


def file_hash(path: str) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def logits(path: str, x_NHWC, chunk: int = 1000) -> np.ndarray:
    """The teacher's logits of ``x`` (float32, N x K), in chunks."""
    model, params = export.load_model(path)
    apply = jax.jit(model.apply)
    x = np.asarray(x_NHWC, np.float32)
    return np.concatenate([np.asarray(apply(params, x[i:i + chunk]), np.float32)
                           for i in range(0, len(x), chunk)])


def cache_name(path: str, x_NHWC) -> str:
    images = hashlib.sha256(np.ascontiguousarray(x_NHWC, np.float32).tobytes()).hexdigest()
    return f"teachers/{file_hash(path)[:16]}_{images[:12]}.npy"


def cached_logits(path: str, x_NHWC, wd, num_classes: int | None = None) -> np.ndarray:
    """The teacher's logits of the training images, from ``wd``'s cache or
    computed once and saved there (``wd``: a ``workdir.Workdir``)."""
    if not os.path.isfile(path):
        raise InputError(f"teacher file {path!r} does not exist; valid: an exported .npz "
                         "model (export.export_model, checked by tools/check_model.py).")
    name = cache_name(path, x_NHWC)
    if os.path.exists(wd.file(name)):
        out = np.load(wd.file(name))
    else:
        try:
            out = logits(path, x_NHWC)
        except (KeyError, ValueError) as e:
            raise InputError(f"teacher file {path!r} is not a usable exported model: {e}") from None
        os.makedirs(os.path.dirname(wd.file(name)), exist_ok=True)
        wd.save_npy(name, out)
    if num_classes is not None and out.shape[1:] != (num_classes,):
        raise InputError(f"teacher file {path!r} gives {out.shape[1:]} logits per image; "
                         f"the data has {num_classes} classes.")
    return out
