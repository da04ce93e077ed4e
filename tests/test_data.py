import gzip
import os
import shutil

import numpy as np
import pytest

from subspace_jax import data


@pytest.fixture(scope="module")
def mnist():
    return data.load()


def test_shipped_mnist_verifies_and_splits(mnist):
    assert mnist.train_x.shape == (50_000, 28, 28, 1)
    assert mnist.val_x.shape == (10_000, 28, 28, 1) and mnist.test_x.shape == (10_000, 28, 28, 1)
    assert mnist.train_x.dtype == np.float32 and mnist.train_y.dtype == np.int32
    assert abs(float(mnist.train_x.mean())) < 0.05  # standardised
    assert set(np.unique(mnist.test_y)) == set(range(10))


def test_validation_is_last_training_images(mnist):
    small = data.load(val_size=5_000)
    np.testing.assert_array_equal(small.val_x, mnist.val_x[5_000:])
    np.testing.assert_array_equal(small.train_y[:50_000], mnist.train_y)


def _copy(tmp_path):
    for f in os.listdir(data.DEFAULT_DIR):
        shutil.copy(os.path.join(data.DEFAULT_DIR, f), tmp_path / f)
    return tmp_path


def test_missing_file_names_it(tmp_path):
    d = _copy(tmp_path)
    os.remove(d / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte"):
        data.load(data_dir=str(d))


def test_truncated_file_names_file_and_checksum(tmp_path):
    d = _copy(tmp_path)
    raw = gzip.open(d / "train-labels-idx1-ubyte.gz").read()
    with gzip.open(d / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(raw[:-100])
    with pytest.raises(data.DataError) as e:
        data.load(data_dir=str(d))
    assert "train-labels-idx1-ubyte" in str(e.value)
    assert data.SHA256["train-labels-idx1-ubyte"] in str(e.value)


def test_altered_uncompressed_file_is_rejected(tmp_path):
    d = _copy(tmp_path)
    raw = bytearray(gzip.open(d / "t10k-labels-idx1-ubyte.gz").read())
    raw[100] = (raw[100] + 1) % 10  # one label changed
    os.remove(d / "t10k-labels-idx1-ubyte.gz")
    (d / "t10k-labels-idx1-ubyte").write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match="truncated or altered"):
        data.load(data_dir=str(d))


def test_corrupt_gzip_is_a_clear_error(tmp_path):
    d = _copy(tmp_path)
    blob = (d / "t10k-images-idx3-ubyte.gz").read_bytes()
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(data.DataError, match="t10k-images-idx3-ubyte"):
        data.load(data_dir=str(d))


def test_random_labels_fraction_and_determinism(mnist):
    noisy = data.load(random_label_fraction=0.5, seed=3)
    changed = np.mean(noisy.train_y != mnist.train_y)
    assert 0.40 < changed < 0.50  # half relabelled, a tenth of those by chance the same
    np.testing.assert_array_equal(noisy.val_y, mnist.val_y)  # only train labels
    np.testing.assert_array_equal(noisy.test_y, mnist.test_y)
    again = data.load(random_label_fraction=0.5, seed=3)
    np.testing.assert_array_equal(noisy.train_y, again.train_y)


def test_pixel_permutation_is_fixed_and_shared(mnist):
    perm = data.load(permute_pixels=True, seed=1)
    assert not np.array_equal(perm.train_x, mnist.train_x)
    # One permutation (fixed by the seed) maps every split.
    order = np.random.default_rng(1).permutation(784)
    for a, b in ((mnist.train_x, perm.train_x), (mnist.val_x, perm.val_x),
                 (mnist.test_x, perm.test_x)):
        np.testing.assert_array_equal(a.reshape(len(a), -1)[:, order], b.reshape(len(b), -1))


def test_bad_options_name_the_field():
    with pytest.raises(data.DataError, match="data.source"):
        data.load(source="bogus")
    with pytest.raises(data.DataError, match="data.val_size"):
        data.load(source="synthetic", val_size=10**6)
    with pytest.raises(data.DataError, match="random_label_fraction"):
        data.load(source="synthetic", val_size=10, random_label_fraction=1.5)


def test_train_size_subset_keeps_validation(mnist):
    small = data.load(train_size=1000)
    assert small.train_x.shape[0] == 1000
    np.testing.assert_array_equal(small.val_x, mnist.val_x)
    np.testing.assert_array_equal(small.train_y, mnist.train_y[:1000])


def test_tfds_source_offline_with_mocking():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=40):
        ds = data.load(source="tfds", val_size=10)
    assert ds.train_x.shape == (30, 28, 28, 1) and ds.test_x.shape == (40, 28, 28, 1)
    assert ds.train_y.dtype == np.int32 and ds.train_y.max() < 10


def test_synthetic_source(synthetic):
    assert synthetic.train_x.shape == (512 - 128, 28, 28, 1)
    assert synthetic.num_classes == 10
