"""Runs one experiment: python launch.py --experiment=subspace_sweep [--quick]
[--workdir=DIR] [--config.FIELD=VALUE ...].

Each experiment is ``experiments/NAME.py`` with ``get_config(quick)`` and
``run(config, workdir)``; see README.md for what each writes.
"""

import importlib
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from experiments import available

flags.DEFINE_string("experiment", None, f"one of: {', '.join(available())}")
flags.DEFINE_bool("quick", False, "the experiment's seconds-long smoke form")
flags.DEFINE_string("workdir", None, "output directory (default: runs/<experiment>[_quick])")
FLAGS = flags.FLAGS


def _fields(cfg, prefix=""):
    for key, value in cfg.items():
        if hasattr(value, "items"):
            yield from _fields(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def check_overrides(cfg, argv) -> None:
    """Exits with the list of valid fields if an override names an unknown one."""
    valid = sorted(_fields(cfg))
    for arg in argv:
        if arg.startswith("--config."):
            field = arg[len("--config."):].split("=", 1)[0]
            if field not in valid:
                sys.exit(f"launch.py: unknown config field {field!r} for experiment "
                         f"{FLAGS.experiment}; valid fields: {', '.join(valid)}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    importlib.import_module("subspace_jax.vectorize").maybe_initialize_distributed()  # if JAX_* set
    config = FLAGS.config
    workdir = FLAGS.workdir or os.path.join(
        "runs", FLAGS.experiment + ("_quick" if FLAGS.quick else ""))
    module = importlib.import_module(f"experiments.{FLAGS.experiment}")
    print(f"experiment {FLAGS.experiment} -> {os.path.abspath(workdir)}", flush=True)
    module.run(config, workdir)


if __name__ == "__main__":
    FLAGS(sys.argv, known_only=True)  # learn --experiment/--quick to build the config flag
    if FLAGS.experiment not in available():
        sys.exit(f"launch.py: --experiment={FLAGS.experiment!r} is not an experiment; "
                 f"valid: {', '.join(available())}")
    config_module = importlib.import_module(f"experiments.{FLAGS.experiment}")
    config = config_module.get_config(FLAGS.quick)
    check_overrides(config, sys.argv[1:])
    config_flags.DEFINE_config_dict("config", config,
                                    "experiment config; override fields with --config.FIELD=VALUE")
    FLAGS.unparse_flags()
    app.run(main)
