"""Image datasets as NumPy arrays, verified, with a validation split carved from train.

Sources:
  * ``idx``: MNIST from a directory with the four standard IDX files (``.gz``
    or not), checked by SHA-256. Default: ``data/mnist`` shipped here.
  * ``tfds``: any ``tensorflow_datasets`` image classification dataset
    (``data.name``: ``mnist``, ``fashion_mnist``, ``kmnist``, ``cifar10``, ...)
    prepared in ``data_dir`` in the ``array_record`` format, read through
    ``tfds.data_source`` (no TensorFlow needed). Prepare once, with network:
    ``tfds build NAME --data_dir=DIR --file_format=array_record``.
  * ``synthetic``: a tiny, learnable MNIST-shaped stand-in for tests
    (class-dependent blobs plus noise); no files needed.

Images come back as float32 ``N x H x W x C``, standardised per channel: with
the usual MNIST mean/std for MNIST (and the synthetic stand-in), otherwise
with the mean/std of the training images the run trains on (validation and
test excluded). Labels are int32. ``Dataset.input_shape`` and
``num_classes`` are what models are built for. The validation split is the
*last* ``val_size`` training images (deterministic, independent of any
seed); the test split is never used for a decision.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import struct
import zlib

import numpy as np

from subspace_jax.errors import InputError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DIR = os.path.join(REPO_ROOT, "data", "mnist")

# SHA-256 of the *uncompressed* official files.
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MEAN, STD = 0.1307, 0.3081
MNIST_SHAPE, MNIST_CLASSES = (28, 28, 1), 10  # one image (H x W x C) and the label count
SOURCES = ("idx", "tfds", "synthetic")


class DataError(InputError):
    """Raised for missing, truncated or altered data files and bad options."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    train_x: np.ndarray  # N x H x W x C float32
    train_y: np.ndarray  # N int32 (possibly with random labels)
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int = MNIST_CLASSES
    name: str = "mnist"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.train_x.shape[1:])

    def summary(self) -> str:
        return (f"{self.name} {'x'.join(map(str, self.input_shape))}, {self.num_classes} "
                f"classes: train {len(self.train_y)}, val {len(self.val_y)}, "
                f"test {len(self.test_y)}")


# ---------------------------------------------------------------- IDX files
def _fix(directory: str, name: str) -> str:
    return (f"expected SHA-256 {SHA256[name]} of the uncompressed '{name}'; fix: copy the "
            f"official '{name}.gz' into {directory} (the repository ships them in "
            f"{DEFAULT_DIR}), or pass --config.data.source=tfds.")


def _path(directory: str, name: str) -> str:
    if not os.path.isdir(directory):
        raise DataError(f"data.data_dir={directory!r}: no such directory; valid: a directory "
                        f"with the four MNIST IDX files, or '' for the shipped {DEFAULT_DIR}.")
    candidates = [os.path.join(directory, name + ext) for ext in (".gz", "")]
    path = next((p for p in candidates if os.path.exists(p)), None)
    if path is None:
        raise DataError(f"MNIST file missing: {candidates[0]} (or {candidates[1]}); "
                        + _fix(directory, name))
    return path


def _read_verified(directory: str, name: str) -> bytes:
    path = _path(directory, name)
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # truncated or corrupt gzip, unreadable
        # `from None`: the message says it all; a chained traceback would only repeat it.
        raise DataError(f"MNIST file {path} cannot be read ({type(e).__name__}: {e}), "
                        "so it is truncated or corrupt; " + _fix(directory, name)) from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHA256[name]:
        raise DataError(f"MNIST file {path} has SHA-256 {digest} of its uncompressed bytes: "
                        "the file is truncated or altered; " + _fix(directory, name))
    return raw


def _parse_idx(raw: bytes) -> np.ndarray:
    ndim = raw[3]
    shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _load_idx(directory: str):
    arrays = {n: _parse_idx(_read_verified(directory, n)) for n in SHA256}
    return (arrays["train-images-idx3-ubyte"][..., None], arrays["train-labels-idx1-ubyte"],
            arrays["t10k-images-idx3-ubyte"][..., None], arrays["t10k-labels-idx1-ubyte"])


def _prepare_hint(name: str, data_dir: str) -> str:
    where = data_dir or "~/tensorflow_datasets"
    return (f"fix: prepare it once, with network: tfds build {name} --data_dir={where} "
            "--file_format=array_record (or use data.source=idx, the shipped MNIST)")


def _tfds_builder(name: str, data_dir: str):
    """The tfds builder of ``name`` (no download), checked to be image + label."""
    import tensorflow_datasets as tfds  # heavy import, only when asked for
    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except Exception as e:  # noqa: BLE001 - tfds raises several kinds for an unknown name
        raise DataError(f"data.name={name!r} is not a tfds dataset ({type(e).__name__}); valid: "
                        "an image classification dataset of tfds, e.g. mnist, fashion_mnist, "
                        "kmnist, cifar10") from None
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise DataError(f"data.name={name!r}: tfds dataset without 'image' and 'label' features "
                        f"(it has {', '.join(features)}); valid: an image classification dataset")
    return builder


def _load_tfds(name: str, data_dir: str):
    import tensorflow_datasets as tfds
    builder = _tfds_builder(name, data_dir)

    def split(part):
        try:  # download=False: never start a download (or a half-prepared directory) here
            ds = tfds.data_source(name, split=part, data_dir=data_dir or None, download=False)
        except Exception as e:  # noqa: BLE001 - tfds raises several kinds for "not prepared"
            why = ("is not prepared" if not builder.is_prepared() else
                   f"cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:160]})")
            raise DataError(f"data.source='tfds': {name} split {part!r} {why} in "
                            f"data.data_dir={data_dir!r}; " + _prepare_hint(name, data_dir)) from None
        examples = [ds[i] for i in range(len(ds))]
        x = np.stack([np.asarray(e["image"]) for e in examples])
        if x.ndim == 3:  # grayscale stored without a channel axis
            x = x[..., None]
        y = np.asarray([e["label"] for e in examples])
        return x.astype(np.uint8), y.astype(np.int64)

    return (*split("train"), *split("test"), int(builder.info.features["label"].num_classes))


def _load_synthetic(n_train: int, n_test: int, seed: int = 0):
    """Ten fixed random prototypes plus noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    protos = rng.uniform(0, 255, size=(10, 28, 28))

    def make(n):
        y = rng.integers(0, 10, size=n)
        x = 0.6 * protos[y] + rng.uniform(0, 0.4 * 255, size=(n, 28, 28))
        return x.astype(np.uint8)[..., None], y.astype(np.uint8)

    return (*make(n_train), *make(n_test))


# ---------------------------------------------------------------- public API
def load(source: str = "idx", data_dir: str = "", val_size: int = 10_000,
         random_label_fraction: float = 0.0, permute_pixels: bool = False,
         seed: int = 0, synthetic_size: int = 512, train_size: int = 0,
         name: str = "mnist") -> Dataset:
    """Loads a dataset and carves the validation split.

    Args:
      source: one of ``SOURCES``.
      data_dir: directory for ``idx`` (default: the shipped ``data/mnist``) or
        the tfds ``data_dir``.
      name: the tfds dataset (``source='tfds'``); ``mnist`` for the others.
      val_size: the last ``val_size`` training images form the validation set.
      random_label_fraction: fraction of *training* labels replaced by uniformly
        random labels (fixed by ``seed``); validation and test keep true labels.
      permute_pixels: apply one fixed random pixel permutation (fixed by
        ``seed``) to every split.
      seed: seed of the label noise and the permutation only.
      synthetic_size: training-set size of the synthetic source.
      train_size: keep only the first ``train_size`` training images (0 = all),
        for quick runs; the validation split is unchanged.
    """
    _check_source(source, name)
    num_classes = MNIST_CLASSES
    if source == "idx":
        tx, ty, sx, sy = _load_idx(data_dir or DEFAULT_DIR)
    elif source == "tfds":
        tx, ty, sx, sy, num_classes = _load_tfds(name, data_dir)
    else:
        _check_options(synthetic_size, val_size, random_label_fraction, train_size)
        tx, ty, sx, sy = _load_synthetic(synthetic_size, max(64, synthetic_size // 4))
    _check_options(len(ty), val_size, random_label_fraction, train_size)

    rng = np.random.default_rng(seed)
    if permute_pixels:  # one permutation of pixel positions; channels move together
        n, h, w, c = tx.shape
        perm = rng.permutation(h * w)
        tx = tx.reshape(n, h * w, c)[:, perm].reshape(tx.shape)
        sx = sx.reshape(len(sx), h * w, c)[:, perm].reshape(sx.shape)
    n_train = len(ty) - val_size
    if train_size:
        tx = np.concatenate([tx[:min(train_size, n_train)], tx[n_train:]])
        ty = np.concatenate([ty[:min(train_size, n_train)], ty[n_train:]])
        n_train = min(train_size, n_train)
    train_y = ty[:n_train].astype(np.int32)
    if random_label_fraction > 0:
        noisy = rng.random(n_train) < random_label_fraction
        train_y = np.where(noisy, rng.integers(0, num_classes, n_train), train_y).astype(np.int32)
    if name == "mnist":
        mean, std = np.float32([MEAN]), np.float32([STD])
    else:  # per channel, from the images trained on only
        pixels = tx[:n_train].reshape(-1, tx.shape[-1]).astype(np.float64) / 255.0
        mean, std = pixels.mean(0).astype(np.float32), pixels.std(0).astype(np.float32)
        std = np.where(std > 0, std, np.float32(1.0))

    def norm(x):
        return (x.astype(np.float32) / 255.0 - mean) / std

    return Dataset(
        train_x=norm(tx[:n_train]), train_y=train_y,
        val_x=norm(tx[n_train:]), val_y=ty[n_train:].astype(np.int32),
        test_x=norm(sx), test_y=sy.astype(np.int32), num_classes=num_classes, name=name)


def _check_source(source: str, name: str = "mnist") -> None:
    if source not in SOURCES:
        raise DataError(f"Unknown data source {source!r} (config field data.source); "
                        f"valid: {', '.join(SOURCES)}.")
    if source != "tfds" and name != "mnist":
        raise DataError(f"data.name={name!r} needs data.source='tfds' (data.source={source!r} "
                        "is MNIST only); valid: data.name='mnist', or data.source=tfds")


def _check_options(n_total: int, val_size: int, random_label_fraction: float,
                   train_size: int) -> None:
    """Options against ``n_total`` training images (before the validation split)."""
    if n_total < 2:
        raise DataError(f"{n_total} training images (data.synthetic_size for the synthetic "
                        "source): need at least 2, one to train on and one to validate.")
    if not 0 <= val_size < n_total:
        raise DataError(f"data.val_size={val_size} must be in [0, {n_total - 1}] "
                        f"for {n_total} training images.")
    if not 0.0 <= random_label_fraction <= 1.0:  # also rejects NaN
        raise DataError(f"data.random_label_fraction={random_label_fraction} "
                        "must be in [0, 1].")
    if train_size < 0:
        raise DataError(f"data.train_size={train_size} must be >= 0 (0 = all).")


def spec(cfg) -> tuple[tuple[int, ...], int]:
    """``(input_shape, num_classes)`` of the data ``cfg`` names, without loading
    it (a tfds dataset's from its builder's info): what to build models for
    while validating a config."""
    name = cfg.get("name", "mnist")
    _check_source(cfg.source, name)
    if cfg.source != "tfds":
        return MNIST_SHAPE, MNIST_CLASSES
    features = _tfds_builder(name, cfg.data_dir).info.features
    shape = tuple(int(d) for d in features["image"].shape)
    return (shape if len(shape) == 3 else (*shape, 1)), int(features["label"].num_classes)


def from_config(cfg) -> Dataset:
    """``cfg`` is the ``data`` sub-config of an experiment."""
    return load(source=cfg.source, data_dir=cfg.data_dir, val_size=cfg.val_size,
                random_label_fraction=cfg.random_label_fraction,
                permute_pixels=cfg.permute_pixels, seed=cfg.seed,
                synthetic_size=cfg.synthetic_size, train_size=cfg.train_size,
                name=cfg.get("name", "mnist"))


def check(cfg) -> None:
    """Raises ``DataError`` for what ``from_config(cfg)`` would reject, without
    building the dataset: options, and for ``idx`` every file's presence and
    SHA-256 (about 1 s: the files are decompressed and hashed). For ``tfds``:
    the name and its features (whether it is prepared, and its sizes, are
    checked when it loads, still before the workdir is written)."""
    name = cfg.get("name", "mnist")
    _check_source(cfg.source, name)
    if cfg.source == "tfds":
        _check_options(2, 0, cfg.random_label_fraction, cfg.train_size)
        _tfds_builder(name, cfg.data_dir)
        return
    if cfg.source == "idx":
        directory = cfg.data_dir or DEFAULT_DIR
        raw = {n: _read_verified(directory, n) for n in SHA256}
        n_total = len(raw["train-labels-idx1-ubyte"]) - 8  # IDX1 header: magic, count
    else:
        n_total = cfg.synthetic_size
    _check_options(n_total, cfg.val_size, cfg.random_label_fraction, cfg.train_size)
