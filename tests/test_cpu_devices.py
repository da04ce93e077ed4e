"""The default of one XLA CPU device per core, its override and its errors."""

import os
import subprocess
import sys

import pytest

from subspace_jax import cpu_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_default_is_one_device_per_core():
    env = {"XLA_FLAGS": "--xla_cpu_foo=1"}
    assert cpu_devices.configure(env) == cpu_devices.cores()
    assert env["XLA_FLAGS"] == f"--xla_cpu_foo=1 {cpu_devices.FLAG}={cpu_devices.cores()}"


def test_override_and_an_existing_flag_win():
    env = {cpu_devices.ENV: "3"}
    assert cpu_devices.configure(env) == 3 and env["XLA_FLAGS"] == f"{cpu_devices.FLAG}=3"
    mine = {"XLA_FLAGS": f"{cpu_devices.FLAG}=5", cpu_devices.ENV: "2"}
    assert cpu_devices.configure(mine) is None and mine["XLA_FLAGS"] == f"{cpu_devices.FLAG}=5"


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
