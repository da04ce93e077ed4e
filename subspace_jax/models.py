"""Pure-function models over plain pytrees, registered by name.

A model is ``Model(init, apply)``: ``init(key) -> params`` (a dict of dicts of
arrays) and ``apply(params, x_NxHxWxC) -> logits_NxK`` (MNIST: 28x28x1, K = 10;
``get(name, input_shape, num_classes)`` builds for another dataset). No classes hold
state; vmap over seeds is the caller's business.

Convolutions are written as patches-by-slicing plus one matmul, and max-pool
as reshape-and-max: on XLA's CPU backend this trains the 21,840-parameter
conv net about 6x faster than ``lax.conv_general_dilated`` (see
``benchmarks/conv_formulations.py``). Depthwise convs are a sum of k*k
shifted slices times per-channel weights, for the same reason. Inside a
model the conv stack runs channel-major (C x N x H x W, ``conv_impl='cnhw'``):
the patch matrix is then KKC x NHW, so the forward matmul and both gradient
matmuls keep N*H*W as the contiguous axis, and XLA hands all three to its
fast matmul path instead of a transposed one. Max-pool goes before the bias
and a monotone activation (the same values, on a quarter of the elements).
On the 2-core AMD EPYC, ``benchmarks/throughput.py`` trained the conv net at
22,980 images/s with it (2026-12-05) against 13,739 with the NHWC form the day
before; parameters and exports are unchanged (weights stay K x K x C x O;
flatten still orders features h, w, c).

``mlp`` and ``cnn`` models carry ``arch``, the layer list that
``subspace_jax/export.py`` writes and ``from_arch`` runs again; ``cnn``
models are built from that list, so both run the same code.

``python -m subspace_jax.models`` prints every registered model with its
exact parameter count.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from subspace_jax.data import MNIST_CLASSES, MNIST_SHAPE
from subspace_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    init: Callable      # key -> params
    apply: Callable     # (params, x_NxHxWxC) -> logits_NxK
    description: str = ""
    # Layer list for export (see subspace_jax/export.py); None for models built
    # outside mlp/cnn. Kept out of ==/hash so a Model stays a valid static key.
    arch: dict | None = dataclasses.field(default=None, compare=False)


# ---------------------------------------------------------------- layers
def conv2d(x_NHWC, w_KKCO, b_O, impl: str = "slice"):
    """'VALID' stride-1 convolution. ``impl='slice'`` is the fast CPU form."""
    if impl == "lax":
        y = lax.conv_general_dilated(x_NHWC, w_KKCO, (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + b_O
    k = w_KKCO.shape[0]
    h, w = x_NHWC.shape[1] - k + 1, x_NHWC.shape[2] - k + 1
    # Patch channel order (i, j, c) matches w.reshape(k*k*C, O).
    cols = [x_NHWC[:, i:i + h, j:j + w, :] for i in range(k) for j in range(k)]
    patches = jnp.concatenate(cols, axis=-1)
    return patches @ w_KKCO.reshape(-1, w_KKCO.shape[-1]) + b_O


def depthwise2d(x_NHWC, w_KKC, b_C, impl: str = "slice"):
    """'VALID' stride-1 depthwise convolution: one k x k filter per channel.

    ``impl='slice'`` sums k*k shifted slices times per-channel weights (no
    ``lax.conv``, which is slow on XLA's CPU backend)."""
    if impl == "lax":
        y = lax.conv_general_dilated(x_NHWC, w_KKC[:, :, None, :], (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=x_NHWC.shape[-1])
        return y + b_C
    k = w_KKC.shape[0]
    h, w = x_NHWC.shape[1] - k + 1, x_NHWC.shape[2] - k + 1
    y = sum(x_NHWC[:, i:i + h, j:j + w, :] * w_KKC[i, j] for i in range(k) for j in range(k))
    return y + b_C


def maxpool2(x_NHWC):
    """2x2 max-pool, stride 2, floor mode (odd edges dropped)."""
    n, h, w, c = x_NHWC.shape
    h2, w2 = h // 2, w // 2
    x = x_NHWC[:, :2 * h2, :2 * w2]
    return x.reshape(n, h2, 2, w2, 2, c).max(axis=(2, 4))


def conv2d_cnhw(x_CNHW, w_KKCO):
    """``conv2d`` in the channel-major C x N x H x W layout (see the module doc):
    k*k slices stacked on a leading axis, then O x KKC @ KKC x NHW (no bias: the
    caller adds it, after a pool where the pool commutes)."""
    k, _, c, o = w_KKCO.shape
    _, n, height, width = x_CNHW.shape
    h, w = height - k + 1, width - k + 1
    # Patch row order (i, j, c) matches w.reshape(k*k*C, O).
    patches_PxM = jnp.stack([x_CNHW[:, :, i:i + h, j:j + w]
                             for i in range(k) for j in range(k)]).reshape(k * k * c, n * h * w)
    return (w_KKCO.reshape(-1, o).T @ patches_PxM).reshape(o, n, h, w)


def depthwise2d_cnhw(x_CNHW, w_KKC, b_C):
    """``depthwise2d`` in the C x N x H x W layout."""
    k = w_KKC.shape[0]
    h, w = x_CNHW.shape[2] - k + 1, x_CNHW.shape[3] - k + 1
    y = sum(x_CNHW[:, :, i:i + h, j:j + w] * w_KKC[i, j][:, None, None, None]
            for i in range(k) for j in range(k))
    return y + jnp.asarray(b_C).reshape(-1, 1, 1, 1)


def maxpool2_cnhw(x_CNHW):
    """``maxpool2`` in the C x N x H x W layout."""
    c, n, h, w = x_CNHW.shape
    h2, w2 = h // 2, w // 2
    return x_CNHW[:, :, :2 * h2, :2 * w2].reshape(c, n, h2, 2, w2, 2).max(axis=(3, 5))


def prelu(x, slope_C):
    return jnp.where(x >= 0, x, slope_C * x)


def _uniform(key, shape, fan_in):
    # PyTorch's default (Kaiming-uniform with a=sqrt(5)) reduces to U(+-1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def _dense_init(key, n_in, n_out):
    kw, kb = jax.random.split(key)
    return {"w": _uniform(kw, (n_in, n_out), n_in), "b": _uniform(kb, (n_out,), n_in)}


def _conv_init(key, k, c_in, c_out):
    kw, kb = jax.random.split(key)
    fan_in = k * k * c_in
    return {"w": _uniform(kw, (k, k, c_in, c_out), fan_in), "b": _uniform(kb, (c_out,), fan_in)}


def _depthwise_init(key, k, c):
    kw, kb = jax.random.split(key)
    fan_in = k * k  # each output channel sees one input channel
    return {"w": _uniform(kw, (k, k, c), fan_in), "b": _uniform(kb, (c,), fan_in)}


# ---------------------------------------------------------------- families
def mlp(name: str, hidden: Sequence[int], n_in: int = math.prod(MNIST_SHAPE),
        n_out: int = MNIST_CLASSES,
        input_shape: Sequence[int] | None = None) -> Model:
    """Dense ReLU layers on the flattened input; ``input_shape`` (e.g. H x W x C)
    sets ``n_in`` and the export's input shape."""
    if input_shape is not None:
        n_in = math.prod(input_shape)
    sizes = [n_in, *hidden, n_out]

    def init(key):
        keys = jax.random.split(key, len(sizes) - 1)
        return {f"dense{i}": _dense_init(k, a, b)
                for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))}

    def apply(params, x):
        h = x.reshape(x.shape[0], -1)
        for i in range(len(sizes) - 1):
            layer = params[f"dense{i}"]
            h = h @ layer["w"] + layer["b"]
            if i < len(sizes) - 2:
                h = jax.nn.relu(h)
        return h

    layers = [{"kind": "flatten"}] + [
        {"kind": "dense", "name": f"dense{i}", "in": a, "out": b,
         "activation": "relu" if i < len(sizes) - 2 else "none"}
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]
    side = math.isqrt(n_in)  # default: square images; anything else stays a flat vector
    shape = (list(input_shape) if input_shape is not None
             else [side, side, 1] if side * side == n_in else [n_in])
    arch = {"input_shape": [int(d) for d in shape], "layers": layers}
    return Model(name, init, apply, "fc " + "-".join(map(str, sizes)), arch)


def _conv_out(size, kernels, pools):
    for k, p in zip(kernels, pools):
        size = size - k + 1
        if p:
            size //= 2
    return size


LAYER_KINDS = ("conv", "depthwise", "gap", "flatten", "dense", "maxpool", "instance_norm")
TRAINABLE_KINDS = ("conv", "depthwise", "dense", "instance_norm")
IN_EPS = 1e-5  # instance_norm: added to the standard deviation


def instance_norm(h, scale_1, shift_1, batch_axis: int = 0):
    """Each sample standardised over all its values (every axis but the batch; sd
    with n - 1), then one learned scale and shift: 2 parameters per layer."""
    axes = tuple(a for a in range(h.ndim) if a != batch_axis)
    mean = h.mean(axis=axes, keepdims=True)
    sd = jnp.std(h, axis=axes, keepdims=True, ddof=1)
    return (h - mean) / (sd + IN_EPS) * scale_1 + shift_1


ACTIVATIONS = ("relu", "prelu", "leaky_relu", "none")
PADDINGS = ("valid", "same")


def _activate(h, layer: dict, p):
    activation = layer.get("activation", "none")
    if activation == "prelu":
        return prelu(h, p["slope"])
    if activation == "leaky_relu":  # a fixed slope, stored in the arch: not a parameter
        return jnp.where(h >= 0, h, float(layer["alpha"]) * h)
    return jax.nn.relu(h) if activation == "relu" else h


def pad_same(x_NHWC, k: int, spatial=(1, 2)):
    """Zero padding for a stride-1 'same' convolution of kernel ``k``: ``(k - 1) // 2``
    rows/columns before, ``k // 2`` after (TensorFlow's rule), so H stays H."""
    pads = [((k - 1) // 2, k // 2) if a in spatial else (0, 0) for a in range(x_NHWC.ndim)]
    return jnp.pad(x_NHWC, pads)


BN_EPS = 1e-5


def moments(h_NHWC, axes=(0, 1, 2)):
    """Per-channel mean and (biased) variance over batch and space (``axes``)."""
    mean = h_NHWC.mean(axis=axes, keepdims=True)
    var = ((h_NHWC - mean) ** 2).mean(axis=axes, keepdims=True)
    return mean.reshape(-1), var.reshape(-1)


def batch_norm(h_NHWC, gamma_C, beta_C, mean_C, var_C):
    return (h_NHWC - mean_C) * (gamma_C * lax.rsqrt(var_C + BN_EPS)) + beta_C


def has_bn(arch: dict | None) -> bool:
    return arch is not None and any(layer.get("bn") for layer in arch["layers"])


def folded_arch(arch: dict) -> dict:
    """The arch with every conv+BN as a plain conv (what is exported and counted)."""
    return {**arch, "layers": [{k: v for k, v in layer.items() if k != "bn"}
                               for layer in arch["layers"]]}


def fold_bn(model: Model, params, x_NHWC):
    """Params of ``folded_arch(model.arch)``: each conv+BN becomes one conv.

    The statistics are the population ones of ``x`` (a fixed set of training
    images, never augmented), layer by layer through the network already folded
    before it: BN(conv(h)) = conv(h) * s + (beta - mean * s), s = gamma /
    sqrt(var + eps), so ``w' = w * s`` and ``b' = (b - mean) * s + beta``. The
    folded network is the one evaluated, exported and counted. jnp only: runs
    inside the compiled program.
    """
    arch = model.arch
    h = x_NHWC.reshape(x_NHWC.shape[0], *arch["input_shape"])
    out = {}
    for layer in arch["layers"]:
        p = dict(params.get(layer.get("name"), {}))
        if layer.get("bn"):
            gamma, beta = p.pop("gamma"), p.pop("beta")
            h_in = pad_same(h, int(layer["kernel"])) if layer.get("padding") == "same" else h
            mean, var = moments(conv2d(h_in, p["w"], p["b"]))
            scale = gamma * lax.rsqrt(var + BN_EPS)
            p["w"], p["b"] = p["w"] * scale, (p["b"] - mean) * scale + beta
            layer = {k: v for k, v in layer.items() if k != "bn"}
        if "name" in layer:
            out[layer["name"]] = p
        h = _forward_layer(layer, p, h)
    return out


def _forward_layer(layer: dict, p, h, conv_impl: str = "slice"):
    """One arch layer on ``h`` (batch norm, if any, on the batch's statistics)."""
    kind = layer["kind"]
    if kind == "flatten":
        return h.reshape(h.shape[0], -1)
    if kind == "gap":
        return h.mean(axis=(1, 2))
    if kind == "maxpool":
        return maxpool2(h)
    if kind == "instance_norm":
        return instance_norm(h, p["scale"], p["shift"])
    if kind in ("conv", "depthwise") and layer.get("padding", "valid") == "same":
        h = pad_same(h, int(layer["kernel"]))
    if kind == "conv":
        h = conv2d(h, p["w"], p["b"], conv_impl)
        if layer.get("bn"):  # training form
            h = batch_norm(h, p["gamma"], p["beta"], *moments(h))
    elif kind == "depthwise":  # "bias": false (Keras' SeparableConv2D): no depthwise bias
        h = depthwise2d(h, p["w"], p.get("b", 0.0), conv_impl)
    else:
        h = h @ p["w"] + p["b"]
    h = _activate(h, layer, p)
    return maxpool2(h) if layer.get("pool") else h


def _pool_commutes(layer: dict) -> bool:
    """Whether max-pool may go before this layer's bias and activation: true for
    monotone non-decreasing ones with no batch norm (max(relu(x + b)) =
    relu(max(x) + b) exactly, also in floats). PReLU slopes are learned and may
    turn negative, so PReLU keeps activation-then-pool."""
    activation = layer.get("activation", "none")
    return not layer.get("bn") and (activation in ("relu", "none") or (
        activation == "leaky_relu" and float(layer["alpha"]) >= 0))


def _forward_layer_cnhw(layer: dict, p, h):
    """``_forward_layer`` with 4-D activations in the C x N x H x W layout; flatten
    and gap return the N x F features (h, w, c order), as the NHWC form does."""
    kind = layer["kind"]
    if h.ndim != 4:  # past flatten: the NHWC form serves
        return _forward_layer(layer, p, h)
    if kind == "flatten":
        return h.transpose(1, 2, 3, 0).reshape(h.shape[1], -1)
    if kind == "gap":
        return h.mean(axis=(2, 3)).T
    if kind == "maxpool":
        return maxpool2_cnhw(h)
    if kind == "instance_norm":  # per sample: the batch is axis 1 here
        return instance_norm(h, p["scale"], p["shift"], batch_axis=1)
    if kind == "dense":  # on a 4-D input: acts on channels, as in NHWC
        return _forward_layer(layer, p, h.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
    if kind in ("conv", "depthwise") and layer.get("padding", "valid") == "same":
        h = pad_same(h, int(layer["kernel"]), spatial=(2, 3))
    pool_first = False
    if kind == "depthwise":  # "bias": false (Keras' SeparableConv2D): no depthwise bias
        h = depthwise2d_cnhw(h, p["w"], p.get("b", 0.0))
    else:
        pool_first = layer.get("pool") and _pool_commutes(layer)
        h = conv2d_cnhw(h, p["w"])
        if pool_first:
            h = maxpool2_cnhw(h)
        h = h + p["b"][:, None, None, None]
        if layer.get("bn"):  # training form: statistics over N, H, W
            col = lambda v: v[:, None, None, None]  # noqa: E731  per channel, axis 0
            mean, var = moments(h, axes=(1, 2, 3))
            h = batch_norm(h, col(p["gamma"]), col(p["beta"]), col(mean), col(var))
    if layer.get("activation") == "prelu":  # never pool-first
        h = prelu(h, p["slope"][:, None, None, None])
    else:
        h = _activate(h, layer, p)
    return maxpool2_cnhw(h) if layer.get("pool") and not pool_first else h


def _layers_model(name: str, arch: dict, description: str, conv_impl: str = "cnhw") -> Model:
    """The Model that runs an export layer list, in order (the semantics of each
    kind are in ``tools/check_model.py``). Init: one key per layer with
    parameters, split from the root key in layer order; PReLU slopes start at 0.25,
    instance norms at scale 1, shift 0. Layers repeating a name share its parameters."""
    layers = [dict(layer) for layer in arch["layers"]]
    in_shape = tuple(arch["input_shape"])
    for layer in layers:
        if layer["kind"] not in LAYER_KINDS:
            raise ValueError(f"arch layer kind {layer['kind']!r}; valid: {', '.join(LAYER_KINDS)}")
        if layer.get("activation", "none") not in ACTIVATIONS:
            raise ValueError(f"arch layer activation {layer['activation']!r}; valid: "
                             f"{', '.join(ACTIVATIONS)}")
        if layer.get("activation") == "leaky_relu" and not isinstance(layer.get("alpha"),
                                                                         (int, float)):
            raise ValueError("a leaky_relu layer needs its fixed slope as a number 'alpha'")
        if layer.get("padding", "valid") not in PADDINGS:
            raise ValueError(f"arch layer padding {layer['padding']!r}; valid: "
                             f"{', '.join(PADDINGS)}")
    # Layers that repeat a name share its parameters (stored, trained and counted once).
    trainable = {}
    for layer in layers:
        if layer["kind"] in TRAINABLE_KINDS:
            first = trainable.setdefault(layer["name"], layer)
            if first != layer:
                raise ValueError(f"arch layers named {layer['name']!r} differ ({first} vs "
                                 f"{layer}): a repeated name shares parameters, so its "
                                 "layers must be the same")
    trainable = list(trainable.values())

    def init(key):
        params = {}
        for layer, k in zip(trainable, jax.random.split(key, len(trainable))):
            if layer["kind"] == "instance_norm":
                params[layer["name"]] = {"scale": jnp.ones((1,), jnp.float32),
                                         "shift": jnp.zeros((1,), jnp.float32)}
                continue
            if layer["kind"] == "conv":
                p = _conv_init(k, layer["kernel"], layer["in"], layer["out"])
            elif layer["kind"] == "depthwise":
                p = _depthwise_init(k, layer["kernel"], layer["channels"])
                if not layer.get("bias", True):
                    del p["b"]
            else:
                p = _dense_init(k, layer["in"], layer["out"])
            if layer.get("activation") == "prelu":
                p["slope"] = jnp.full(p["w"].shape[-1:], 0.25, jnp.float32)
            if layer.get("bn"):
                p["gamma"] = jnp.ones(p["b"].shape, jnp.float32)
                p["beta"] = jnp.zeros(p["b"].shape, jnp.float32)
            params[layer["name"]] = p
        return params

    def apply(params, x):
        h = x.reshape(x.shape[0], *in_shape)
        if conv_impl == "cnhw" and h.ndim == 4:
            h = h.transpose(3, 0, 1, 2)
            for layer in layers:
                h = _forward_layer_cnhw(layer, params.get(layer.get("name")), h)
            return h.transpose(1, 2, 3, 0) if h.ndim == 4 else h
        for layer in layers:
            h = _forward_layer(layer, params.get(layer.get("name")), h, conv_impl)
        return h

    return Model(name, init, apply, description, {"input_shape": list(in_shape), "layers": layers})


def cnn(name: str, channels: Sequence[int], kernels: Sequence[int],
        pools: Sequence[bool], hidden: Sequence[int] = (), activation: str = "relu",
        n_out: int = MNIST_CLASSES, in_size: int = 28, in_channels: int = 1,
        conv_impl: str = "cnhw", separable: bool = False, gap: bool = False,
        bn: bool = False) -> Model:
    """VALID convs (optionally pooled), then dense layers, then ``n_out`` logits.

    ``activation='prelu'`` gives one learned slope per conv channel (init 0.25).
    ``separable=True``: every conv after the first is depthwise-separable: a
    k x k depthwise conv ``dw{i}`` (one filter and one bias per input channel,
    no activation), then a 1x1 conv ``conv{i}`` with bias, the activation and
    the pool. ``gap=True``: global average pooling over space instead of
    flatten, so the first dense layer sees ``channels[-1]`` features.
    ``bn=True``: every ``conv`` layer is followed by batch norm (``gamma``,
    ``beta``; batch statistics in ``apply``) before its activation; ``fold_bn``
    folds it into the conv for evaluation and export.
    """
    if activation not in ("relu", "prelu"):
        raise ValueError(f"activation={activation!r}; valid: relu, prelu")
    if not len(channels) == len(kernels) == len(pools) >= 1:
        raise ValueError(f"model {name}: channels {tuple(channels)}, kernels {tuple(kernels)} "
                         f"and pools {tuple(pools)} need one entry per conv")
    side = _conv_out(in_size, kernels, pools)
    if side < 1:
        raise ValueError(f"model {name}: kernels {kernels} leave no spatial extent")
    flat = channels[-1] if gap else side * side * channels[-1]
    dense_sizes = [flat, *hidden, n_out]

    desc = (f"conv {list(channels)} k{list(kernels)} pool{[int(p) for p in pools]} "
            f"-> {'-'.join(map(str, dense_sizes))} {activation}"
            + (" separable" if separable else "") + (" gap" if gap else "")
            + (" bn" if bn else ""))
    layers, c_in = [], in_channels
    for i, (c, k, p) in enumerate(zip(channels, kernels, pools)):
        if separable and i > 0:
            layers.append({"kind": "depthwise", "name": f"dw{i}", "kernel": int(k),
                           "channels": int(c_in)})
            k = 1
        layers.append({"kind": "conv", "name": f"conv{i}", "kernel": int(k), "in": int(c_in),
                       "out": int(c), "activation": activation, "pool": bool(p),
                       **({"bn": True} if bn else {})})
        c_in = c
    layers.append({"kind": "gap"} if gap else {"kind": "flatten"})
    layers += [{"kind": "dense", "name": f"dense{j}", "in": a, "out": b,
                "activation": "relu" if j < len(dense_sizes) - 2 else "none"}
               for j, (a, b) in enumerate(zip(dense_sizes[:-1], dense_sizes[1:]))]
    arch = {"input_shape": [in_size, in_size, in_channels], "layers": layers}
    return _layers_model(name, arch, desc, conv_impl)


def golf_cnn(channels=(4, 5, 4), kernels=(4, 3, 3), activation="relu", separable=False,
             gap=False, pools=None, bn=False, **kw) -> Model:
    """The neural-golf family: VALID convs, pool after conv 1 and 2, linear to 10.

    ``separable`` and ``gap`` as in ``cnn``; ``pools`` (one bool per conv)
    defaults to a 2x2 max-pool after the first two convs. The name encodes
    every choice, e.g. ``golf_c4-8-16_k5-3-3_prelu_sep_gap``; non-default
    pools add ``_p110``-style suffixes.
    """
    default_pools = tuple(i < 2 for i in range(len(channels)))
    pools = default_pools if pools is None else tuple(bool(p) for p in pools)
    name = (f"golf_c{'-'.join(map(str, channels))}_k{'-'.join(map(str, kernels))}_{activation}"
            + ("_sep" if separable else "") + ("_gap" if gap else ""))
    if pools != default_pools:
        name += "_p" + "".join(str(int(p)) for p in pools)
    if bn:
        name += "_bn"
    return cnn(name, channels, kernels, pools, activation=activation, separable=separable,
               gap=gap, bn=bn, **kw)


def from_arch(arch: dict, name: str = "from_arch") -> Model:
    """The Model an export ``arch`` describes (``{"input_shape", "layers"}``, or
    the full description stored in an exported file): same apply as the
    ``mlp``/``cnn`` model that wrote it, fresh uniform init."""
    in_shape = arch.get("input_shape") or arch["input"]["shape"]
    return _layers_model(name, {"input_shape": in_shape, "layers": arch["layers"]},
                         f"from arch: {len(arch['layers'])} layers")


# ---------------------------------------------------------------- Flax models
# Flax leaf names -> this project's: pruning's default prunable leaf is "w"
# and export's layer lists say "w"/"b", so Flax kernels prune like ours.
_FLAX_TO_OURS = {"kernel": "w", "bias": "b"}
_OURS_TO_FLAX = {v: k for k, v in _FLAX_TO_OURS.items()}


def _rename(tree, table: dict):
    """Nested dict with leaf keys renamed by ``table`` (other keys kept)."""
    if not isinstance(tree, dict):
        return tree
    out = {}
    for key, value in tree.items():
        new = table.get(key, key) if not isinstance(value, dict) else key
        if new in out:
            raise ValueError(f"Flax parameter {key!r} would be renamed to {new!r}, "
                             "which the same layer already has")
        out[new] = _rename(value, table)
    return out


def _check_logits(name: str, apply, params_like, input_shape) -> None:
    x = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    out = jax.eval_shape(apply, params_like, x)
    if len(out.shape) != 2 or out.shape[0] != 2:
        raise ValueError(f"model {name!r}: a batch of shape {x.shape} gives output shape "
                         f"{out.shape}; a classifier must return logits N x classes")


def from_flax(module, input_shape: Sequence[int] = MNIST_SHAPE, name: str | None = None) -> Model:
    """A ``flax.linen`` module as ``Model``: ``init(key)`` is ``module.init``
    on a zero batch of ``input_shape`` (Flax's own initialisers), ``apply``
    reshapes x to ``N x input_shape`` and calls ``module.apply``.

    Params are the module's ``'params'`` collection with ``kernel``/``bias``
    renamed ``w``/``b``. Modules with other variable collections (batch-norm
    statistics, ...) are refused: training here is a pure function of params.
    """
    import flax.linen as nn  # flax is imported only for Flax models

    if not isinstance(module, nn.Module):
        raise ValueError(f"from_flax needs a flax.linen.Module, got {type(module).__name__}")
    name = name or type(module).__name__
    input_shape = tuple(int(s) for s in input_shape)
    x_1 = jnp.zeros((1, *input_shape), jnp.float32)
    variables = jax.eval_shape(module.init, jax.random.key(0), x_1)
    extra = sorted(set(variables) - {"params"})
    if extra:
        raise ValueError(f"model {name!r} has variable collections {extra} besides 'params' "
                         "(e.g. batch-norm statistics); only stateless modules are supported")

    def init(key):
        return _rename(dict(module.init(key, x_1)["params"]), _FLAX_TO_OURS)

    def apply(params, x):
        x = x.reshape(x.shape[0], *input_shape)
        return module.apply({"params": _rename(params, _OURS_TO_FLAX)}, x)

    _check_logits(name, apply, _rename(dict(variables["params"]), _FLAX_TO_OURS), input_shape)
    return Model(name, init, apply, f"flax.linen {type(module).__name__} on {list(input_shape)}")


def from_nnx(factory: Callable, input_shape: Sequence[int] = MNIST_SHAPE,
             name: str | None = None) -> Model:
    """A ``flax.nnx`` module as ``Model``. ``factory(rngs)`` builds the module;
    ``init(key)`` builds it with ``nnx.Rngs(key)`` and keeps its ``nnx.Param``
    state (``kernel``/``bias`` renamed ``w``/``b``). Modules holding any other
    state (batch statistics, dropout RNG streams) are refused."""
    from flax import nnx

    name = name or getattr(factory, "__name__", "nnx_model")
    input_shape = tuple(int(s) for s in input_shape)
    graphdef, abstract, rest = nnx.split(nnx.eval_shape(lambda: factory(nnx.Rngs(0))),
                                         nnx.Param, ...)
    kinds = sorted({type(v).__name__ for v in jax.tree.leaves(
        rest, is_leaf=lambda v: isinstance(v, nnx.Variable))})
    if kinds:
        raise ValueError(f"model {name!r} holds state besides nnx.Param ({', '.join(kinds)}); "
                         "only stateless modules are supported")

    def init(key):
        _, params, _ = nnx.split(factory(nnx.Rngs(key)), nnx.Param, ...)
        return _rename(params.to_pure_dict(), _FLAX_TO_OURS)

    def apply(params, x):
        state = jax.tree.map(lambda a: a, abstract)  # a fresh State to fill
        state.replace_by_pure_dict(_rename(params, _OURS_TO_FLAX))
        return nnx.merge(graphdef, state)(x.reshape(x.shape[0], *input_shape))

    _check_logits(name, apply, _rename(abstract.to_pure_dict(), _FLAX_TO_OURS), input_shape)
    return Model(name, init, apply, f"flax.nnx {name} on {list(input_shape)}")


def from_factory(spec: str, input_shape: Sequence[int] = MNIST_SHAPE) -> Model:
    """``'package.module:Factory'`` -> Model. ``Factory`` is a callable that
    returns a ``flax.linen`` module (called with no arguments), a ``flax.nnx``
    module (if it takes an ``rngs`` argument: called with ``nnx.Rngs``), or a
    ``Model``. The Model is named ``spec``, so records and files carry it."""
    import importlib
    import inspect

    module_path, _, attr = spec.partition(":")
    how = ("config field model: 'package.module:Factory', a callable on the Python path "
           "returning a flax.linen module, a flax.nnx module (taking rngs) or a Model")
    try:
        factory = getattr(importlib.import_module(module_path), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"model {spec!r} cannot be loaded ({e}); {how}.") from None
    if not callable(factory):
        raise ValueError(f"model {spec!r}: {attr} is not callable; {how}.")
    try:
        # A class's metaclass may hide its __init__ from inspect.signature.
        target = factory.__init__ if isinstance(factory, type) else factory
        takes_rngs = "rngs" in inspect.signature(target).parameters
    except (TypeError, ValueError):  # builtins without a signature
        takes_rngs = False
    if takes_rngs:
        return from_nnx(lambda rngs: factory(rngs=rngs), input_shape, spec)
    built = factory()
    if isinstance(built, Model):
        return dataclasses.replace(built, name=spec)
    import flax.linen as nn
    if not isinstance(built, nn.Module):
        raise ValueError(f"model {spec!r}: {attr}() returned {type(built).__name__}; {how}.")
    return from_flax(built, input_shape, spec)


# ---------------------------------------------------------------- registry
# Each factory takes (input_shape, n_out): MNIST_SHAPE and MNIST_CLASSES by
# default, a tfds dataset's otherwise (``get``). FC nets flatten any shape;
# conv nets take square images with any number of channels.
_REGISTRY: dict[str, Callable[..., Model]] = {
    # Li et al. 2018 / greydanus 2017 subspace papers.
    "fc_200_200": lambda s, k: mlp("fc_200_200", (200, 200), n_out=k, input_shape=s),
    "conv_subspace": lambda s, k: cnn("conv_subspace", (10, 20), (5, 5), (True, True), (50,),
                                      **_conv_shape(s, k)),
    # The subspace-nn "MNIST zoo".
    "zoo_fc16": lambda s, k: mlp("zoo_fc16", (16,), n_out=k, input_shape=s),
    "zoo_fc32": lambda s, k: mlp("zoo_fc32", (32,), n_out=k, input_shape=s),
    "zoo_cnn_small": lambda s, k: cnn("zoo_cnn_small", (6, 6), (4, 4), (True, True), (25,),
                                      **_conv_shape(s, k)),
    "zoo_cnn_large": lambda s, k: cnn("zoo_cnn_large", (8, 16), (4, 4), (True, True), (32,),
                                      **_conv_shape(s, k)),
    # Pruning and memorisation studies.
    "lenet_300_100": lambda s, k: mlp("lenet_300_100", (300, 100), n_out=k, input_shape=s),
    "mlp_512": lambda s, k: mlp("mlp_512", (512,), n_out=k, input_shape=s),
    # Neural golf reference members.
    "golf_relu": lambda s, k: golf_cnn(activation="relu", **_conv_shape(s, k)),
    "golf_prelu": lambda s, k: golf_cnn(activation="prelu", **_conv_shape(s, k)),
    # Depthwise-separable convs 2 and 3, global average pooling (606 params).
    "golf_sep_gap": lambda s, k: golf_cnn((4, 8, 16), (5, 3, 3), "prelu", separable=True,
                                          gap=True, **_conv_shape(s, k)),
}


def _conv_shape(input_shape, n_out) -> dict:
    """``cnn`` keywords for an ``H x W x C`` input (square images only)."""
    if len(input_shape) != 3 or input_shape[0] != input_shape[1]:
        raise ConfigError(f"conv models take square H x W x C images; the data has shape "
                          f"{tuple(input_shape)} (use an FC model, e.g. fc_200_200)")
    return {"in_size": int(input_shape[0]), "in_channels": int(input_shape[2]),
            "n_out": int(n_out)}


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str, input_shape: Sequence[int] = MNIST_SHAPE,
        num_classes: int = MNIST_CLASSES) -> Model:
    """A registered model, or ``'package.module:Factory'`` (see ``from_factory``),
    built for ``input_shape`` and ``num_classes`` (``for_data`` takes them from
    a dataset)."""
    if ":" in name:
        return from_factory(name, input_shape)
    if name not in _REGISTRY:
        raise ConfigError(f"Unknown model {name!r} (config field model); valid: "
                          f"{', '.join(names())}, or 'package.module:Factory' for a Flax model.")
    return _REGISTRY[name](tuple(int(d) for d in input_shape), int(num_classes))


def for_data(name: str, ds) -> Model:
    """``get(name)`` built for a ``data.Dataset``'s image shape and classes."""
    return get(name, ds.input_shape, ds.num_classes)


def register(name: str, factory: Callable[..., Model]) -> None:
    """Adds ``factory(input_shape, num_classes) -> Model`` under ``name``
    (a factory of no arguments is taken as MNIST-only)."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} already registered")
    try:
        n_args = len(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        n_args = 2
    if n_args == 0:
        def fixed(input_shape, num_classes, factory=factory):
            if tuple(input_shape) != MNIST_SHAPE or num_classes != MNIST_CLASSES:
                raise ConfigError(f"model {name!r} is registered for MNIST (28x28x1, 10 "
                                  f"classes) only; the data is {tuple(input_shape)}, "
                                  f"{num_classes} classes")
            return factory()
        _REGISTRY[name] = fixed
    else:
        _REGISTRY[name] = factory


def num_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


class Flat(NamedTuple):
    """A model over its flat parameter vector (``ravel_pytree`` order, as ``train`` keeps it)."""
    unravel: Callable   # theta_D -> params (traceable)
    apply_D: Callable   # (theta_D, x_NxHxWxC) -> logits_NxK
    init_D: Callable    # key -> theta_D


def flat(model: Model) -> Flat:
    shapes = jax.eval_shape(model.init, jax.random.key(0))  # structure only: no init runs
    unravel = ravel_pytree(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))[1]
    return Flat(unravel, lambda theta_D, x: model.apply(unravel(theta_D), x),
                lambda key: ravel_pytree(model.init(key))[0])


def unflatten(model: Model, theta_D) -> dict:
    """Flat params -> the nested dict of NumPy float32 arrays ``apply`` takes, on the
    host (no JAX op runs: for export and checks)."""
    leaves, treedef = jax.tree.flatten(jax.eval_shape(model.init, jax.random.key(0)))
    parts = np.split(np.asarray(theta_D, np.float32), np.cumsum([x.size for x in leaves])[:-1])
    return jax.tree.unflatten(treedef, [p.reshape(x.shape) for p, x in zip(parts, leaves)])


def param_count(model: Model) -> int:
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    return num_params(shapes)


def param_shapes(arch: dict) -> dict[str, tuple[int, ...]]:
    """``{"conv0/w": (k, k, in, out), ...}``: every parameter an arch implies
    (biases and PReLU slopes included), without building or tracing a model."""
    shapes = {}
    for layer in arch["layers"]:  # flatten, gap and maxpool hold no parameters
        n = layer.get("name")  # a repeated name is one set of (shared) parameters
        if layer["kind"] == "instance_norm":
            shapes[f"{n}/scale"] = shapes[f"{n}/shift"] = (1,)
        elif layer["kind"] == "conv":
            k = layer["kernel"]
            shapes[f"{n}/w"] = (k, k, layer["in"], layer["out"])
            shapes[f"{n}/b"] = (layer["out"],)
        elif layer["kind"] == "depthwise":
            k = layer["kernel"]
            shapes[f"{n}/w"] = (k, k, layer["channels"])
            if layer.get("bias", True):
                shapes[f"{n}/b"] = (layer["channels"],)
        elif layer["kind"] == "dense":
            shapes[f"{n}/w"] = (layer["in"], layer["out"])
            shapes[f"{n}/b"] = (layer["out"],)
        if layer.get("activation") == "prelu":
            shapes[f"{n}/slope"] = shapes[f"{n}/w"][-1:]
        if layer.get("bn"):  # training form only; folded away at export
            shapes[f"{n}/gamma"] = shapes[f"{n}/beta"] = shapes[f"{n}/w"][-1:]
    return shapes


def arch_param_count(arch: dict) -> int:
    """Dense parameter count of an arch; equals ``param_count`` of its model."""
    return int(sum(math.prod(s) for s in param_shapes(arch).values()))


def main():
    for name in names():
        model = get(name)
        print(f"{name:16s} {param_count(model):>9,d}  {model.description}")


if __name__ == "__main__":
    main()
