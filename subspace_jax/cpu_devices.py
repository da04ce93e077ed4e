"""Every CPU core busy: one XLA CPU device per core, set before JAX starts.

XLA's CPU backend runs one compiled program per device; with a single
device, the small matmuls of a training step keep about one core busy.
Presenting each core as a device (``--xla_force_host_platform_device_count``)
lets ``vectorize`` shard the run axis (seeds, or hyperparameter rows) across
cores: measured on this project's 2-core Intel Xeon machine (2026-12-02), the
intrinsic_dimension grid unit of fc_200_200 (3 seeds x 6 subspace sizes, one
epoch) took 26.3 s with 2 devices and 38.6 s with 1. Seeds that do not divide
the device count are padded with copies (``vectorize.seed_padding``);
hyperparameter rows that do not divide it run on one device.

``launch.py`` calls ``configure()`` before anything imports JAX. The default
is one device per core this process may use; ``SUBSPACE_JAX_CPU_DEVICES=N``
sets N (1 restores a single device), and an ``XLA_FLAGS`` that already names
the flag is left alone. It only concerns the CPU platform: on a GPU the GPU
stays JAX's default backend. Numbers can differ from a single-device run
within float tolerance (runs are batched in groups of another size), and are
the same run to run for a given device count.

It also routes XLA's CPU dots (matmuls) through YNNPACK
(``--xla_cpu_experimental_ynn_fusion_type=dot``, jaxlib >= 0.10): on the
same machine (2026-12-03, one device, scanned Adam steps) the conv net trained
at 13,700 img/s with it and 11,200 without, the 820-param golf net at 32,300
and 21,700; results agree to float rounding (max |diff| 3e-8 after 50 steps)
and are bitwise the same run to run. ``SUBSPACE_JAX_CPU_DOTS=xla`` keeps XLA's
own dots; an ``XLA_FLAGS`` that names the YNN flag is left alone.
"""

from __future__ import annotations

import os
from typing import MutableMapping

from subspace_jax.errors import InputError

ENV = "SUBSPACE_JAX_CPU_DEVICES"
FLAG = "--xla_force_host_platform_device_count"
DOTS_ENV = "SUBSPACE_JAX_CPU_DOTS"
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
YNN_MIN_JAXLIB = (0, 10)  # the flag is unknown to (and fatal for) older jaxlibs


def cores() -> int:
    """The cores this process may run on (its affinity), else ``os.cpu_count()``."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def configure(environ: MutableMapping[str, str] | None = None) -> int | None:
    """Sets ``XLA_FLAGS`` for one CPU device per core (or ``$SUBSPACE_JAX_CPU_DEVICES``)
    and for YNNPACK dots (unless ``$SUBSPACE_JAX_CPU_DOTS`` is ``xla``).

    Returns the device count asked for, or None when ``XLA_FLAGS`` already
    names it. Call before JAX is imported: JAX reads the flags once, when its
    CPU backend starts.
    """
    environ = os.environ if environ is None else environ
    flags = environ.get("XLA_FLAGS", "")
    dots = environ.get(DOTS_ENV, "").strip() or "ynn"
    if dots not in ("ynn", "xla"):
        raise InputError(f"{DOTS_ENV}={dots!r}: must be 'ynn' (YNNPACK matmuls, the default) "
                         "or 'xla' (XLA's own)")
    if dots == "ynn" and YNN_FLAG not in flags and _jaxlib_version() >= YNN_MIN_JAXLIB:
        flags = f"{flags} {YNN_FLAG}=dot".strip()
    n = None
    if FLAG not in flags:
        value = environ.get(ENV, "").strip()
        if value in ("", "auto"):
            n = cores()
        else:
            try:
                n = int(value)
            except ValueError:
                n = 0
            if n < 1:
                raise InputError(f"{ENV}={value!r}: must be a whole number >= 1 (CPU devices) "
                                 f"or 'auto' (one per core: {cores()} here)")
        flags = f"{flags} {FLAG}={n}".strip()
    environ["XLA_FLAGS"] = flags
    return n


def _jaxlib_version() -> tuple[int, ...]:
    """jaxlib's installed version, read without starting JAX; (0,) if unknown."""
    from importlib import metadata
    try:
        return tuple(int(p) for p in metadata.version("jaxlib").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return (0,)
