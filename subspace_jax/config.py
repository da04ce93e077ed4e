"""Shared config pieces (ml_collections.ConfigDict).

ml_collections is used rather than hand-written dataclasses because it gives
typed, locked configs with dotted command-line overrides
(``--config.train.epochs=3``) and a clear error for unknown fields, for free.
"""

from __future__ import annotations

import ml_collections


def data_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        source="idx",            # idx | tfds | synthetic
        name="mnist",            # tfds dataset name (fashion_mnist, kmnist, cifar10, ...)
        data_dir="",             # '' = the shipped data/mnist (idx) or tfds default
        val_size=10_000,         # the last val_size training images
        random_label_fraction=0.0,
        permute_pixels=False,
        seed=0,                  # label noise and pixel permutation only
        synthetic_size=512,
        train_size=0,            # use only the first train_size training images (0 = all)
    ))


def train_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(dict(
        optimizer="adam",        # adam | adamw | sgd
        learning_rate=1e-3,
        weight_decay=0.0,
        momentum=0.9,            # sgd only
        schedule="constant",     # constant | cosine | warmup_cosine
        warmup_epochs=0.0,
        batch_size=64,
        epochs=1,
        eval_chunk=500,          # evaluation batch (memory bound, not numerics)
        keep_best=True,          # keep the params of the best validation epoch
    ))
    cfg.update(overrides)
    return cfg


def subspace_config(d_max: int = 0, projection: str = "dense") -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(d_max=d_max, projection=projection))

