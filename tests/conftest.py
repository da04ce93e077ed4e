import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # experiments/ and launch.py live at the repo root
    sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def synthetic():
    from subspace_jax import data
    return data.load(source="synthetic", val_size=128, synthetic_size=512)


def unit_file(workdir, name: str, suffix: str = ".json"):
    """The one ``runs/<name>_<hash><suffix>`` of a finished unit (ids carry a config hash)."""
    import re
    runs = os.path.join(str(workdir), "runs")
    pattern = re.compile(re.escape(name) + r"_[0-9a-f]{10}" + re.escape(suffix) + "$")
    (found,) = [f for f in os.listdir(runs) if pattern.match(f)]
    return os.path.join(runs, found)


def check_model():
    """tools/check_model.py as a module (it is a script, not part of the package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "check_model", os.path.join(ROOT, "tools", "check_model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
