"""Bad input: one line on stderr naming the field or file and what is valid,
exit code 2, nothing written; nothing clamped into range.

The subprocess tests fail in validation, before JAX compiles anything (~3 s
each, mostly imports); the rest call the same checks in-process.
"""

import gzip
import importlib
import os
import shutil
import subprocess
import sys

import jax
import pytest

import launch
from subspace_jax import checks, data, errors, subspace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _truncated_copy(tmp_path):
    d = tmp_path / "mnist"
    shutil.copytree(data.DEFAULT_DIR, d)
    blob = (d / "train-labels-idx1-ubyte.gz").read_bytes()
    (d / "train-labels-idx1-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    return d


# (experiment, override, words the one line must contain): one per path to the
# one line (a check, the tuple kinds, absl's parsing, the data); the other
# values are tested in-process below.
CASES = [
    ("zoo", "--config.train.learning_rate=nan", ["config.train.learning_rate", "finite"]),
    ("subspace_sweep", "--config.projection=sparse:nnz=-5", ["config.projection", "nnz", ">= 1"]),
    ("subspace_sweep", "--config.subspace_learning_rates=(nan,)",
     ["config.subspace_learning_rates", "tuple literal"]),
    ("subspace_sweep", "--config.dims=(1,2", ["config.dims"]),
    ("zoo", "--config.data.data_dir=/nonexistent/mnist", ["data.data_dir", "no such directory"]),
    ("zoo", "TRUNCATED", ["train-labels-idx1-ubyte", data.SHA256["train-labels-idx1-ubyte"],
                          "fix"]),
]


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path):
    """All cases at once (launched in parallel: the cost is the imports)."""
    truncated = _truncated_copy(tmp_path)
    procs = []
    for i, (name, override, _) in enumerate(CASES):
        if override == "TRUNCATED":
            override = f"--config.data.data_dir={truncated}"
        workdir = tmp_path / f"wd{i}"
        procs.append((workdir, subprocess.Popen(
            [sys.executable, "launch.py", f"--experiment={name}", "--quick",
             f"--workdir={workdir}", override], cwd=ROOT, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    for (workdir, proc), (name, override, words) in zip(procs, CASES):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (override, err[-2000:])
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("launch.py: "), (override, err[-2000:])
        for word in words:
            assert word in lines[0], (override, word, lines[0])
        assert "Traceback" not in err
        assert not workdir.exists(), override  # validated before anything is written


def _validate(name, **fields):
    module = importlib.import_module(f"experiments.{name}")
    cfg, default = module.get_config(quick=True), module.get_config(quick=True)
    for path, value in fields.items():
        *parents, leaf = path.split("__")
        node = cfg
        for p in parents:
            node = node[p]
        node[leaf] = value
    launch.validate(module, cfg, default)


@pytest.mark.parametrize("name,path,value", [
    ("zoo", "train__learning_rate", float("inf")),
    ("zoo", "learning_rates", (1e-3, 0.0)),
    ("subspace_sweep", "subspace_learning_rates", (float("nan"),)),
    ("intrinsic_dimension", "subspace_learning_rate", -0.05),
    ("golf", "space__learning_rate", (1e-3, float("inf"))),
    ("golf_prune", "finetune__learning_rate", 0.0),
    ("golf_prune", "bootstrap__learning_rate", float("nan")),
    ("interpret", "ascent_lr", 0.0),
    ("wann", "tune__learning_rate", -1.0),
    ("memorization", "distill__learning_rate", float("nan")),
    ("lottery", "train__learning_rate", 0.0),
    ("zoo", "train__weight_decay", -1e-4),
    ("golf_records", "train__hexhowells_820__learning_rate", 0.0),
])
def test_learning_rates_must_be_finite_and_positive(name, path, value):
    field = path.replace("__", ".")
    with pytest.raises(errors.ConfigError, match=f"config.{field}"):
        _validate(name, **{path: value})


@pytest.mark.parametrize("name,path,value,match", [
    ("intrinsic_dimension", "grid", (16, 10**6), "exceed the 12,730 parameters of zoo_fc16"),
    ("subspace_sweep", "dims", (10, 10**5), "exceed the 3,369 parameters of zoo_cnn_small"),
    ("pruning_compare", "densities", (-0.5,), "config.densities"),
    ("zoo", "train__learning_rate", -1e-3, "config.train.learning_rate"),
    ("memorization", "dims", (10, 10**6), "exceed the 50,890 parameters"),
    ("subspace_sweep", "dims", (0, 10), "config.dims"),
    ("memorization", "densities", (0.3, -0.1), "config.densities"),
    ("lottery", "rate", -0.2, "config.rate"),
    ("lottery", "seeds", (), "config.seeds"),
    ("intrinsic_dimension", "projection", "sparse:nnz=0", "config.projection"),
    ("memorization", "projection", "sparse:nnz=1000000", "D=50890"),
    ("zoo", "train__batch_size", 0, "config.train.batch_size"),
    ("zoo", "train__optimizer", "adagrad", "config.train.optimizer"),
    ("zoo", "data__random_label_fraction", float("nan"), "config.data.random_label_fraction"),
    ("golf_records", "recipes", ("nope",), "config.recipes"),
    ("golf_records", "seeds", (0, 0), "config.seeds"),
])
def test_bad_values_name_the_field(name, path, value, match):
    with pytest.raises(errors.InputError, match=match.replace("(", r"\(").replace(".", r"\.")):
        _validate(name, **{path: value})


def test_every_quick_config_passes_validation():
    for name in ("golf", "golf_prune", "golf_records", "interpret", "intrinsic_dimension", "lottery",
                 "memorization", "pruning_compare", "subspace_sweep", "wann", "zoo"):
        _validate(name)


def test_tuple_override_must_keep_the_element_kind():
    default = importlib.import_module("experiments.subspace_sweep").get_config(True)
    cfg = importlib.import_module("experiments.subspace_sweep").get_config(True)
    cfg.dims = ("(10,",)  # what ml_collections keeps of an unparsable '(10,'
    with pytest.raises(errors.ConfigError, match="config.dims"):
        checks.overrides(cfg, default)
    cfg.dims = (10, 20)
    checks.overrides(cfg, default)


@pytest.mark.parametrize("nnz", [0, -5, 65])
def test_sparse_nnz_outside_1_to_D_is_an_error_not_clamped(nnz):
    with pytest.raises(errors.ConfigError, match="nnz"):
        subspace.make_projection(f"sparse:nnz={nnz}", jax.random.key(0), 64, 4)
    with pytest.raises(errors.ConfigError, match="nnz"):
        subspace.projection_matrix("sparse", jax.random.key(0), 64, 4, nnz=nnz)
    subspace.make_projection("sparse:nnz=64", jax.random.key(0), 64, 4)  # nnz = D is valid


def test_data_check_catches_what_loading_would(tmp_path):
    cfg = importlib.import_module("experiments.zoo").get_config(True).data
    data.check(cfg)  # the shipped files pass
    cfg.data_dir = str(_truncated_copy(tmp_path))
    with pytest.raises(data.DataError, match=data.SHA256["train-labels-idx1-ubyte"]) as e:
        data.check(cfg)
    assert e.value.__cause__ is None and e.value.__suppress_context__  # no chained traceback
    cfg.data_dir, cfg.val_size = "", 60_000
    with pytest.raises(data.DataError, match="data.val_size"):
        data.check(cfg)


def test_prepare_loads_data_before_writing_the_workdir(tmp_path):
    from subspace_jax import sweep
    cfg = importlib.import_module("experiments.zoo").get_config(True)
    cfg.data.data_dir = str(tmp_path / "missing")
    with pytest.raises(data.DataError, match="no such directory"):
        sweep.prepare(cfg, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


def test_uncompressed_truncated_file_names_the_expected_checksum(tmp_path):
    d = tmp_path / "mnist"
    shutil.copytree(data.DEFAULT_DIR, d)
    raw = gzip.open(d / "t10k-labels-idx1-ubyte.gz").read()
    os.remove(d / "t10k-labels-idx1-ubyte.gz")
    (d / "t10k-labels-idx1-ubyte").write_bytes(raw[:-10])
    with pytest.raises(data.DataError, match=data.SHA256["t10k-labels-idx1-ubyte"]):
        data.load(data_dir=str(d))
