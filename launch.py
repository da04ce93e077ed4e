"""Runs one experiment: python launch.py --experiment=subspace_sweep [--quick]
[--workdir=DIR] [--config.FIELD=VALUE ...].

Each experiment is ``experiments/NAME.py`` with ``get_config(quick)``,
``validate(config)`` and ``run(config, workdir)``; see README.md for what each
writes.

Bad input is caught before anything is written: the overrides' tuple types,
``module.validate(config)``, then the data (``data.check``: options, files and
their SHA-256, about 1 s). The project's own errors (``errors.InputError``:
bad config, data or model file), there or later in ``run``, print ONE line on
stderr and exit with code 2; any other exception is a bug and keeps its
traceback.

On a CPU each core is presented as one XLA device (``subspace_jax.cpu_devices``;
``SUBSPACE_JAX_CPU_DEVICES=N`` overrides), so vmapped runs are sharded over cores,
and its matmuls go through YNNPACK (``SUBSPACE_JAX_CPU_DOTS=xla`` keeps XLA's own).

One process at a time writes into a workdir (``workdir.Lock``: a second one
exits 2 naming the first). Ctrl-C takes effect at the end of the running
epoch; what finished is kept and the same command resumes (exit code 130).
"""

import importlib
import os
import sys

if __name__ == "__main__":  # one XLA CPU device per core, before anything imports JAX
    from subspace_jax import cpu_devices, errors as _errors
    try:
        cpu_devices.configure()
    except _errors.InputError as e:
        print(f"launch.py: {e}", file=sys.stderr)
        sys.exit(2)

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import available
from subspace_jax import checks, data, errors, vectorize
from subspace_jax import workdir as workdir_lib

flags.DEFINE_string("experiment", None, f"one of: {', '.join(available())}")
flags.DEFINE_bool("quick", False, "the experiment's seconds-long smoke form")
flags.DEFINE_string("workdir", None, "output directory (default: runs/<experiment>[_quick])")
FLAGS = flags.FLAGS


def check_overrides(cfg, argv) -> None:
    """Exits with the list of valid fields if an override names an unknown one."""
    valid = sorted(path for path, _ in checks.fields(cfg))
    for arg in argv:
        if arg.startswith("--config."):
            field = arg[len("--config."):].split("=", 1)[0]
            if field not in valid:
                fail(f"unknown config field {field!r} for experiment {FLAGS.experiment}; "
                     f"valid fields: {', '.join(valid)}")


def fail(message) -> None:
    """The one line of a user error, exit code 2."""
    print("launch.py: " + " ".join(str(message).split()), file=sys.stderr, flush=True)
    sys.exit(2)


def validate(module, config, default) -> None:
    """Everything checkable before the workdir exists; raises errors.InputError."""
    checks.overrides(config, default)
    module.validate(config)
    if "data" in config:
        data.check(config.data)


def parse_flags(argv):
    """absl's parsing, with a bad value (``--config.train.epochs=x``) as one line."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        fail(e)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:  # JAX's INFO lines (no TPU, ...) would bury a one-line error
        logging.set_verbosity(logging.WARNING)
    vectorize.maybe_initialize_distributed()  # a multi-process run, if JAX_* are set
    config = FLAGS.config
    workdir = FLAGS.workdir or os.path.join(
        "runs", FLAGS.experiment + ("_quick" if FLAGS.quick else ""))
    module = importlib.import_module(f"experiments.{FLAGS.experiment}")
    try:
        validate(module, config, module.get_config(FLAGS.quick))
        with workdir_lib.Lock(workdir):  # a second run into the same workdir refuses
            print(f"experiment {FLAGS.experiment} -> {os.path.abspath(workdir)}", flush=True)
            module.run(config, workdir)
    except errors.InputError as e:
        fail(e)
    except KeyboardInterrupt:
        print(f"launch.py: interrupted; finished units and the running unit's last finished "
              f"epoch are kept in {os.path.abspath(workdir)}: the same command resumes there",
              file=sys.stderr, flush=True)
        sys.exit(130)


if __name__ == "__main__":
    FLAGS(sys.argv, known_only=True)  # learn --experiment/--quick to build the config flag
    if FLAGS.experiment not in available():
        fail(f"--experiment={FLAGS.experiment!r} is not an experiment; "
             f"valid: {', '.join(available())}")
    config_module = importlib.import_module(f"experiments.{FLAGS.experiment}")
    config = config_module.get_config(FLAGS.quick)
    check_overrides(config, sys.argv[1:])
    config_flags.DEFINE_config_dict("config", config,
                                    "experiment config; override fields with --config.FIELD=VALUE")
    FLAGS.unparse_flags()
    app.run(main, flags_parser=parse_flags)
