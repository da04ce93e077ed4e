"""Flax networks to measure with this project, as a researcher would write them.

    python launch.py --experiment=intrinsic_dimension --quick \
        --config.models='("examples.flax_models:SmallCNN",)'

Each factory returns a module; ``subspace_jax.models.get`` turns
``'examples.flax_models:SmallCNN'`` into an ``init(key)``/``apply(params, x)``
model (``models.from_flax``). ``SmallCNN`` is the layer-for-layer twin of the
registered ``zoo_cnn_small`` (3,369 params) and ``MLP`` of ``zoo_fc16``
(12,730); the tests give both the same weights and compare the numbers.
"""

import flax.linen as nn
import jax
from flax import nnx


class SmallCNN(nn.Module):
    """conv 6 k4 + pool, conv 6 k4 + pool, dense 25, dense 10 (VALID convs)."""
    channels: tuple = (6, 6)
    hidden: int = 25

    @nn.compact
    def __call__(self, x_NHWC):
        h = x_NHWC
        for c in self.channels:
            h = nn.max_pool(nn.relu(nn.Conv(c, (4, 4), padding="VALID")(h)), (2, 2), (2, 2))
        h = nn.relu(nn.Dense(self.hidden)(h.reshape(h.shape[0], -1)))
        return nn.Dense(10)(h)


class MLP(nn.Module):
    """784-16-10 with ReLU."""
    hidden: int = 16

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(h)


class NnxMLP(nnx.Module):
    """The same 784-16-10 network written with flax.nnx (built from ``rngs``)."""

    def __init__(self, rngs: nnx.Rngs, hidden: int = 16):
        self.hidden = nnx.Linear(784, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1))))


class WithBatchNorm(nn.Module):
    """Has batch statistics: refused by the adapter with a clear error."""

    @nn.compact
    def __call__(self, x):
        h = nn.BatchNorm(use_running_average=True)(x.reshape(x.shape[0], -1))
        return nn.Dense(10)(h)
