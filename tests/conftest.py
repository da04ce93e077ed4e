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
