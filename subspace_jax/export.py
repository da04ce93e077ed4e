"""Export a trained model to one framework-free ``.npz`` file.

The file holds every parameter array under its path name (``conv0/w``,
``conv0/b``, ``conv0/slope``, ``dw1/w`` of a depthwise conv, ``dense0/w``,
...) and one extra entry, ``arch``:
a 0-d unicode array with a JSON description of the network. The format is
documented in ``tools/check_model.py``, which scores such a file with NumPy
alone.

    export_model("golf.npz", "golf_prelu", params)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from subspace_jax import data, models

FORMAT = "subspace-jax-mnist/1"


def count_params(params) -> tuple[int, int]:
    """(dense, non-zero) parameter counts; biases and PReLU slopes count too."""
    leaves = [np.asarray(x) for x in jax.tree.leaves(params)]
    return (int(sum(x.size for x in leaves)), int(sum(np.count_nonzero(x) for x in leaves)))


def flat_arrays(params) -> dict[str, np.ndarray]:
    """``{"conv0/w": array, ...}`` from the nested params dict (float32)."""
    return {f"{layer}/{name}": np.asarray(v, np.float32)
            for layer, group in params.items() for name, v in group.items()}


def _expected_shapes(arch: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    # One definition for the exporter, the loader and the counts: conv (and
    # its prelu slope), depthwise, dense; flatten and gap hold no parameters.
    return models.param_shapes(arch)


def describe(arch: Mapping[str, Any], params, name: str = "") -> dict:
    """The JSON-able ``arch`` entry: layers, input and normalisation, counts."""
    dense, nonzero = count_params(params)
    return {"format": FORMAT, "name": name,
            "input": {"shape": list(arch["input_shape"]), "layout": "HWC",
                      "pixel_scale": 255.0, "mean": data.MEAN, "std": data.STD},
            "layers": [dict(layer) for layer in arch["layers"]],
            "dense_params": dense, "nonzero_params": nonzero}


def export_model(path: str, model_name_or_arch, params) -> dict:
    """Writes ``path`` (.npz); returns the description stored in it.

    ``model_name_or_arch``: a registered model name, a ``models.Model``, or an
    arch dict (``{"input_shape": [...], "layers": [...]}`` as ``models.cnn``
    and ``models.mlp`` build it). Shapes are checked against the arch so a
    file never describes a network other than the one it holds.
    """
    name = ""
    if isinstance(model_name_or_arch, str):
        model_name_or_arch = models.get(model_name_or_arch)
    if isinstance(model_name_or_arch, models.Model):
        name = model_name_or_arch.name
        if model_name_or_arch.arch is None:
            raise ValueError(f"model {name!r} has no arch (only models.cnn/mlp models export)")
        model_name_or_arch = model_name_or_arch.arch
    arch = model_name_or_arch
    if models.has_bn(arch):
        raise ValueError("the arch has batch norm: export the folded network "
                         "(models.fold_bn params with models.folded_arch)")
    arrays = flat_arrays(params)
    want = _expected_shapes(arch)
    got = {k: v.shape for k, v in arrays.items()}
    if got != want:
        raise ValueError(f"params do not match the arch: got {got}, expected {want}")
    desc = describe(arch, params, name)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # A plain str array (not an object array): loading needs no pickle.
    np.savez(path, arch=np.array(json.dumps(desc)), **arrays)
    return desc


def load(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(description, ``{"conv0/w": array, ...}``) from an exported file."""
    with np.load(path, allow_pickle=False) as f:
        desc = json.loads(str(f["arch"]))
        return desc, {k: f[k] for k in f.files if k != "arch"}


def load_model(path: str) -> tuple[models.Model, dict]:
    """(Model, params) of an exported file: params as the nested dict
    ``model.apply`` takes (``{"conv0": {"w": ..., "b": ...}, ...}``)."""
    desc, arrays = load(path)
    params: dict = {}
    for key, value in arrays.items():
        layer, name = key.split("/")
        params.setdefault(layer, {})[name] = jax.numpy.asarray(value)
    model = models.from_arch(desc, desc.get("name") or os.path.basename(path))
    want, got = _expected_shapes(model.arch), {k: v.shape for k, v in arrays.items()}
    if got != want:
        raise ValueError(f"{path}: arrays {got} do not match its arch {want}")
    return model, params
