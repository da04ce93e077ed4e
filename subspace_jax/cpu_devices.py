"""Every CPU core busy: one XLA CPU device per core, set before JAX starts.

XLA's CPU backend runs one compiled program per device; with a single
device, the small matmuls of a training step keep about one core busy.
Presenting each core as a device (``--xla_force_host_platform_device_count``)
lets ``vectorize`` shard the run axis (seeds, or hyperparameter rows) across
cores: measured on this project's 2-core Intel Xeon machine (2026-12-02), the
intrinsic_dimension grid unit of fc_200_200 (3 seeds x 6 subspace sizes, one
epoch) took 26.3 s with 2 devices and 38.6 s with 1. A run axis that does not
divide the device count runs on one device, as before.

``launch.py`` calls ``configure()`` before anything imports JAX. The default
is one device per core this process may use; ``SUBSPACE_JAX_CPU_DEVICES=N``
sets N (1 restores a single device), and an ``XLA_FLAGS`` that already names
the flag is left alone. It only concerns the CPU platform: on a GPU the GPU
stays JAX's default backend. Numbers can differ from a single-device run
within float tolerance (runs are batched in groups of another size), and are
the same run to run for a given device count.
"""

from __future__ import annotations

import os
from typing import MutableMapping

from subspace_jax.errors import InputError

ENV = "SUBSPACE_JAX_CPU_DEVICES"
FLAG = "--xla_force_host_platform_device_count"


def cores() -> int:
    """The cores this process may run on (its affinity), else ``os.cpu_count()``."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def configure(environ: MutableMapping[str, str] | None = None) -> int | None:
    """Sets ``XLA_FLAGS`` for one CPU device per core (or ``$SUBSPACE_JAX_CPU_DEVICES``).

    Returns the device count asked for, or None when ``XLA_FLAGS`` already
    names it. Call before JAX is imported: JAX reads the flag once, when its
    CPU backend starts.
    """
    environ = os.environ if environ is None else environ
    flags = environ.get("XLA_FLAGS", "")
    if FLAG in flags:
        return None
    value = environ.get(ENV, "").strip()
    if value in ("", "auto"):
        n = cores()
    else:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise InputError(f"{ENV}={value!r}: must be a whole number >= 1 (CPU devices) or "
                             f"'auto' (one per core: {cores()} here)")
    environ["XLA_FLAGS"] = f"{flags} {FLAG}={n}".strip()
    return n
