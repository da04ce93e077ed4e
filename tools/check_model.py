"""Score an exported MNIST model with NumPy alone: test accuracy and non-zero count.

    python tools/check_model.py MODEL.npz [--data data/mnist] [--limit N]

Needs only Python 3 and NumPy (no JAX, no subspace_jax), so anyone can check
a claimed accuracy and parameter count.

File format (``subspace-jax-mnist/1``)
--------------------------------------
An ``.npz`` archive (``numpy.savez``; loads with ``allow_pickle=False``) with:

* ``arch``: a 0-d unicode array holding a JSON object::

    {"format": "subspace-jax-mnist/1", "name": "golf_prelu",
     "input": {"shape": [28, 28, 1], "layout": "HWC",
               "pixel_scale": 255.0, "mean": 0.1307, "std": 0.3081},
     "layers": [...], "dense_params": 820, "nonzero_params": 820}

  Input: raw uint8 pixels ``p`` become ``(p / pixel_scale - mean) / std``,
  float, shape ``H x W x C``. ``pixel_scale``, ``mean`` and ``std`` must be
  single numbers (``std`` and ``pixel_scale`` > 0): a per-pixel array would be
  an uncounted affine layer (28 x 28 means and stds: 1,568 hidden parameters). ``layers`` are applied in order:

  - ``{"kind": "conv", "name": "conv0", "kernel": k, "in": C, "out": O,
    "activation": "relu" | "prelu", "pool": true | false}``: a stride-1
    convolution without padding ("valid": ``H -> H - k + 1``), as
    cross-correlation ``y[h, w, o] = b[o] + sum_{i, j, c} x[h + i, w + j, c]
    * W[i, j, c, o]``; then the activation (prelu: ``y`` if ``y >= 0`` else
    ``slope[o] * y``); then, if ``pool``, 2x2 max-pooling with stride 2 that
    drops an odd last row/column (floor mode).
  - ``{"kind": "depthwise", "name": "dw1", "kernel": k, "channels": C}``: a
    stride-1 "valid" depthwise convolution, one k x k filter per channel,
    ``y[h, w, c] = b[c] + sum_{i, j} x[h + i, w + j, c] * W[i, j, c]``; no
    activation, no pooling. (A depthwise-separable conv is this layer followed
    by a ``conv`` layer with ``kernel`` 1.) ``"bias": false``: no ``b``
    (Keras' separable convs; the pointwise bias after it absorbs one).
  - Optional on ``conv`` and ``depthwise``: ``"padding": "same"`` zero-pads
    (after normalisation) ``(k - 1) // 2`` rows and columns before and
    ``k // 2`` after, so ``H`` stays ``H``; absent or ``"valid"``: no padding.
    Optional activation ``"leaky_relu"`` with a fixed ``"alpha"`` (a number in
    the layer, not a parameter): ``y`` if ``y >= 0`` else ``alpha * y``.
  - ``{"kind": "gap"}``: global average pooling, ``H x W x C`` to the vector
    of the ``C`` channel means over all positions.
  - ``{"kind": "flatten"}``: ``H x W x C`` to a vector in row-major order
    (channel fastest).
  - ``{"kind": "dense", "name": "dense0", "in": n, "out": m,
    "activation": "relu" | "none"}``: ``y = x @ W + b``, then the activation.
  - ``{"kind": "maxpool"}``: the 2x2 max-pooling above, as a layer of its own.
  - ``{"kind": "instance_norm", "name": "in0"}``: each image's values (all of
    ``H x W x C``, or the whole vector after ``gap``/``flatten``/``dense``)
    standardised by their own mean and standard deviation (with ``n - 1``),
    ``y = (x - mean) / (sd + 1e-5) * scale + shift``; ``scale`` and ``shift``
    are single learned numbers (2 parameters).

  Shared parameters: layers with the same ``name`` use the same arrays (the
  same kind and shapes); the arrays are stored once and counted once.

  The last layer's outputs are the 10 class logits; the prediction is their argmax.
  ``dense_params`` counts every stored value; ``nonzero_params`` the non-zero
  ones (biases and PReLU slopes included): the count a pruned model claims.
* One float32 array per parameter, named ``<layer name>/<param>``:
  ``conv*/w`` (``k x k x in x out``), ``conv*/b`` (``out``), ``conv*/slope``
  (``out``, prelu only), ``dw*/w`` (``k x k x channels``), ``dw*/b``
  (``channels``; absent with ``"bias": false``), ``dense*/w`` (``in x out``),
  ``dense*/b`` (``out``), ``in*/scale`` and ``in*/shift`` (``1``).
  (Parameters are found by the layer's ``name``; the prefixes are the
  convention of the files this repository writes.)

The checker recounts the non-zero parameters from the arrays (it does not
trust ``nonzero_params``) and reads the MNIST test IDX files itself (gzip
or plain), checking the SHA-256 of their uncompressed bytes against the
official files' (the same values as ``subspace_jax/data.py``; repeated here so
that this file needs nothing else). A bad model or data file is one line on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import struct
import sys
import zlib

import numpy as np

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "data", "mnist")
# SHA-256 of the uncompressed official MNIST test files (as subspace_jax/data.py).
TEST_SHA256 = {
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


def read_idx(directory: str, name: str) -> np.ndarray:
    """One IDX file (``name`` or ``name.gz``) as a uint8 array of its stated shape,
    after checking the SHA-256 of its uncompressed bytes (``TEST_SHA256``)."""
    path = os.path.join(directory, name)
    opener = open
    if not os.path.exists(path):
        path, opener = path + ".gz", gzip.open
    fix = (f"expected SHA-256 {TEST_SHA256.get(name)} of the uncompressed '{name}'; "
           f"copy the official '{name}.gz' into {directory} or pass --data")
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # missing, truncated or corrupt
        raise ValueError(f"{path}: cannot be read ({type(e).__name__}: {e}); {fix}") from None
    digest = hashlib.sha256(raw).hexdigest()
    if name in TEST_SHA256 and digest != TEST_SHA256[name]:
        raise ValueError(f"{path}: SHA-256 {digest} of its uncompressed bytes, so it is not "
                         f"the official file; {fix}")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, body has {body.size} bytes")
    return body.reshape(shape)


def load_test(directory: str) -> tuple[np.ndarray, np.ndarray]:
    """(images_Nx28x28 uint8, labels_N uint8) of the 10,000-image test split."""
    x = read_idx(directory, "t10k-images-idx3-ubyte")
    y = read_idx(directory, "t10k-labels-idx1-ubyte")
    if x.shape != (10_000, 28, 28) or y.shape != (10_000,):
        raise ValueError(f"unexpected test shapes {x.shape}, {y.shape}")
    return x, y


def load_model(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as f:
        return json.loads(str(f["arch"])), {k: f[k] for k in f.files if k != "arch"}


def conv_valid(x_NHWC, w_KKCO, b_O):
    k = w_KKCO.shape[0]
    # windows: N x H' x W' x C x k x k (a view, no copy)
    win = np.lib.stride_tricks.sliding_window_view(x_NHWC, (k, k), axis=(1, 2))
    return np.einsum("nhwcij,ijco->nhwo", win, w_KKCO, optimize=True) + b_O


def depthwise_valid(x_NHWC, w_KKC, b_C):
    k = w_KKC.shape[0]
    win = np.lib.stride_tricks.sliding_window_view(x_NHWC, (k, k), axis=(1, 2))
    return np.einsum("nhwcij,ijc->nhwc", win, w_KKC, optimize=True) + b_C


def pad(x_NHWC, layer: dict):
    """The layer's ``padding``: 'same' zero-pads (k - 1) // 2 before, k // 2 after."""
    mode = layer.get("padding", "valid")
    if mode == "valid":
        return x_NHWC
    if mode != "same":
        raise ValueError(f"unknown padding {mode!r}")
    k = int(layer["kernel"])
    return np.pad(x_NHWC, ((0, 0), ((k - 1) // 2, k // 2), ((k - 1) // 2, k // 2), (0, 0)))


def activate(h, layer: dict, p: dict):
    act, n = layer.get("activation", "none"), layer.get("name")
    if act == "prelu":
        return np.where(h >= 0, h, p[n + "/slope"] * h)
    if act == "leaky_relu":
        return np.where(h >= 0, h, float(layer["alpha"]) * h)
    if act == "relu":
        return np.maximum(h, 0)
    if act != "none":
        raise ValueError(f"unknown {layer['kind']} activation {act!r}")
    return h


def maxpool2(x_NHWC):
    n, h, w, c = x_NHWC.shape
    x = x_NHWC[:, :h // 2 * 2, :w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def forward(desc: dict, arrays: dict[str, np.ndarray], x_NHWC: np.ndarray) -> np.ndarray:
    """Logits N x 10 of normalised images (float64 throughout)."""
    h = x_NHWC.astype(np.float64)
    p = {k: v.astype(np.float64) for k, v in arrays.items()}
    for layer in desc["layers"]:
        kind = layer["kind"]
        if kind == "conv":
            n = layer["name"]
            h = activate(conv_valid(pad(h, layer), p[n + "/w"], p[n + "/b"]), layer, p)
            if layer["pool"]:
                h = maxpool2(h)
        elif kind == "depthwise":
            n = layer["name"]
            b = p[n + "/b"] if layer.get("bias", True) else 0.0
            h = depthwise_valid(pad(h, layer), p[n + "/w"], b)
        elif kind == "gap":
            h = h.mean(axis=(1, 2))
        elif kind == "maxpool":
            h = maxpool2(h)
        elif kind == "instance_norm":
            n, axes = layer["name"], tuple(range(1, h.ndim))
            mean = h.mean(axis=axes, keepdims=True)
            sd = h.std(axis=axes, keepdims=True, ddof=1)
            h = (h - mean) / (sd + 1e-5) * p[n + "/scale"] + p[n + "/shift"]
        elif kind == "flatten":
            h = h.reshape(h.shape[0], -1)
        elif kind == "dense":
            n = layer["name"]
            h = h @ p[n + "/w"] + p[n + "/b"]
            if layer["activation"] == "relu":
                h = np.maximum(h, 0)
            elif layer["activation"] != "none":
                raise ValueError(f"unknown dense activation {layer['activation']!r}")
        else:
            raise ValueError(f"unknown layer kind {kind!r}")
    return h


def check_input(desc: dict) -> None:
    """``pixel_scale``, ``mean`` and ``std`` are single numbers, the scales > 0."""
    inp = desc["input"]
    for key in ("pixel_scale", "mean", "std"):
        v = inp.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise ValueError(f"input.{key}={v!r}: must be one finite number (a per-pixel "
                             "array would be parameters the count does not see)")
        if key != "mean" and v <= 0:
            raise ValueError(f"input.{key}={v!r}: must be > 0")


def normalise(images_NxHxW: np.ndarray, desc: dict) -> np.ndarray:
    check_input(desc)
    inp = desc["input"]
    x = (images_NxHxW.astype(np.float64) / inp["pixel_scale"] - inp["mean"]) / inp["std"]
    return x.reshape(len(x), *inp["shape"]) if len(inp["shape"]) == 3 else x.reshape(len(x), -1)


def nonzero_count(arrays: dict[str, np.ndarray]) -> int:
    return int(sum(np.count_nonzero(v) for v in arrays.values()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="an exported .npz file")
    ap.add_argument("--data", default=DEFAULT_DATA, help="directory with the MNIST IDX files")
    ap.add_argument("--limit", type=int, default=0, help="score only the first N test images")
    ap.add_argument("--batch", type=int, default=1000, help="images per forward pass (memory)")
    args = ap.parse_args(argv)

    try:
        desc, arrays = load_model(args.model)
        check_input(desc)
        images, labels = load_test(args.data)
    except (ValueError, KeyError, OSError) as e:  # a bad file, not a bug here: one line
        print(f"check_model.py: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
    correct = 0
    for i in range(0, len(labels), args.batch):
        logits = forward(desc, arrays, normalise(images[i:i + args.batch], desc))
        correct += int((logits.argmax(-1) == labels[i:i + args.batch]).sum())
    nz = nonzero_count(arrays)
    dense = int(sum(v.size for v in arrays.values()))
    print(f"model: {desc.get('name') or args.model} ({desc.get('format')})")
    print(f"test accuracy: {100 * correct / len(labels):.2f}% ({correct}/{len(labels)})")
    print(f"non-zero parameters: {nz:,} (dense {dense:,})")
    if nz != desc.get("nonzero_params"):
        print(f"warning: file claims {desc.get('nonzero_params')} non-zero parameters",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
