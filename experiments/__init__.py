"""Experiments: one module each, with ``get_config(quick)`` and ``run(config, workdir)``."""

import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def available() -> list[str]:
    return sorted(f[:-3] for f in os.listdir(_HERE)
                  if f.endswith(".py") and not f.startswith("_"))
