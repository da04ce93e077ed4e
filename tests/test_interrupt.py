"""Ctrl-C within a unit, resume from its last epoch, and one process per workdir."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from subspace_jax import config as C
from subspace_jax import models, sweep, train, vectorize, workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dat(synthetic):
    return train.Data.from_dataset(synthetic)


def subspace_unit(synthetic, epochs=3):
    cfg = C.train_config(epochs=epochs, batch_size=32, eval_chunk=64)
    run = train.make_run(models.get("zoo_fc16"), cfg, C.subspace_config(20), len(synthetic.train_y))
    hp = {"learning_rate": np.float32([0.03, 0.1]), "weight_decay": np.float32([0, 0]),
          "d_active": np.int32([10, 20])}
    return run, vectorize.run_keys([0, 1]), hp


def test_chunks_give_the_numbers_of_one_program(synthetic, dat):
    run, keys, hp = subspace_unit(synthetic)
    whole = jax.device_get(vectorize.vmapped(run, keys, hp, dat))
    chunked = jax.device_get(vectorize.vmapped_chunks(run, keys, hp, dat))
    for k in whole.history:
        np.testing.assert_allclose(chunked.history[k], whole.history[k], rtol=1e-5, atol=1e-6)
    for k in whole.final:
        np.testing.assert_allclose(chunked.final[k], whole.final[k], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked.params, whole.params, rtol=1e-5, atol=1e-6)


class StopAfter(workdir.Checkpoint):
    """A checkpoint whose process receives SIGINT (Ctrl-C) right after saving epoch ``n``."""

    def __init__(self, path, n):
        super().__init__(path)
        self.n = n

    def save(self, epoch, carry, history):
        super().save(epoch, carry, history)
        if epoch == self.n:
            os.kill(os.getpid(), signal.SIGINT)


def test_interrupted_unit_resumes_with_the_same_numbers(synthetic, dat, tmp_path):
    run, keys, hp = subspace_unit(synthetic)
    plain = jax.device_get(vectorize.vmapped_chunks(run, keys, hp, dat))
    path = str(tmp_path / "u.partial.npz")
    with pytest.raises(KeyboardInterrupt):
        vectorize.vmapped_chunks(run, keys, hp, dat, StopAfter(path, 2))
    assert os.path.exists(path)
    resumed_from = []

    class Watch(workdir.Checkpoint):
        def load(self, like, epochs):
            got = super().load(like, epochs)
            resumed_from.append(None if got is None else got[0])
            return got

    again = jax.device_get(vectorize.vmapped_chunks(run, keys, hp, dat, Watch(path)))
    assert resumed_from == [2]  # it did not start over
    np.testing.assert_array_equal(again.history["val_acc"], plain.history["val_acc"])
    np.testing.assert_array_equal(again.final["test_acc"], plain.final["test_acc"])
    np.testing.assert_array_equal(again.params, plain.params)


def test_a_checkpoint_that_does_not_fit_is_ignored(synthetic, dat, tmp_path):
    run, keys, hp = subspace_unit(synthetic)
    path = str(tmp_path / "u.partial.npz")
    with pytest.raises(KeyboardInterrupt):
        vectorize.vmapped_chunks(run, keys, hp, dat, StopAfter(path, 1))
    other, keys1, hp1 = subspace_unit(synthetic)
    like = jax.eval_shape(vectorize._stage(other.stages.start, ("seed", "row", "shared"), 1, 2),
                          keys1[:1], hp1, dat)
    assert workdir.Checkpoint(path).load(like, 3) is None  # 1 seed, not 2: starts afresh


def test_run_units_removes_the_checkpoint_of_a_finished_unit(synthetic, dat, tmp_path):
    run, _, hp = subspace_unit(synthetic, epochs=2)
    wd = workdir.Workdir(str(tmp_path))
    unit = sweep.Unit("u", {"x": 1}, lambda uid: sweep.run_unit(run, [0, 1], hp, dat, {}))
    sweep.run_units(wd, [unit], "t")
    assert wd.run_record(unit.id) is not None
    assert not os.path.exists(wd.checkpoint(unit.id).path)


def test_second_process_into_a_workdir_refuses(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from subspace_jax import workdir; "
         f"workdir.Lock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(workdir.WorkdirBusy, match=f"in use by process {holder.pid}"):
            workdir.Lock(str(tmp_path)).acquire()
        out = subprocess.run([sys.executable, "launch.py", "--experiment=zoo", "--quick",
                              f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 2, out.stderr
        (line,) = out.stderr.strip().splitlines()
        assert str(tmp_path) in line and str(holder.pid) in line
        assert not os.path.exists(tmp_path / "config.json")  # refused before writing
    finally:
        holder.kill()
        holder.wait()
    # The holder is dead: its lock is stale and is taken over, then released.
    with workdir.Lock(str(tmp_path)) as lock:
        assert json.load(open(lock.file))["pid"] == os.getpid()
    assert not os.path.exists(tmp_path / workdir.LOCK_FILE)


def test_a_failed_write_leaves_the_previous_file_and_no_partial_one(tmp_path):
    wd = workdir.Workdir(str(tmp_path))
    wd.save_npz("runs/a.npz", {"x": np.arange(3)})
    wd.write_text("t.txt", "old\n")

    class Boom(Exception):
        pass

    def half_written(*_, **__):
        raise Boom  # as if the process died while numpy wrote the archive

    for write in (lambda: wd.save_npz("runs/a.npz", {"x": np.zeros(9), "y": half_written}),
                  lambda: wd.save_npy("runs/a.npz", half_written)):
        with pytest.raises(Exception):
            write()
    with pytest.raises(Boom):
        with workdir.atomic(wd.file("t.txt"), "w") as f:
            f.write("new, half")
            raise Boom
    with np.load(wd.file("runs/a.npz")) as z:
        assert z.files == ["x"] and list(z["x"]) == [0, 1, 2]
    assert open(wd.file("t.txt")).read() == "old\n"
    assert sorted(os.listdir(tmp_path / "runs")) == ["a.npz"]  # no temporary file left
    assert sorted(os.listdir(tmp_path)) == ["runs", "t.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(wd.file("t.txt")).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    wd.save_npz("m.npz", {"m": np.ones(4, bool)}, compressed=True)
    with np.load(wd.file("m.npz")) as z:
        assert z["m"].all()


def test_metrics_of_a_unit_logged_twice_keep_the_later_rows(tmp_path):
    """A unit re-run after a crash between its rows and its record logs again."""
    wd = workdir.Workdir(str(tmp_path))
    assert wd.metrics("u", ("seed", "epoch")) == []
    wd.append_metrics([{"unit": "u", "seed": 0, "epoch": e, "val_acc": 0.1 * e} for e in (1, 2)])
    wd.append_metrics([{"unit": "v", "seed": 0, "epoch": 1, "val_acc": 0.9}])
    wd.append_metrics([{"unit": "u", "seed": 0, "epoch": e, "val_acc": 0.5 * e} for e in (1, 2)])
    got = wd.metrics("u", ("seed", "epoch"))
    assert [(r["epoch"], r["val_acc"]) for r in got] == [(1, 0.5), (2, 1.0)]


def test_one_compiled_run_ticks_to_the_label_that_is_current(synthetic, dat):
    """Two labels through one run: one trace, each block's own label on every
    epoch, and no tick lost or stray."""
    import io

    cfg = C.train_config(epochs=2, batch_size=32, eval_chunk=64)
    run = train.make_run(models.get("zoo_fc16"), cfg, C.subspace_config(0),
                         len(synthetic.train_y), workdir.tick)
    traces = []

    def counted(key, hp, data):
        traces.append(None)
        return run(key, hp, data)

    hp = {"learning_rate": np.float32([0.03, 0.1]), "weight_decay": np.float32([0, 0]),
          "d_active": np.int32([0, 0])}
    streams = {}
    for label in ("first", "second"):
        streams[label] = io.StringIO()
        with workdir.ticking(label, cfg.epochs, stream=streams[label]):
            vectorize.vmapped(counted, vectorize.run_keys([0, 1]), hp, dat)  # not blocked on
    assert len(traces) == 1
    for label, stream in streams.items():
        lines = [line.split("  elapsed")[0] for line in stream.getvalue().splitlines()]
        assert lines == [f"  {label}: epoch {e}/2" for e in (1, 2)]
    workdir.tick(0, 0.5)  # no ticker current: nothing happens


def test_a_tick_that_lands_late_still_goes_to_its_block(monkeypatch):
    """On an asynchronous backend a run's callbacks can fire after the Python
    call returned (on CPU they do not): the block waits for them (here a
    stand-in ``jax.effects_barrier`` delivers one) before the next label."""
    import io

    monkeypatch.setattr(jax, "effects_barrier", lambda: workdir.tick(1))
    late, nxt = io.StringIO(), io.StringIO()
    with workdir.ticking("late", 2, stream=late):
        workdir.tick(0)
    with workdir.ticking("next", 2, stream=nxt):
        pass
    assert [line.split("  elapsed")[0] for line in late.getvalue().splitlines()] == [
        "  late: epoch 1/2", "  late: epoch 2/2"]
    assert nxt.getvalue().count("next: epoch 2/2") == 1  # its own stand-in tick only


def test_a_resumed_ticker_starts_at_its_first_epoch():
    import io

    stream = io.StringIO()
    ticker = workdir.EpochTicker("resumed", 5, stream)
    ticker(2)
    ticker(3)  # epoch 3 first: no rate from an epoch 1 it never saw
    assert [line.split("  elapsed")[0] for line in stream.getvalue().splitlines()] == [
        "  resumed: epoch 3/5", "  resumed: epoch 4/5"]
