"""Look inside an exported MNIST model: activations, class means, feature visualisation.

Every function below is written for one model and one image (or one unit);
the model is its export ``arch`` (``{"input_shape", "layers"}``, as
``export.load_model`` returns it in ``model.arch``) plus its params. The only
vmaps are in the last section (over images, over units).

Activations are computed generically: the output of the first ``n`` layers
is ``models.from_arch`` of ``layers[:n]`` applied to the image, so layer
kinds added to ``from_arch`` later work unchanged. Only for ``conv`` layers,
whose semantics are known here, do we also open the layer up: its
pre-activation (for feature visualisation) and its unpooled activation (for
the first-layer maps).

Feature visualisation is gradient ascent on a pixel image ``p`` in [0, 1]
(the network sees ``(p - mean) / std``), starting from grey plus a little
noise: Adam on the target (divided by its standard deviation over validation
images, so one L2 weight suits every unit and model) minus
``l2 * mean((p - 0.5)^2)``, evaluated on ``p`` shifted by a random pixel or
so (jitter); a Gaussian blur every few steps and a clip to [0, 1]. These are
the regularisers of Yosinski et al. 2015 ("Understanding neural networks
through deep visualization") plus the jitter of Mordvintsev et al. 2015/Olah
et al. 2017. Grey is neutral: white pixels excite the target, black ones
inhibit it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from subspace_jax import data, models

WHERES = ("centre", "mean")


# ---------------------------------------------------------------- one image
def truncated(arch: dict, n: int) -> models.Model:
    """The network made of the first ``n`` layers of ``arch`` (same params)."""
    return models.from_arch({"input_shape": arch["input_shape"], "layers": arch["layers"][:n]})


def layer_output(arch: dict, params, x_HWC: jax.Array, n: int) -> jax.Array:
    """Output of layer ``n - 1`` (after ``n`` layers) for one image, as ``apply`` computes
    it: activation and pooling included. ``n = 0`` gives the input itself."""
    if n == 0:
        return x_HWC.reshape(arch["input_shape"])
    return truncated(arch, n).apply(params, x_HWC[None])[0]


def _activate(layer: dict, p: dict, h: jax.Array) -> jax.Array:
    act = layer["activation"]
    return models.prelu(h, p["slope"]) if act == "prelu" else jax.nn.relu(h) if act == "relu" else h


def conv_preactivation(arch: dict, params, x_HWC: jax.Array, n: int) -> jax.Array:
    """Pre-activation (before activation and pool) of layer ``n``, a ``conv`` layer."""
    layer = arch["layers"][n]
    p = params[layer["name"]]
    h = layer_output(arch, params, x_HWC, n)
    return models.conv2d(h[None], p["w"], p["b"])[0]


def unit_output(arch: dict, params, x_HWC: jax.Array, n: int) -> jax.Array:
    """What feature visualisation of layer ``n`` maximises: a ``conv`` layer's
    pre-activation (H x W x C; no dead ReLU gradient, no pooling), any other
    layer's output as ``apply`` gives it (e.g. the logits)."""
    if arch["layers"][n]["kind"] == "conv":
        return conv_preactivation(arch, params, x_HWC, n)
    return layer_output(arch, params, x_HWC, n + 1)


def first_layer_maps(arch: dict, params, x_HWC: jax.Array) -> jax.Array:
    """First layer's channel maps, H x W x C: a ``conv`` layer after its
    activation but before pooling (full resolution); another spatial layer
    as ``apply`` gives it."""
    layer = arch["layers"][0]
    if layer["kind"] == "conv":
        return _activate(layer, params[layer["name"]], conv_preactivation(arch, params, x_HWC, 0))
    return layer_output(arch, params, x_HWC, 1)


def feature_vector(arch: dict, params, x_HWC: jax.Array) -> jax.Array:
    """The input of the last (linear) layer, flattened: the final features."""
    return layer_output(arch, params, x_HWC, len(arch["layers"]) - 1).reshape(-1)


def logits(arch: dict, params, x_HWC: jax.Array) -> jax.Array:
    return layer_output(arch, params, x_HWC, len(arch["layers"]))


def _per_unit(out: jax.Array, where: str) -> jax.Array:
    if out.ndim == 1:  # a vector layer (e.g. the logits): one value per entry
        return out
    if where == "mean":
        return out.mean(axis=(0, 1))
    if where == "centre":
        return out[out.shape[0] // 2, out.shape[1] // 2]
    raise ValueError(f"where={where!r}; valid: {', '.join(WHERES)}")


def select_unit(out: jax.Array, unit, where: str = "centre") -> jax.Array:
    """Scalar of ``unit`` (a channel or a vector entry; may be traced) of a layer
    output: channel ``unit`` at the centre position, or its spatial mean."""
    return _per_unit(out, where)[unit]


def unit_values(arch: dict, params, x_HWC: jax.Array, n: int, where: str = "centre"):
    """Every unit's ``select_unit`` value of layer ``n`` for one image (a vector)."""
    return _per_unit(unit_output(arch, params, x_HWC, n), where)


# ---------------------------------------------------------------- ascent
def gaussian_blur(p_HWC: jax.Array, sigma) -> jax.Array:
    """Separable 5-tap Gaussian blur with edge padding; ``sigma`` in pixels
    (may be traced; 0 leaves the image unchanged)."""
    offsets = jnp.arange(-2, 3, dtype=jnp.float32)
    k = jnp.exp(-0.5 * (offsets / jnp.maximum(sigma, 1e-6)) ** 2)
    k = k / k.sum()
    pad = jnp.pad(p_HWC, ((2, 2), (0, 0), (0, 0)), mode="edge")
    h, w = p_HWC.shape[:2]
    p = sum(k[i] * pad[i:i + h] for i in range(5))
    pad = jnp.pad(p, ((0, 0), (2, 2), (0, 0)), mode="edge")
    return sum(k[i] * pad[:, i:i + w] for i in range(5))


def shift(p_HWC: jax.Array, dy, dx, max_shift: int) -> jax.Array:
    """``p`` moved by (dy, dx) pixels, |dy|, |dx| <= max_shift (may be traced), grey fill."""
    m = max_shift
    padded = jnp.pad(p_HWC, ((m, m), (m, m), (0, 0)), constant_values=0.5)
    return lax.dynamic_slice(padded, (m - dy, m - dx, 0), p_HWC.shape)


def ascend(objective: Callable[[jax.Array], jax.Array], p0_HWC: jax.Array, steps: int,
           lr, l2, blur, blur_every=1, key: jax.Array | None = None,
           jitter: int = 0) -> tuple[jax.Array, jax.Array]:
    """Gradient ascent on one pixel image in [0, 1].

    Each step: Adam (learning rate ``lr``) on ``objective(p) - l2 * mean((p - 0.5)^2)``,
    with ``p`` shifted by a random offset of at most ``jitter`` pixels (static; drawn
    from ``fold_in(key, step)``; 0 = no shift, key unused) inside the objective,
    then, every ``blur_every`` steps but not after the last, ``gaussian_blur(p, blur)``;
    then a clip to [0, 1]. ``steps`` is static; the other numbers may be arrays. Returns
    ``(p_HWC, objective_S)``: the final image and ``objective(p)`` before each
    step (penalty excluded).
    """
    opt = optax.adam(lr)

    def loss(p, i):
        if jitter:
            dy, dx = jax.random.randint(jax.random.fold_in(key, i), (2,), -jitter, jitter + 1)
            value = objective(shift(p, dy, dx, jitter))
        else:
            value = objective(p)
        return -(value - l2 * jnp.mean((p - 0.5) ** 2)), value

    def step(carry, i):
        p, state = carry
        (_, value), g = jax.value_and_grad(loss, has_aux=True)(p, i)
        updates, state = opt.update(g, state, p)
        p = optax.apply_updates(p, updates)
        p = jnp.where(((i + 1) % blur_every == 0) & (i + 1 < steps), gaussian_blur(p, blur), p)
        return (jnp.clip(p, 0.0, 1.0), state), value

    (p, _), trace_S = lax.scan(step, (p0_HWC, opt.init(p0_HWC)), jnp.arange(steps))
    return p, trace_S


def start_image(key: jax.Array, shape, scale: float = 0.01) -> jax.Array:
    """Mid-grey plus small Gaussian noise: the ascent's starting point."""
    return jnp.clip(0.5 + scale * jax.random.normal(key, shape), 0.0, 1.0)


def to_input(p_HWC: jax.Array, mean: float = data.MEAN, std: float = data.STD) -> jax.Array:
    """Pixel image in [0, 1] -> the standardised network input."""
    return (p_HWC - mean) / std


class Ascent(NamedTuple):
    """Feature-visualisation settings (see ``ascend``)."""
    steps: int = 256          # static
    lr: float = 0.05          # Adam, pixel units
    l2: float = 30.0          # weight of mean((p - 0.5)^2), against the target in units of scale
    blur: float = 1.0         # Gaussian sigma in pixels; 0 = none
    blur_every: int = 8
    jitter: int = 1           # static: random shift of at most this many pixels per step
    where: str = "centre"     # static: see select_unit


def visualise_unit(arch: dict, params, key: jax.Array, n: int, unit, asc: Ascent,
                   mean: float = data.MEAN, std: float = data.STD,
                   scale=1.0) -> dict[str, jax.Array]:
    """Gradient ascent on ``unit`` of layer ``n`` (see ``unit_output``).

    The ascent maximises the unit's value divided by ``scale`` (e.g. its standard
    deviation over validation images, so that ``asc.l2`` means the same for every
    unit and model). ``key`` gives the start image and the jitter. Returns
    ``{"image": p_HWC, "start": value at the start image, "end": at the final
    image (unshifted), "trace": value_S during the ascent (shifted images)}``;
    values are raw (not divided by ``scale``).
    """
    k_start, k_jitter = jax.random.split(key)
    shape = tuple(arch["input_shape"]) if len(arch["input_shape"]) == 3 else data.MNIST_SHAPE
    p0 = start_image(k_start, shape)

    def objective(p):
        return select_unit(unit_output(arch, params, to_input(p, mean, std), n), unit, asc.where)

    p, trace = ascend(lambda p: objective(p) / scale, p0, asc.steps, asc.lr, asc.l2, asc.blur,
                      asc.blur_every, k_jitter, asc.jitter)
    return {"image": p, "start": objective(p0), "end": objective(p), "trace": trace * scale}


# ---------------------------------------------------------------- which layers
def output_shapes(arch: dict, params) -> list[tuple[int, ...]]:
    """Shape of every layer's output for one image (abstract evaluation, no FLOPs)."""
    x = jax.ShapeDtypeStruct(tuple(arch["input_shape"]), jnp.float32)
    return [jax.eval_shape(lambda x, n=n: layer_output(arch, params, x, n + 1), x).shape
            for n in range(len(arch["layers"]))]


def visualisable_layers(arch: dict, params) -> list[int]:
    """Indices of layers with parameters and an H x W x C output: conv-like layers."""
    shapes = output_shapes(arch, params)
    return [n for n, layer in enumerate(arch["layers"])
            if layer.get("name") in params and len(shapes[n]) == 3]


def feature_map_shape(arch: dict, params) -> tuple[int, int, int] | None:
    """(H, W, C) of the map the final features are flattened from, or None
    (features not a flattened map: e.g. a hidden dense layer's output)."""
    shapes = output_shapes(arch, params)
    layers = arch["layers"]
    if len(layers) >= 3 and layers[-2]["kind"] == "flatten" and len(shapes[-3]) == 3:
        return tuple(int(d) for d in shapes[-3])
    return None


def check_classifier(arch: dict) -> dict:
    """The last layer, which must be linear (``dense``, no activation)."""
    last = arch["layers"][-1]
    if last["kind"] != "dense" or last.get("activation", "none") != "none":
        raise ValueError(f"the last layer must be dense without activation (the linear "
                         f"classifier); got {last}")
    return last


# ---------------------------------------------------------------- batched (the only vmaps)
def per_image(fn: Callable, arch: dict, params, x_NHWC, chunk: int = 1000) -> np.ndarray:
    """``fn(arch, params, x_HWC)`` for every image, vmapped and jitted per chunk."""
    batched = jax.jit(jax.vmap(lambda p, x: fn(arch, p, x), in_axes=(None, 0)))
    outs = [np.asarray(batched(params, x_NHWC[i:i + chunk]))
            for i in range(0, len(x_NHWC), chunk)]
    return np.concatenate(outs)


def class_feature_means(arch: dict, params, x_NHWC, y_N, num_classes: int = data.MNIST_CLASSES,
                        chunk: int = 1000) -> dict[str, np.ndarray]:
    """Per-class means of the final feature vector, and the accuracy of the logits.

    Returns ``{"means_KxF", "counts_K", "acc"}``; a class without images has
    NaN means.
    """
    feats_NxF = per_image(feature_vector, arch, params, x_NHWC, chunk)
    last = check_classifier(arch)
    w, b = (np.asarray(params[last["name"]][k]) for k in ("w", "b"))
    acc = float(((feats_NxF @ w + b).argmax(-1) == y_N).mean())
    onehot_NxK = np.eye(num_classes)[y_N]
    counts_K = onehot_NxK.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means_KxF = (onehot_NxK.T @ feats_NxF) / counts_K[:, None]
    return {"means_KxF": means_KxF, "counts_K": counts_K.astype(int), "acc": acc}


def visualise_layer(arch: dict, params, key: jax.Array, n: int, num_units: int,
                    asc: Ascent | None = None, mean: float = data.MEAN, std: float = data.STD,
                    x_scale_NHWC=None) -> dict[str, np.ndarray]:
    """``visualise_unit`` for units ``0 .. num_units - 1`` of layer ``n``, vmapped.

    ``asc``: settings (default ``Ascent()``). ``x_scale_NHWC``: images (from
    the validation split) over which each unit's standard deviation is taken
    as its ``scale``, in the same compiled program (default: scale 1; a unit
    constant on them keeps 1). Every unit gets the same ``key`` (start image
    and shifts), so the images differ only by their target. Returns the dict
    of ``visualise_unit`` with a leading unit axis (``image`` is U x H x W x C)
    plus ``scale`` (U).
    """
    asc = asc or Ascent()

    @jax.jit
    def run(params, key, x_scale, lr, l2, blur, blur_every):
        if x_scale is None:
            scale_U = jnp.ones(num_units)
        else:
            values_NxU = jax.vmap(lambda x: unit_values(arch, params, x, n, asc.where))(x_scale)
            scale_U = values_NxU.std(axis=0)
            scale_U = jnp.where(scale_U > 1e-6, scale_U, 1.0)
        numbers = asc._replace(lr=lr, l2=l2, blur=blur, blur_every=blur_every)
        one = lambda u, s: visualise_unit(arch, params, key, n, u, numbers, mean, std, s)
        return {**jax.vmap(one)(jnp.arange(num_units), scale_U), "scale": scale_U}

    x_scale = None if x_scale_NHWC is None else jnp.asarray(x_scale_NHWC)
    out = run(params, key, x_scale, jnp.float32(asc.lr), jnp.float32(asc.l2),
              jnp.float32(asc.blur), jnp.int32(asc.blur_every))
    return {k: np.asarray(v) for k, v in out.items()}
