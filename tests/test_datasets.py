"""Dataset loaders on small files in exactly the official formats (IDX, CIFAR-10's binary batches), the
download cache (file:// URLs: no network), and check_dataset's one line per problem."""
import dataclasses
import gzip
import hashlib
import io
import os
import stat
import tarfile
import tracemalloc
import urllib.request

import numpy as np
import pytest

from gpuconv import data
from gpuconv.data import Dataset, DatasetUnavailableError, check_dataset, load_dataset, load_npz, read_idx

CIFAR_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot")


# ------------------------------------------------------------ official formats ---

def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """IDX as published: 0, 0, type code, ndim, big-endian uint32 dimensions, big-endian values."""
    header = bytes([0, 0, code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx_dataset(folder, seed=0, n_test=3):
    """The four official .gz files of MNIST / Fashion-MNIST, with a few random 28x28 images (every class in
    training once)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    raw = {}
    for split, n in (("train", 10), ("test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (rng.permutation(10) if split == "train" else rng.integers(0, 10, n)).astype(np.uint8)
        for name, array in zip(data.IDX_FILES[split], (images, labels)):
            (folder / name).write_bytes(gzip.compress(idx_bytes(array)))
        raw[split] = images, labels
    return raw


def cifar_records(rng, n):
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return labels, pixels, np.concatenate([labels[:, None], pixels], axis=1).tobytes()


def write_cifar_archive(path, seed=0, per_batch=2, n_test=3, meta="\n".join(CIFAR_NAMES) + "\n\n", members=None):
    """cifar-10-binary.tar.gz: cifar-10-batches-bin/ with data_batch_1..5.bin, test_batch.bin, batches.meta.txt."""
    rng = np.random.default_rng(seed)
    files, train = {}, []
    for i in range(1, 6):
        labels, pixels, blob = cifar_records(rng, per_batch)
        files[f"cifar-10-batches-bin/data_batch_{i}.bin"] = blob
        train.append((labels, pixels))
    labels, pixels, files["cifar-10-batches-bin/test_batch.bin"] = cifar_records(rng, n_test)
    if meta is not None:
        files["cifar-10-batches-bin/batches.meta.txt"] = meta.encode()
    files["cifar-10-batches-bin/readme.html"] = b"<html></html>"
    files.update(members or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in files.items():
            if blob is None:
                continue
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    y_train = np.concatenate([t[0] for t in train])
    x_train = np.concatenate([t[1] for t in train])
    return (x_train, y_train), (pixels, labels)


def scaled(pixels):
    return pixels.astype(np.float32) / np.float32(255)


@pytest.mark.parametrize("name,names", [("mnist", data.DIGIT_NAMES), ("fashion-mnist", FASHION_NAMES)])
def test_idx_datasets_load_bit_for_bit(tmp_path, name, names):
    raw = write_idx_dataset(tmp_path / name)
    ds = load_dataset(name, cache_dir=tmp_path, download=False)
    assert ds.name == {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}[name]
    assert ds.class_names == names and len(names) == 10
    for split, (images, labels) in raw.items():
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        assert x.dtype == np.float32 and x.shape == (len(images), 1, 28, 28)
        assert y.dtype == np.int64
        np.testing.assert_array_equal(x[:, 0], scaled(images))
        np.testing.assert_array_equal(y, labels)
    assert check_dataset(ds, name) == ([], [])


def test_cifar10_loads_bit_for_bit_without_extracting(tmp_path):
    (x_train, y_train), (x_test, y_test) = write_cifar_archive(tmp_path / "cifar10" / "cifar-10-binary.tar.gz")
    ds = load_dataset("cifar10", cache_dir=tmp_path, download=False)
    assert ds.name == "CIFAR-10" and ds.class_names == CIFAR_NAMES
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    # Each record is 1024 red, 1024 green, 1024 blue bytes, rows in order: (C, H, W) as it is.
    np.testing.assert_array_equal(ds.x_train, scaled(x_train).reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(ds.x_test, scaled(x_test).reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(ds.y_train, y_train)
    np.testing.assert_array_equal(ds.y_test, y_test)
    assert ds.x_train[0, 1, 0, 0] == np.float32(x_train[0, 1024]) / 255  # green channel, first pixel
    assert sorted(p.name for p in (tmp_path / "cifar10").iterdir()) == ["cifar-10-binary.tar.gz"]


@pytest.mark.parametrize("meta,expected", [
    ("\n".join(n.upper() for n in CIFAR_NAMES) + "\n", tuple(n.upper() for n in CIFAR_NAMES)),  # read from it
    (None, CIFAR_NAMES),  # no batches.meta.txt: the known names
    ("just one line\n", CIFAR_NAMES),  # not ten names: not the official file
], ids=["from-meta", "no-meta", "bad-meta"])
def test_cifar10_class_names(tmp_path, meta, expected):
    write_cifar_archive(tmp_path / "cifar10" / "cifar-10-binary.tar.gz", meta=meta)
    assert load_dataset("cifar10", cache_dir=tmp_path, download=False).class_names == expected


def test_digits_has_class_names():
    ds = load_dataset("digits", seed=1)
    assert ds.class_names == tuple("0123456789") and ds.x_train.shape[1:] == (1, 8, 8)
    assert ds.name == "sklearn digits 8x8"


def test_unknown_dataset():
    with pytest.raises(ValueError, match=r"^unknown dataset 'svhn'; choose from digits, mnist, fashion-mnist, "
                                         r"cifar10$"):
        load_dataset("svhn")


# ------------------------------------------------------------------------ IDX ---

def test_read_idx_plain_and_wider_types(tmp_path):
    values = np.arange(-6, 6, dtype=np.int32).reshape(3, 4) * 100000  # needs every byte, and the sign
    (tmp_path / "a.idx").write_bytes(idx_bytes(values, 0x0C))
    out = read_idx(tmp_path / "a.idx")
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, values)
    floats = np.linspace(-1, 1, 6).reshape(2, 3)
    (tmp_path / "f.idx.gz").write_bytes(gzip.compress(idx_bytes(floats, 0x0E)))
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx.gz"), floats)


GOOD_IDX = idx_bytes(np.zeros((2, 3, 3), np.uint8))


@pytest.mark.parametrize("content,message", [
    (b"\x01\x02\x08\x03" + GOOD_IDX[4:],
     "not an IDX file: magic number 0x01020803 does not begin with two zero bytes"),
    (b"\x00\x00\x07\x03" + GOOD_IDX[4:], "not an IDX file: unknown type code 0x07 in magic number 0x00000703"),
    (GOOD_IDX[:-1], "truncated IDX file: dimensions (2, 3, 3) of uint8 need 18 bytes after the 16-byte header, "
                    "found 17"),
    (GOOD_IDX + b"\x00", "IDX file with extra bytes: dimensions (2, 3, 3) of uint8 need 18 bytes after the "
                         "16-byte header, found 19"),
    (GOOD_IDX[:10], "truncated IDX header: 3 dimensions need a 16-byte header, the file has 10 bytes"),
    (b"\x00\x00", "not an IDX file: 2 bytes, shorter than the 4-byte magic number"),
    (gzip.compress(GOOD_IDX)[:-10], "not a readable gzip file (EOFError: "),
], ids=["bad-magic", "bad-type", "truncated", "extra", "short-header", "tiny", "truncated-gzip"])
def test_malformed_idx_names_the_file(tmp_path, content, message):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        read_idx(path)
    assert str(info.value).startswith(f"{path}: {message}")


def test_malformed_file_in_the_cache_names_it(tmp_path):
    write_idx_dataset(tmp_path / "mnist")
    labels = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(2, np.uint8))))  # 2 labels for 3 images
    with pytest.raises(ValueError, match="^" + str(labels) + ": 2 labels for the 3 images of .*t10k-images"):
        load_dataset("mnist", cache_dir=tmp_path, download=False)
    images = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(idx_bytes(np.zeros((10, 28, 28), np.uint8))[:-5]))
    with pytest.raises(ValueError, match="^" + str(images) + ": truncated IDX file"):
        load_dataset("mnist", cache_dir=tmp_path, download=False)


@pytest.mark.parametrize("members,message", [
    ({"cifar-10-batches-bin/data_batch_3.bin": b"\x01" * 3072},
     ": cifar-10-batches-bin/data_batch_3.bin: 3072 bytes is not a whole, nonzero number of 3073-byte records"),
    ({"cifar-10-batches-bin/test_batch.bin": None},
     ": missing cifar-10-batches-bin/test_batch.bin; expected the cifar-10-batches-bin/ directory"),
], ids=["partial-record", "missing-batch"])
def test_malformed_cifar_archive_names_it(tmp_path, members, message):
    archive = tmp_path / "cifar10" / "cifar-10-binary.tar.gz"
    write_cifar_archive(archive, members=members)
    with pytest.raises(ValueError) as info:
        load_dataset("cifar10", cache_dir=tmp_path, download=False)
    assert str(info.value).startswith(f"{archive}{message}")


def test_cifar_archive_that_is_not_a_tar_gz(tmp_path):
    archive = tmp_path / "cifar10" / "cifar-10-binary.tar.gz"
    archive.parent.mkdir()
    archive.write_bytes(b"<html>moved</html>")
    with pytest.raises(ValueError, match="^" + str(archive) + r": not a readable \.tar\.gz archive \(ReadError"):
        load_dataset("cifar10", cache_dir=tmp_path, download=False)


# ------------------------------------------------------------------ downloads ---

def test_the_official_table():
    mnist = data.REMOTE["mnist"].files[0]
    assert mnist.urls == ("https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
                          "https://storage.googleapis.com/cvdf-datasets/mnist/train-images-idx3-ubyte.gz")
    assert [f.name for f in data.REMOTE["fashion-mnist"].files] == [n for pair in data.IDX_FILES.values()
                                                                    for n in pair]
    assert data.REMOTE["cifar10"].files == (data.RemoteFile(
        "cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530",
        ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",)),)
    assert data.DATASETS == ("digits", "mnist", "fashion-mnist", "cifar10")


def test_download_off_with_an_empty_cache_names_urls_and_paths(tmp_path):
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("cifar10", cache_dir=tmp_path, download=False)
    assert str(info.value) == (
        "cifar10: cifar-10-binary.tar.gz is not in the cache and downloading is off; download it from "
        f"https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz and put it at "
        f"{tmp_path / 'cifar10' / 'cifar-10-binary.tar.gz'}")
    assert isinstance(info.value, ValueError)
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("mnist", cache_dir=tmp_path, download=False)
    lines = str(info.value).splitlines()
    assert len(lines) == 4  # every missing file, not only the first
    assert lines[3] == (
        "mnist: t10k-labels-idx1-ubyte.gz is not in the cache and downloading is off; download it from "
        "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz or "
        "https://storage.googleapis.com/cvdf-datasets/mnist/t10k-labels-idx1-ubyte.gz and put it at "
        f"{tmp_path / 'mnist' / 't10k-labels-idx1-ubyte.gz'}")
    assert not (tmp_path / "mnist").exists()


def serve(monkeypatch, tmp_path, name, md5=None, dead_mirror=False):
    """Point ``name``'s table entry at file:// copies of official-format files under tmp_path/server."""
    server = tmp_path / "server"
    if name == "cifar10":
        raw = write_cifar_archive(server / "cifar-10-binary.tar.gz")
    else:
        raw = write_idx_dataset(server)
    spec = data.REMOTE[name]
    files = tuple(dataclasses.replace(
        f, md5=md5 or hashlib.md5((server / f.name).read_bytes()).hexdigest(),
        urls=((server / "absent" / f.name).as_uri(),) * dead_mirror + ((server / f.name).as_uri(),))
        for f in spec.files)
    monkeypatch.setitem(data.REMOTE, name, dataclasses.replace(spec, files=files))
    return raw, server


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_download_once_into_the_cache(monkeypatch, tmp_path, capsys, name):
    raw, server = serve(monkeypatch, tmp_path, name, dead_mirror=True)  # the first mirror fails: the next serves
    cache = tmp_path / "cache"
    ds = load_dataset(name, cache_dir=cache)
    files = sorted(f.name for f in data.REMOTE[name].files)
    assert sorted(p.name for p in (cache / name).iterdir()) == files  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    for f in files:
        assert (cache / name / f).read_bytes() == (server / f).read_bytes()
        assert stat.S_IMODE((cache / name / f).stat().st_mode) == 0o666 & ~umask  # as any file, not mkstemp's 0600
    err = capsys.readouterr().err  # stderr is no terminal here: one line per file, no progress bar
    assert err.count("downloading file://") == len(files) and "%|" not in err  # the dead mirror never answered
    x = ds.x_train[:, 0] if name == "mnist" else ds.x_train.reshape(len(ds.x_train), -1)
    np.testing.assert_array_equal(x, scaled(raw["train"][0] if name == "mnist" else raw[0][0]))
    for f in files:
        (server / f).unlink()  # a second load never downloads
    assert load_dataset(name, cache_dir=cache).name == ds.name


def test_checksum_mismatch_keeps_nothing_and_names_url_and_sums(monkeypatch, tmp_path):
    _, server = serve(monkeypatch, tmp_path, "cifar10", md5="0" * 32)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError) as info:
        load_dataset("cifar10", cache_dir=cache)
    actual = hashlib.md5((server / "cifar-10-binary.tar.gz").read_bytes()).hexdigest()
    url = (server / "cifar-10-binary.tar.gz").as_uri()
    dest = cache / "cifar10" / "cifar-10-binary.tar.gz"
    assert str(info.value) == (
        f"cifar10: could not download cifar-10-binary.tar.gz ({url}: checksum mismatch: expected MD5 {'0' * 32}, "
        f"got {actual}; download discarded); download it from {url} by hand and put it at {dest}")
    assert list((cache / "cifar10").iterdir()) == []


def test_network_failure_names_every_url_and_the_cache_path(monkeypatch, tmp_path):
    def offline(request, timeout):
        assert timeout == data.DOWNLOAD_TIMEOUT_S
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("mnist", cache_dir=tmp_path)
    urls = data.REMOTE["mnist"].files[0].urls
    assert str(info.value) == (
        f"mnist: could not download train-images-idx3-ubyte.gz ({urls[0]}: URLError: <urlopen error [Errno -3] "
        f"Temporary failure in name resolution>; {urls[1]}: URLError: <urlopen error [Errno -3] Temporary failure "
        f"in name resolution>); download it from {urls[0]} or {urls[1]} by hand and put it at "
        f"{tmp_path / 'mnist' / 'train-images-idx3-ubyte.gz'}")
    assert list((tmp_path / "mnist").iterdir()) == []


@pytest.mark.parametrize("failure", [ConnectionResetError("reset by peer"), KeyboardInterrupt()])
def test_interrupted_download_leaves_nothing(monkeypatch, tmp_path, failure):
    class Response(io.BytesIO):
        headers = {"Content-Length": "4000000"}

        def read(self, n=-1):
            if self.tell():
                raise failure
            return super().read(1000)

    monkeypatch.setattr(urllib.request, "urlopen", lambda request, timeout: Response(b"x" * 4000000))
    with pytest.raises((DatasetUnavailableError, KeyboardInterrupt)):
        load_dataset("cifar10", cache_dir=tmp_path)
    assert list((tmp_path / "cifar10").iterdir()) == []


def test_cache_directory_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GPUCONV_DATA_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert data.cache_root() == tmp_path / "home" / ".cache" / "gpuconv" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", "")  # empty: unset
    assert data.cache_root() == tmp_path / "home" / ".cache" / "gpuconv" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_root() == tmp_path / "xdg" / "gpuconv" / "data"
    monkeypatch.setenv("GPUCONV_DATA_DIR", str(tmp_path / "mine"))
    assert data.cache_root() == tmp_path / "mine"
    assert data.cache_root(tmp_path / "arg") == tmp_path / "arg"
    write_idx_dataset(tmp_path / "mine" / "mnist")
    assert load_dataset("mnist", download=False).x_train.shape == (10, 1, 28, 28)


# -------------------------------------------------------------- check_dataset ---

def dataset(x_train=None, y_train=None, x_test=None, y_test=None):
    rng = np.random.default_rng(0)
    return Dataset(rng.random((4, 1, 8, 8), np.float32) if x_train is None else x_train,
                   np.array([0, 1, 2, 1]) if y_train is None else np.asarray(y_train),
                   rng.random((3, 1, 8, 8), np.float32) if x_test is None else x_test,
                   np.array([2, 1, 0]) if y_test is None else np.asarray(y_test), "test")


RULE3 = "labels must be 0..2 for the 3 classes in y_train and y_test"


@pytest.mark.parametrize("ds,problems", [
    (dataset(x_train=np.zeros((0, 1, 8, 8), np.float32), y_train=np.zeros(0, np.int64)),
     ["src: x_train is empty (shape (0, 1, 8, 8)): no images to train on"]),
    (dataset(x_test=np.zeros((0, 1, 8, 8), np.float32), y_test=np.zeros(0, np.int64)),
     ["src: x_test is empty (shape (0, 1, 8, 8)): no images to test on"]),
    (dataset(x_train=np.zeros((10, 1, 8, 8), np.float32), y_train=[*range(9), 10 ** 9]),
     ["src: y_train has 1 label above 9 (1000000000); labels must be 0..9 for the 10 classes in y_train and "
      "y_test"]),
    (dataset(y_train=[0, -1, 1, 1], y_test=[1, 0, 0]),
     ["src: y_train has 1 negative label (-1); " + RULE3]),
    (dataset(y_train=[0, -1, -7, 1], y_test=[1, 0, 2]),
     ["src: y_train has 2 negative labels (smallest -7); labels must be 0..4 for the 5 classes in y_train and "
      "y_test", "src: y_test has label 2 (1 test image) never seen in y_train; the model cannot learn them"]),
    (dataset(y_train=[1, 2, 3, 2], y_test=[3, 2, 1]),
     ["src: y_train has labels 1..3; " + RULE3 + " (1-based? subtract 1)",
      "src: y_test has labels 1..3; " + RULE3 + " (1-based? subtract 1)"]),
    (dataset(y_train=[0, 1, 0, 1], y_test=[2, 2, 0]),
     ["src: y_test has label 2 (2 test images) never seen in y_train; the model cannot learn them"]),
    (dataset(y_train=[0.0, 1.0, 2.0, 1.0]),
     ["src: y_train must be integer labels of shape (4,), got shape (4,) dtype float64 "
      "(all whole numbers: save them with .astype(np.int64))"]),
    (dataset(y_test=[0.5, 1, 2]), ["src: y_test must be integer labels of shape (3,), got shape (3,) dtype float64"]),
    (dataset(y_test=[0, 1]), ["src: y_test must be integer labels of shape (3,), got shape (2,) dtype int64"]),
    (dataset(x_train=np.zeros((4, 8, 8), np.float32)), ["src: x_train must be (N, C, H, W), got shape (4, 8, 8)"]),
    (dataset(x_train=np.array([[[[np.nan, 1], [np.inf, 0]]]] * 3 + [[[[0, 1], [0, 0.5]]]], np.float32),
             x_test=np.zeros((3, 1, 2, 2), np.float32)),
     ["src: x_train has 6 non-finite pixel values (NaN or infinity) in 3 of 4 images"]),
    (dataset(x_train=np.zeros((4, 28, 28, 3), np.float32), x_test=np.zeros((3, 28, 28, 3), np.float32)),
     ["src: x_train has shape (4, 28, 28, 3), which looks like channels-last (N, H, W, C); transpose to "
      "(N, C, H, W)", "src: x_test has shape (3, 28, 28, 3), which looks like channels-last (N, H, W, C); "
      "transpose to (N, C, H, W)"]),
    (dataset(x_test=np.zeros((3, 1, 9, 8), np.float32)),
     ["src: x_train/x_test: train images (1, 8, 8) and test images (1, 9, 8) differ in shape"]),
    (dataset(x_test=np.full((3, 1, 8, 8), 255, np.float32)),
     ["src: x_test has pixel values 255..255 but x_train 0.0*..0.9*: scale both the same way"]),
], ids=["empty-train", "empty-test", "label-1e9", "label-minus-1", "negatives-and-gap", "one-based", "unseen",
        "float-labels", "fractional-labels", "label-count", "x-3d", "nan", "channels-last", "shape-mismatch",
        "test-scaled-differently"])
def test_check_dataset_problems(ds, problems):
    found, notes = check_dataset(ds, "src")
    if "*" in "".join(problems):  # a range printed from random data
        import fnmatch
        assert len(found) == 1 and fnmatch.fnmatch(found[0], problems[0]), found
    else:
        assert found == problems
    assert notes == []


def test_check_dataset_clean_and_the_0_255_note():
    assert check_dataset(dataset(), "src") == ([], [])
    ds = dataset(x_train=np.arange(4 * 64, dtype=np.float32).reshape(4, 1, 8, 8) % 256,
                 x_test=np.full((3, 1, 8, 8), 200, np.float32))
    assert check_dataset(ds, "--data d.npz") == ([], [
        "--data d.npz: x_train and x_test hold float pixel values 0..255, not 0..1; that is fine: inputs are "
        "normalised with the training set's mean and std anyway"])
    ds.x_test[:] = 7  # train in 0..255, test not: scaled differently, a problem
    assert check_dataset(ds, "s") == (["s: x_train has pixel values 0..255 but x_test 7..7: scale both the same "
                                       "way"], [])
    ds.x_test = ds.x_test[:0]  # nothing to compare with: a note about x_train alone
    ds.y_test = ds.y_test[:0]
    assert check_dataset(ds, "s")[1] == [
        "s: x_train holds float pixel values 0..255, not 0..1; that is fine: inputs are normalised with the "
        "training set's mean and std anyway"]


def test_a_huge_label_allocates_nothing_like_it():
    ds = dataset(y_train=np.array([0, 1, 10 ** 9, 10 ** 18], np.int64), y_test=[0, 1, 1])
    tracemalloc.start()
    try:
        problems, _ = check_dataset(ds, "src")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert problems == ["src: y_train has 2 labels above 3 (largest 1000000000000000000); labels must be 0..3 for "
                        "the 4 classes in y_train and y_test"]
    assert peak < 1 << 20


# ----------------------------------------------------------------- load_npz ---

def test_load_npz_leaves_checks_to_check_dataset(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((4, 28, 28, 3), np.uint8), y_train=np.array([1, 2, 3, 2]),
             x_test=np.zeros((2, 28, 28, 3), np.uint8), y_test=np.array([1, 3]))
    ds = load_npz(path)  # loads: what is wrong is check_dataset's to say, all at once
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64 and ds.class_names is None
    problems, _ = check_dataset(ds, str(path))
    assert [p.split(": ", 2)[1].split(" ")[0] for p in problems] == ["x_train", "x_test", "y_train", "y_test"]


@pytest.mark.parametrize("arrays,message", [
    (dict(y_train=np.array([0.0, 1.0])), "{p}: y_train must be integer labels of shape (2,), got shape (2,) dtype "
                                         "float64 (all whole numbers: save them with .astype(np.int64))"),
    (dict(x_test=np.zeros((2, 8), np.uint8)), "{p}: x_test must be (N, H, W) or (N, C, H, W), got shape (2, 8)\n"
                                              "{p}: y_test must be integer labels of shape (2,), got shape (1,) "
                                              "dtype int64"),
    (dict(x_train=np.array(["ab", "cd"])[:, None, None]),
     "{p}: x_train must hold numbers, got dtype <U2"),
], ids=["float-labels", "x-2d", "strings"])
def test_load_npz_refuses_what_cannot_be_a_dataset(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    good = dict(x_train=np.zeros((2, 8, 8), np.uint8), y_train=np.array([0, 1]),
                x_test=np.zeros((2, 8, 8), np.uint8), y_test=np.array([1]))
    good["y_test"] = np.array([1]) if "x_test" in arrays else np.array([0, 1])
    np.savez(path, **{**good, **arrays})
    with pytest.raises(ValueError) as info:
        load_npz(path)
    assert str(info.value) == message.format(p=path)


@pytest.mark.parametrize("content,message", [
    (b"x_train,y_train\n1,2\n", "not an .npz archive (it is a text file beginning 'x_train,y_train')"),
    (b"", "not an .npz archive (the file is empty)"),
    (b"\x00\x01\x02\x03\xff\xfe\xfd\xfc\x00", r"not an .npz archive (it begins with the bytes b'\x00\x01\x02\x03"),
], ids=["text", "empty", "binary"])
def test_load_npz_on_a_file_that_is_no_npz(tmp_path, content, message):
    path = tmp_path / "data.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        load_npz(path)
    text = str(info.value)
    assert text.startswith(f"{path}: not a readable training data file: {message}")
    assert text.endswith("; write one with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)")
    assert "pickle" not in text


def test_load_npz_with_pickled_objects_gives_no_allow_pickle_advice(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, x_train=np.array([object()] * 2), y_train=np.array([0, 1]), x_test=np.zeros((1, 8, 8)),
             y_test=np.array([0]))
    with pytest.raises(ValueError) as info:
        load_npz(path)
    assert str(info.value) == (f"{path}: not a readable training data file: it holds pickled Python objects, which "
                               "gpuconv does not load; save plain numeric arrays with numpy.savez")


# ------------------------------------------------------------- normalization ---

def test_normalization_per_channel_in_chunks():
    rng = np.random.default_rng(0)
    # More images than one 4096-image chunk; channel 0 in 0..255.
    x = (rng.random((5000, 2, 3, 3)) * np.array([255.0, 1.0])[:, None, None]).astype(np.float32)
    x[:, 1] = 0.25  # a constant channel
    mean, std = data.normalization(x)
    assert mean.dtype == std.dtype == np.float32 and mean.shape == std.shape == (2,)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3), dtype=np.float64), rtol=1e-6)
    np.testing.assert_allclose(std[0], x[:, 0].std(dtype=np.float64), rtol=1e-6)
    assert mean[1] == np.float32(0.25) and std[1] == np.float32(1e-6)
    with pytest.raises(ValueError, match=r"N >= 1, got shape \(0, 1, 2, 2\)"):
        data.normalization(np.zeros((0, 1, 2, 2), np.float32))
