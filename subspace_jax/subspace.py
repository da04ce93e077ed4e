"""Random subspaces: theta_D = theta0_D + P_Dxd @ omega_d.

The foundation ships the dense Gaussian projection with unit-norm columns.
Runs of several subspace sizes share one ``P`` of the largest ``d`` and mask
off columns (``d_active``), so a sweep over ``d`` compiles once and, when the
runs share a projection key, keeps a single ``P`` in memory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PROJECTIONS = ("dense",)


def dense_projection(key, D: int, d: int, dtype=jnp.float32):
    """Gaussian ``P_Dxd`` with every column normalised to unit length over all D."""
    P_Dxd = jax.random.normal(key, (D, d), dtype)
    return P_Dxd / jnp.linalg.norm(P_Dxd, axis=0, keepdims=True)


def make_projection(kind: str, key, D: int, d: int):
    """Returns ``project(omega_d) -> delta_D``."""
    if kind == "dense":
        P_Dxd = dense_projection(key, D, d)
        return lambda omega_d: P_Dxd @ omega_d
    raise ValueError(f"Unknown projection {kind!r} (config field subspace.projection); "
                     f"valid: {', '.join(PROJECTIONS)}.")


def column_mask(d_max: int, d_active):
    """1.0 for the first ``d_active`` of ``d_max`` columns, else 0.0 (traceable)."""
    return (jnp.arange(d_max) < d_active).astype(jnp.float32)
