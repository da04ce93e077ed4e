"""Training-image augmentation inside the compiled step: one warp per image.

``warp(x_NHWC, A_Nx2x3, fill, disp_NxHxWx2=None)`` resamples every image at
``A @ (row, col, 1)`` (output pixel -> source position, in pixels about the
image centre) plus an optional per-pixel displacement, bilinearly, reading
``fill`` outside the image. ``draw(key, n, shape, hp, elastic_sigma)`` draws
one affine map (shift, rotation, scale) per image, and with
``elastic_sigma > 0`` an elastic displacement field (Simard et al. 2003:
uniform noise in [-1, 1] per pixel and axis, Gaussian-smoothed with that
sigma, times ``alpha`` pixels). The magnitudes come from ``hp`` (vmappable
numbers): ``aug_shift`` (pixels, uniform in +-), ``aug_rotate`` (degrees,
uniform in +-), ``aug_scale`` (uniform factor in [1 - s, 1 + s]),
``aug_elastic`` (alpha, pixels). Whether a warp runs at all, and whether it
has an elastic field, are static (they change the program).

``train.make_run`` warps training batches only (``tcfg.augment``); the
validation halves, the test split and the final train score see the images
as they are.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

HP_FIELDS = ("aug_shift", "aug_rotate", "aug_scale", "aug_elastic")


def default_hp() -> dict[str, jax.Array]:
    """Zero magnitudes: the warp is the identity."""
    return {k: jnp.float32(0.0) for k in HP_FIELDS}


def affine(shift_Nx2, angle_N, scale_N):
    """``A_Nx2x3``: output (row, col) about the centre -> source position.

    A source point is rotated by ``angle`` (radians), scaled by ``scale`` and
    moved by ``shift`` pixels; this is its inverse, as sampling needs.
    """
    c, s = jnp.cos(angle_N) / scale_N, jnp.sin(angle_N) / scale_N
    rot = jnp.stack([jnp.stack([c, s], -1), jnp.stack([-s, c], -1)], -2)  # N x 2 x 2
    offset = -jnp.einsum("nij,nj->ni", rot, shift_Nx2)
    return jnp.concatenate([rot, offset[..., None]], -1)


def warp(x_NHWC, A_Nx2x3, fill=0.0, disp_NxHxWx2=None):
    """Bilinear resampling of each image at ``A @ (row - cr, col - cc, 1) + centre``.

    Positions outside the image read ``fill`` (the background value), so a
    pure integer shift equals ``np.roll`` with the wrapped pixels set to
    ``fill``; the identity map returns ``x`` exactly.
    """
    n, h, w, _ = x_NHWC.shape
    cr, cc = (h - 1) / 2.0, (w - 1) / 2.0
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - cr,
                              jnp.arange(w, dtype=jnp.float32) - cc, indexing="ij")
    grid_3xHW = jnp.stack([rows.ravel(), cols.ravel(), jnp.ones(h * w, jnp.float32)])
    src_Nx2xHW = jnp.einsum("nij,jp->nip", A_Nx2x3, grid_3xHW)
    src_r = src_Nx2xHW[:, 0].reshape(n, h, w) + cr
    src_c = src_Nx2xHW[:, 1].reshape(n, h, w) + cc
    if disp_NxHxWx2 is not None:
        src_r = src_r + disp_NxHxWx2[..., 0]
        src_c = src_c + disp_NxHxWx2[..., 1]
    r0, c0 = jnp.floor(src_r), jnp.floor(src_c)
    fr, fc = (src_r - r0)[..., None], (src_c - c0)[..., None]
    r0, c0 = r0.astype(jnp.int32), c0.astype(jnp.int32)
    flat = x_NHWC.reshape(n, h * w, -1)

    def tap(r, c):
        inside = ((r >= 0) & (r < h) & (c >= 0) & (c < w))[..., None]
        idx = (jnp.clip(r, 0, h - 1) * w + jnp.clip(c, 0, w - 1)).reshape(n, h * w)
        vals = jnp.take_along_axis(flat, idx[..., None], axis=1).reshape(x_NHWC.shape)
        return jnp.where(inside, vals, jnp.asarray(fill, x_NHWC.dtype))

    top = tap(r0, c0) * (1 - fc) + tap(r0, c0 + 1) * fc
    bottom = tap(r0 + 1, c0) * (1 - fc) + tap(r0 + 1, c0 + 1) * fc
    return top * (1 - fr) + bottom * fr


def _gaussian_blur(field_NxHxW, sigma: float):
    """Gaussian smoothing along both axes (zero padding, normalised kernel,
    radius 3 sigma) as two small matrix products."""
    def matrix(n):
        t = jnp.arange(n, dtype=jnp.float32)
        d = t[:, None] - t[None, :]
        radius = max(1, int(math.ceil(3 * sigma)))
        k = jnp.where(jnp.abs(d) <= radius, jnp.exp(-0.5 * (d / sigma) ** 2), 0.0)
        z = jnp.exp(-0.5 * (jnp.arange(-radius, radius + 1) / sigma) ** 2).sum()
        return k / z
    _, h, w = field_NxHxW.shape
    return jnp.einsum("ij,njk,lk->nil", matrix(h), field_NxHxW, matrix(w))


def draw(key, n: int, hw: tuple[int, int], hp, elastic_sigma: float = 0.0):
    """``(A_Nx2x3, disp_NxHxWx2 or None)`` for ``n`` images from one key."""
    k_shift, k_rot, k_scale, k_el = jax.random.split(key, 4)
    shift = hp["aug_shift"] * jax.random.uniform(k_shift, (n, 2), minval=-1.0, maxval=1.0)
    angle = (hp["aug_rotate"] * math.pi / 180.0) * jax.random.uniform(
        k_rot, (n,), minval=-1.0, maxval=1.0)
    scale = 1.0 + hp["aug_scale"] * jax.random.uniform(k_scale, (n,), minval=-1.0, maxval=1.0)
    disp = None
    if elastic_sigma > 0:
        noise = jax.random.uniform(k_el, (2 * n, *hw), minval=-1.0, maxval=1.0)
        field = _gaussian_blur(noise, float(elastic_sigma)).reshape(2, n, *hw)
        disp = hp["aug_elastic"] * jnp.moveaxis(field, 0, -1)
    return affine(shift, angle, scale), disp


def augment(key, x_NHWC, hp, fill, elastic_sigma: float = 0.0):
    """``x`` with one random warp per image (magnitudes from ``hp``)."""
    A, disp = draw(key, x_NHWC.shape[0], x_NHWC.shape[1:3], hp, elastic_sigma)
    return warp(x_NHWC, A, fill, disp)
