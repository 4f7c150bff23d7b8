import gzip
import io

import numpy as np
import pytest

from helpers import STEMS, write_fashion_like
from numdl.data import Normalizer, batches, load_fashion_mnist, read_idx, train_validation_split, write_idx
from numdl.data import fashion_mnist
from numdl.errors import ConfigError, DataError


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_idx_round_trip(tmp_path, suffix, dtype):
    array = (np.arange(24).reshape(2, 3, 4) * 3).astype(dtype)
    path = write_idx(tmp_path / f"a{suffix}", array)
    back = read_idx(path)
    assert back.dtype == dtype and np.array_equal(back, array)


def test_idx_refuses_truncated_and_padded_files(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros((3, 4), np.uint8))
    raw = path.read_bytes()
    path.write_bytes(raw[:-1])
    with pytest.raises(DataError, match="promises 24 bytes .* has 23"):
        read_idx(path)
    path.write_bytes(raw + b"\0")
    with pytest.raises(DataError, match="promises"):
        read_idx(path)
    path.write_bytes(b"\x01\x02" + raw[2:])
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(path)


def test_loader_finds_files_through_numdl_data(tmp_path, monkeypatch):
    write_fashion_like(tmp_path / "fashion-mnist", n_train=30, n_test=10)
    monkeypatch.setenv("NUMDL_DATA", str(tmp_path))
    x_train, y_train, x_test, y_test = load_fashion_mnist()
    assert x_train.shape == (30, 28, 28) and y_train.shape == (30,) and x_test.shape == (10, 28, 28)
    assert x_train.dtype == np.uint8


def test_explicit_path_without_files_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="not found in"):
        load_fashion_mnist(tmp_path)


def test_download_reports_offline_clearly(tmp_path):
    import urllib.error

    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    with pytest.raises(DataError, match="downloading .* failed .*dataset-fashion-mnist"):
        fashion_mnist.download(tmp_path, opener=offline)


def test_download_checks_sha256_and_keeps_nothing_bad(tmp_path):
    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def tampered(url, timeout):
        return Response(gzip.compress(b"not the dataset"))

    with pytest.raises(DataError, match="checksum mismatch"):
        fashion_mnist.download(tmp_path, opener=tampered)
    assert not list(tmp_path.iterdir())


def test_download_accepts_verified_files(tmp_path, monkeypatch):
    """With the expected digests of synthetic files, download writes all four and they load."""
    import hashlib

    source = write_fashion_like(tmp_path / "mirror", n_train=20, n_test=5)
    digests = {}
    for key, (stem, _) in fashion_mnist.FILES.items():
        digests[key] = (stem, hashlib.sha256(gzip.decompress((source / f"{stem}.gz").read_bytes())).hexdigest())
    monkeypatch.setattr(fashion_mnist, "FILES", digests)

    def mirror(url, timeout):
        return open(source / url.rsplit("/", 1)[1], "rb")

    target = fashion_mnist.download(tmp_path / "cache", opener=mirror)
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{s}.gz" for s in STEMS)
    assert load_fashion_mnist(target)[0].shape == (20, 28, 28)


def test_normalizer_uses_training_statistics_only():
    train, test = np.array([[0.0, 2.0], [4.0, 6.0]]), np.array([[100.0, 100.0]])
    norm = Normalizer("standardize", "float64").fit(train)
    np.testing.assert_allclose(norm.transform(train).mean(), 0.0, atol=1e-12)
    np.testing.assert_allclose(norm.transform(train).std(), 1.0)
    assert norm.transform(test)[0, 0] == pytest.approx((100 - 3) / np.std(train))
    assert Normalizer("scale").fit(np.array([0, 255])).transform(np.array([51]))[0] == pytest.approx(0.2)
    with pytest.raises(ConfigError):
        Normalizer("zscore")


def test_split_is_seeded_and_disjoint():
    x, y = np.arange(100), np.arange(100)
    a = train_validation_split(x, y, 0.2, seed=3)
    b = train_validation_split(x, y, 0.2, seed=3)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert len(a[2]) == 20 and set(a[0]).isdisjoint(a[2]) and len(set(a[0]) | set(a[2])) == 100


def test_batches_cover_everything_once():
    x = np.arange(10)
    seen = np.concatenate([bx for bx, _ in batches(x, x, 3, shuffle=True, rng=np.random.default_rng(0))])
    assert sorted(seen) == list(range(10)) and not np.array_equal(seen, x)


def test_decoded_idx_cache_is_used_and_rebuilt_when_damaged(tmp_path, monkeypatch):
    from numdl.data import idx
    from numdl.data.idx import read_idx, write_idx

    monkeypatch.setattr(idx, "CACHE_MIN_BYTES", 0)  # the real threshold keeps small files out
    source = write_idx(tmp_path / "images-idx3-ubyte.gz", np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    cache = tmp_path / "decoded"
    first = read_idx(source, cache_dir=cache)
    [cached] = list(cache.iterdir())
    np.testing.assert_array_equal(np.load(cached), first)
    cached.write_bytes(b"not an npy file")  # damaged: decoded again from the source and rewritten
    np.testing.assert_array_equal(read_idx(source, cache_dir=cache), first)
    np.testing.assert_array_equal(np.load(cached), first)


def test_decoded_idx_cache_keeps_one_version_and_skips_small_files(tmp_path, monkeypatch):
    import os

    from numdl.data import idx
    from numdl.data.idx import read_idx, write_idx

    cache = tmp_path / "decoded"
    source = write_idx(tmp_path / "labels-idx1-ubyte.gz", np.arange(10, dtype=np.uint8))
    read_idx(source, cache_dir=cache)
    assert not cache.exists()  # below CACHE_MIN_BYTES: decompressing is cheaper than a cache file
    monkeypatch.setattr(idx, "CACHE_MIN_BYTES", 0)
    read_idx(source, cache_dir=cache)
    write_idx(source, np.arange(12, dtype=np.uint8))  # the source changes: a new entry replaces the old
    os.utime(source, ns=(1, 1))
    np.testing.assert_array_equal(read_idx(source, cache_dir=cache), np.arange(12))
    assert len(list(cache.iterdir())) == 1
