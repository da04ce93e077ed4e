"""The default of one XLA CPU device per core, its override and its errors."""

import os
import subprocess
import sys

import pytest

from subspace_jax import cpu_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


XLA_DOTS = {cpu_devices.DOTS_ENV: "xla"}


def test_default_is_one_device_per_core():
    env = {"XLA_FLAGS": "--xla_cpu_foo=1", **XLA_DOTS}
    assert cpu_devices.configure(env) == cpu_devices.cores()
    assert env["XLA_FLAGS"] == f"--xla_cpu_foo=1 {cpu_devices.FLAG}={cpu_devices.cores()}"


def test_override_and_an_existing_flag_win():
    env = {cpu_devices.ENV: "3", **XLA_DOTS}
    assert cpu_devices.configure(env) == 3 and env["XLA_FLAGS"] == f"{cpu_devices.FLAG}=3"
    mine = {"XLA_FLAGS": f"{cpu_devices.FLAG}=5", cpu_devices.ENV: "2", **XLA_DOTS}
    assert cpu_devices.configure(mine) is None and mine["XLA_FLAGS"] == f"{cpu_devices.FLAG}=5"


def test_ynn_dots_by_default_on_a_new_jaxlib_and_an_existing_flag_wins(monkeypatch):
    monkeypatch.setattr(cpu_devices, "_jaxlib_version", lambda: (0, 10))
    env = {cpu_devices.ENV: "1"}
    cpu_devices.configure(env)
    assert env["XLA_FLAGS"] == f"{cpu_devices.YNN_FLAG}=dot {cpu_devices.FLAG}=1"
    mine = {"XLA_FLAGS": f"{cpu_devices.YNN_FLAG}= {cpu_devices.FLAG}=1"}
    cpu_devices.configure(mine)  # an empty list: the user turned YNN fusions off
    assert mine["XLA_FLAGS"] == f"{cpu_devices.YNN_FLAG}= {cpu_devices.FLAG}=1"
    monkeypatch.setattr(cpu_devices, "_jaxlib_version", lambda: (0, 9))
    old = {cpu_devices.ENV: "1"}
    cpu_devices.configure(old)  # an older jaxlib would abort on the unknown flag
    assert old["XLA_FLAGS"] == f"{cpu_devices.FLAG}=1"


def test_bad_dots_names_the_variable():
    with pytest.raises(ValueError, match=f"{cpu_devices.DOTS_ENV}='mkl'.*'ynn'.*'xla'"):
        cpu_devices.configure({cpu_devices.DOTS_ENV: "mkl"})


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_bad_override_names_the_variable(value):
    with pytest.raises(ValueError, match=f"{cpu_devices.ENV}='{value}'.*>= 1"):
        cpu_devices.configure({cpu_devices.ENV: value})


def test_launch_gives_one_line_and_exit_2_for_a_bad_override(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env[cpu_devices.ENV] = "0"
    out = subprocess.run([sys.executable, "launch.py", "--experiment=zoo", "--quick",
                          f"--workdir={tmp_path / 'w'}"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert cpu_devices.ENV in line and not (tmp_path / "w").exists()


def test_jax_sees_the_devices_asked_for():
    code = ("from subspace_jax import cpu_devices; cpu_devices.configure(); "
            "import jax; print(jax.device_count())")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env[cpu_devices.ENV] = "2"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "2"
