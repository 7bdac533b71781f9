"""Training data: scikit-learn's bundled 8x8 digits, MNIST, Fashion-MNIST and CIFAR-10, or a user's .npz file.

MNIST and Fashion-MNIST are read from their official IDX files, CIFAR-10 from its official binary version
(no pickle anywhere). Each file is downloaded once into a cache directory and kept only when its published
checksum matches. ``check_dataset`` then finds everything that would spoil a training run, one line per
problem, before any training starts.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._shapes import is_floating
from .nn.module import load_arrays

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass
class Dataset:
    x_train: np.ndarray  # (N, C, H, W) float32
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    class_names: tuple[str, ...] | None = None  # class i is class_names[i]; None: only numbers are known

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    @property
    def image_shape(self):
        return self.x_train.shape[1:]


# ------------------------------------------------------------ the dataset table ---

@dataclass(frozen=True)
class RemoteFile:
    """One file as its publishers serve it: its name, their MD5 of it, and every URL that serves it."""
    name: str
    md5: str
    urls: tuple[str, ...]


@dataclass(frozen=True)
class RemoteDataset:
    title: str  # Dataset.name
    format: str  # "idx" or "cifar-10-binary": which reader
    files: tuple[RemoteFile, ...]
    class_names: tuple[str, ...]


def _published(mirrors: tuple[str, ...], md5s: dict[str, str]) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(name, md5, tuple(mirror + name for mirror in mirrors)) for name, md5 in md5s.items())


DIGIT_NAMES = tuple(str(d) for d in range(10))
# The official IDX file names, the same for MNIST and Fashion-MNIST: (images, labels) per split.
IDX_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
CIFAR_DIR = "cifar-10-batches-bin"  # the binary version's members, as its tar archive names them
CIFAR_TRAIN = tuple(f"{CIFAR_DIR}/data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST, CIFAR_META = f"{CIFAR_DIR}/test_batch.bin", f"{CIFAR_DIR}/batches.meta.txt"
CIFAR_IMAGE = (3, 32, 32)  # each record: 1 label byte, then 1024 red, 1024 green, 1024 blue bytes, rows in order

# MD5s as published: Fashion-MNIST's README and the CIFAR page list them; MNIST's are torchvision's (its
# mirrors serve the files of yann.lecun.com, which publishes none). MD5 only tells a damaged or wrong download
# from the right one here: that is all a checksum published beside the file can do.
REMOTE = {
    "mnist": RemoteDataset("MNIST", "idx", _published(
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
         "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
         "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
         "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}), DIGIT_NAMES),
    "fashion-mnist": RemoteDataset("Fashion-MNIST", "idx", _published(
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # the official site is plain HTTP
         "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
        {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
         "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
         "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
         "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")),
    "cifar10": RemoteDataset("CIFAR-10", "cifar-10-binary", _published(
        ("https://www.cs.toronto.edu/~kriz/",), {"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"}),
        # batches.meta.txt in the archive names them; these are its lines, for an archive without it.
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")),
}
DATASETS = ("digits", *REMOTE)
DOWNLOAD_TIMEOUT_S = 60  # per connection attempt and per read: a stalled server fails instead of hanging


class DatasetUnavailableError(ValueError):
    """A dataset's file is neither in the cache nor downloadable now; the message says where to put it."""


def cache_root(cache_dir=None) -> Path:
    """Where datasets are kept: ``cache_dir``, else $GPUCONV_DATA_DIR, else $XDG_CACHE_HOME/gpuconv/data,
    else ~/.cache/gpuconv/data (an empty variable counts as unset)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("GPUCONV_DATA_DIR"):
        return Path(os.environ["GPUCONV_DATA_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "gpuconv" / "data"


# ---------------------------------------------------------------------- loaders ---

def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """The 1797 8x8 digits bundled with scikit-learn (no download), split stratified into train and test."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise ImportError("the default training data needs scikit-learn: pip install 'gpuconv[train]'") from exc
    digits = sk_load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # pixel values 0..16 -> [0, 1]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return Dataset(x_train, y_train, x_test, y_test, "sklearn digits 8x8", DIGIT_NAMES)


def load_dataset(name: str, *, cache_dir=None, download: bool = True, seed: int = 0) -> Dataset:
    """One of ``DATASETS`` with its official train/test split (``seed`` splits digits, which has none).

    Files missing from the cache (``cache_root(cache_dir)/name/``) are downloaded unless ``download`` is
    False; either way a file that cannot be had is a ``DatasetUnavailableError`` naming its URLs and the path
    to put it at by hand. Images come out float32 (N, C, H, W) in [0, 1], labels int64.
    """
    if name == "digits":
        return load_digits(seed=seed)
    if name not in REMOTE:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    spec = REMOTE[name]
    paths = _ensure_files(name, spec, cache_root(cache_dir) / name, download)
    if spec.format == "idx":
        splits = {split: _read_idx_split(paths[images], paths[labels])
                  for split, (images, labels) in IDX_FILES.items()}
        class_names = spec.class_names
    else:
        splits, class_names = _read_cifar_binary(paths[spec.files[0].name], spec.class_names)
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
    return Dataset(x_train, y_train, x_test, y_test, spec.title, class_names)


def read_idx(path) -> np.ndarray:
    """The array in an IDX file (MNIST's format), gzipped or not, in native byte order.

    The format: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), the number of dimensions, each dimension as a big-endian uint32, then the values,
    big-endian, in C order. A header that is not that, or a file whose size disagrees with it, is a
    ValueError naming the file.
    """
    raw = _read_maybe_gzipped(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: not an IDX file: {len(raw)} bytes, shorter than the 4-byte magic number")
    magic = int.from_bytes(raw[:4], "big")
    if raw[0] or raw[1]:
        raise ValueError(f"{path}: not an IDX file: magic number 0x{magic:08x} does not begin with two zero bytes")
    if raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file: unknown type code 0x{raw[2]:02x} in magic number 0x{magic:08x}")
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header: {ndim} dimensions need a {header}-byte header, "
                         f"the file has {len(raw)} bytes")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    need, have = int(np.prod(dims, dtype=object)) * dtype.itemsize, len(raw) - header  # exact: no overflow
    if have != need:
        what = "truncated IDX file" if have < need else "IDX file with extra bytes"
        raise ValueError(f"{path}: {what}: dimensions {dims} of {dtype.name} need {need} bytes after the "
                         f"{header}-byte header, found {have}")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_maybe_gzipped(path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x1f\x8b":  # gzip's magic: the file is read as it is, compressed or not
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: not a readable gzip file ({type(exc).__name__}: {exc})") from exc


def _read_idx_split(images_path: Path, labels_path: Path):
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected uint8 images (N, H, W), got {images.dtype} of shape {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"{labels_path}: expected uint8 labels (N,), got {labels.dtype} of shape {labels.shape}")
    if len(labels) != len(images):
        raise ValueError(f"{labels_path}: {len(labels)} labels for the {len(images)} images of {images_path}")
    return _scale_integer_images(images[:, None]), labels.astype(np.int64)


def _read_cifar_binary(archive: Path, known_names: tuple[str, ...]):
    """({"train": (x, y), "test": (x, y)}, class names) from cifar-10-binary.tar.gz, read without extracting."""
    wanted = {*CIFAR_TRAIN, CIFAR_TEST, CIFAR_META}
    found = {}
    try:
        with tarfile.open(archive, "r|gz") as tar:  # one pass over the stream: no seeking back in the gzip
            for member in tar:
                if member.name in wanted and member.isfile():
                    found[member.name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{archive}: not a readable .tar.gz archive ({type(exc).__name__}: {exc})") from exc
    missing = [m for m in (*CIFAR_TRAIN, CIFAR_TEST) if m not in found]
    if missing:
        raise ValueError(f"{archive}: missing {', '.join(missing)}; expected the {CIFAR_DIR}/ directory of "
                         "CIFAR-10's binary version")
    record = 1 + int(np.prod(CIFAR_IMAGE))

    def batches(members):
        rows = []
        for m in members:
            if not found[m] or len(found[m]) % record:
                raise ValueError(f"{archive}: {m}: {len(found[m])} bytes is not a whole, nonzero number of "
                                 f"{record}-byte records (1 label byte, then 3x32x32 pixel bytes)")
            rows.append(np.frombuffer(found[m], np.uint8).reshape(-1, record))
        rows = np.concatenate(rows)
        return _scale_integer_images(rows[:, 1:].reshape(-1, *CIFAR_IMAGE)), rows[:, 0].astype(np.int64)

    names = known_names
    if CIFAR_META in found:
        lines = tuple(line.strip() for line in found[CIFAR_META].decode("utf-8", "replace").splitlines())
        lines = tuple(line for line in lines if line)
        if len(lines) == len(known_names):  # anything else is not the official file: keep the known names
            names = lines
    return {"train": batches(CIFAR_TRAIN), "test": batches((CIFAR_TEST,))}, names


def _scale_integer_images(x: np.ndarray) -> np.ndarray:
    """Integer pixels (e.g. uint8) to float32 in [0, 1]: divided by the dtype's largest value (in place: one
    float32 copy, not two, which is 600 MB less for CIFAR-10)."""
    out = x.astype(np.float32)
    out /= max(float(np.iinfo(x.dtype).max), 1.0)
    return out


# -------------------------------------------------------------------- downloads ---

def _ensure_files(name: str, spec: RemoteDataset, folder: Path, download: bool) -> dict[str, Path]:
    """{file name: path in the cache}, downloading what is missing; unavailable files raise together."""
    paths = {f.name: folder / f.name for f in spec.files}
    missing = [f for f in spec.files if not paths[f.name].is_file()]
    if missing and not download:
        raise DatasetUnavailableError("\n".join(
            f"{name}: {f.name} is not in the cache and downloading is off; download it from "
            f"{' or '.join(f.urls)} and put it at {paths[f.name]}" for f in missing))
    if missing:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatasetUnavailableError(f"{name}: cannot create the cache directory {folder} "
                                          f"({type(exc).__name__}: {exc}); set GPUCONV_DATA_DIR to a writable "
                                          "directory") from exc
    for f in missing:
        _download(name, f, paths[f.name])
    return paths


def _download(name: str, remote: RemoteFile, dest: Path) -> None:
    """Fetch ``remote`` from the first URL that serves it with the published MD5, into ``dest`` atomically."""
    failures = []
    for url in remote.urls:
        try:
            _download_one(url, remote.md5, dest)
            return
        except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError and timeouts are OSErrors
            failures.append(f"{url}: {exc}" if isinstance(exc, ValueError) else f"{url}: {type(exc).__name__}: {exc}")
    raise DatasetUnavailableError(f"{name}: could not download {remote.name} ({'; '.join(failures)}); download it "
                                  f"from {' or '.join(remote.urls)} by hand and put it at {dest}")


def _download_one(url: str, md5: str, dest: Path) -> None:
    """Stream ``url`` into a temporary file beside ``dest``; rename it to ``dest`` only if its MD5 is ``md5``,
    so that no partial or wrong download ever sits at ``dest``. A wrong MD5 is a ValueError with both sums."""
    from . import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"gpuconv/{__version__}"})
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with _progress(url, dest, total) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != md5:
            raise ValueError(f"checksum mismatch: expected MD5 {md5}, got {digest.hexdigest()}; download discarded")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide a shared cache from its other users
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):  # any failure, Ctrl-C included, leaves nothing behind
            os.unlink(tmp)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        pass


def _progress(url: str, dest: Path, total: int | None):
    """A tqdm bar on stderr when it is a terminal; else one line, since a log file would get every update."""
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm
            return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name, file=sys.stderr)
        except ImportError:
            pass
    print(f"downloading {url} to {dest}", file=sys.stderr)
    return _NoBar()


# --------------------------------------------------------------- a user's .npz ---

def load_npz(path) -> Dataset:
    """Arrays x_train, y_train, x_test, y_test; images (N, H, W) or (N, C, H, W), integer labels.

    Integer images (e.g. uint8 MNIST) are scaled to [0, 1]. Refuses only what cannot be a Dataset at all
    (missing arrays, images not 3-D or 4-D numbers, labels not one integer per image); ``check_dataset``
    finds the rest.
    """
    arrays = _read_npz(path)
    missing = [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing arrays {missing}; expected {list(NPZ_KEYS)}, found {list(arrays)}")
    arrays = {k: (arrays[k][:, None] if k.startswith("x") and arrays[k].ndim == 3 else arrays[k]) for k in NPZ_KEYS}
    problems = _structure_problems(arrays, path, "(N, H, W) or (N, C, H, W)")
    if problems:
        raise ValueError("\n".join(problems))
    for k in ("x_train", "x_test"):
        x = arrays[k]
        arrays[k] = _scale_integer_images(x) if x.dtype.kind in "iu" else x.astype(np.float32)
    for k in ("y_train", "y_test"):
        arrays[k] = arrays[k].astype(np.int64)
    return Dataset(**arrays, name=str(path))


def _read_npz(path):
    """load_arrays, with a message a command-line user can act on when the file is not an .npz archive
    (NumPy takes any such file for a pickle and advises ``allow_pickle``, which gpuconv never uses)."""
    try:
        return load_arrays(path, what="training data file")
    except ValueError as exc:
        try:
            with open(path, "rb") as f:
                head = f.read(64)
        except OSError:  # not a file one can read (a directory, say): load_arrays' message stands
            raise exc from None
        if head.startswith(b"PK") and "pickle" in str(exc):
            raise ValueError(f"{path}: not a readable training data file: it holds pickled Python objects, "
                             "which gpuconv does not load; save plain numeric arrays with numpy.savez") from exc
        if head.startswith((b"PK", b"\x93NUMPY")):  # a zip or .npy file: load_arrays' own words fit
            raise
        if not head:
            what = "the file is empty"
        elif all(32 <= b < 127 or b in b"\t\r\n" for b in head):
            what = f"it is a text file beginning {head.splitlines()[0][:40].decode()!r}"
        else:
            what = f"it begins with the bytes {head[:8]!r}"
        raise ValueError(f"{path}: not a readable training data file: not an .npz archive ({what}); write one "
                         "with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)") from exc


# ---------------------------------------------------------------------- checks ---

FAR_OUTSIDE_UNIT = 10.0  # |pixel| beyond this is not [0, 1] data nor standardised data, e.g. 0..255


def check_dataset(ds: Dataset, source: str) -> tuple[list[str], list[str]]:
    """(problems, notes) about ``ds``, one line each, naming ``source`` (a file or dataset) and the array.

    Problems would make training fail or learn nothing: empty splits, labels that are not integers or not
    exactly 0..classes-1 (classes: the distinct labels of both splits), test labels never seen in training,
    NaN or infinite pixels, channels-last images, train and test images of different shapes. Notes are
    harmless but worth a line, e.g. float pixels in 0..255 (inputs are normalised anyway).
    """
    arrays = {k: getattr(ds, k) for k in NPZ_KEYS}
    problems = _structure_problems(arrays, source, "(N, C, H, W)")
    if problems:  # every later check needs 4-D images of numbers and one integer label per image
        return problems, []
    notes = []
    x_train, x_test = ds.x_train, ds.x_test
    for k, role in (("x_train", "train on"), ("x_test", "test on")):
        if len(arrays[k]) == 0:
            problems.append(f"{source}: {k} is empty (shape {arrays[k].shape}): no images to {role}")
    if x_train.shape[1:] != x_test.shape[1:]:
        problems.append(f"{source}: x_train/x_test: train images {x_train.shape[1:]} and test images "
                        f"{x_test.shape[1:]} differ in shape")
    for k in ("x_train", "x_test"):
        problems += _layout_problems(arrays[k], k, source)
    ranges = {}
    for k in ("x_train", "x_test"):
        x = arrays[k]
        if x.size == 0 or not is_floating(x.dtype):
            continue
        finite = np.isfinite(x)
        bad = x.size - int(np.count_nonzero(finite))
        if bad:
            images = int(np.count_nonzero(~finite.reshape(len(x), -1).all(axis=1)))
            problems.append(f"{source}: {k} has {bad} non-finite pixel value{'s' if bad > 1 else ''} (NaN or "
                            f"infinity) in {images} of {len(x)} images")
        values = x[finite] if bad else x
        if values.size:
            ranges[k] = (float(values.min()), float(values.max()))
    problems_, notes = _range_findings(ranges, source)
    problems += problems_
    problems += _label_problems(ds.y_train, ds.y_test, source)
    return problems, notes


def _structure_problems(arrays: dict, source, accepted: str) -> list[str]:
    """What stops the arrays being a Dataset: images not 4-D numbers, labels not one integer per image."""
    out = []
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        n = x.shape[0] if x.ndim else 0
        if x.ndim != 4:
            out.append(f"{source}: x_{split} must be {accepted}, got shape {x.shape}")
        elif x.dtype.kind not in "biuf" and not is_floating(x.dtype):
            out.append(f"{source}: x_{split} must hold numbers, got dtype {x.dtype}")
        if y.ndim != 1 or y.shape[0] != n or y.dtype.kind not in "iu":
            hint = ""
            if y.dtype.kind == "f" and y.size and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
                hint = " (all whole numbers: save them with .astype(np.int64))"
            out.append(f"{source}: y_{split} must be integer labels of shape ({n},), "
                       f"got shape {y.shape} dtype {y.dtype}{hint}")
    return out


def _layout_problems(x: np.ndarray, k: str, source) -> list[str]:
    # (N, 28, 28, 3): a channel count last and an image size second is images saved channels-last.
    if x.shape[3] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        return [f"{source}: {k} has shape {x.shape}, which looks like channels-last (N, H, W, C); "
                "transpose to (N, C, H, W)"]
    return []


def _range_findings(ranges: dict, source) -> tuple[list[str], list[str]]:
    """Float pixels far outside [0, 1] are a note (normalisation takes care of them), unless only one split
    is: then train and test were scaled differently, and the model would see test images it never learned."""
    far = [k for k, (lo, hi) in ranges.items() if max(-lo, hi) > FAR_OUTSIDE_UNIT]
    if not far:
        return [], []

    def span(keys):
        return f"{min(ranges[k][0] for k in keys):g}..{max(ranges[k][1] for k in keys):g}"

    if len(far) == 1 and len(ranges) == 2:
        near = "x_test" if far == ["x_train"] else "x_train"
        return [f"{source}: {far[0]} has pixel values {span(far)} but {near} {span([near])}: scale both the same "
                "way"], []
    return [], [f"{source}: {' and '.join(far)} hold{'s' if len(far) == 1 else ''} float pixel values "
                f"{span(far)}, not 0..1; that is fine: inputs are normalised with the training set's mean and std "
                "anyway"]


def _label_problems(y_train: np.ndarray, y_test: np.ndarray, source) -> list[str]:
    """Labels must be exactly 0..K-1 for the K distinct labels of both splits. Counting distinct values
    (np.unique) costs memory in the number of labels, never in their size: a label of 10**9 is one value."""
    labels = {"y_train": np.unique(y_train), "y_test": np.unique(y_test)}  # sorted distinct values
    classes = np.union1d(labels["y_train"], labels["y_test"])
    k = len(classes)
    if k == 0:
        return []
    rule = f"labels must be 0..{k - 1} for the {k} classes in y_train and y_test"
    one_based = classes[0] == 1 and classes[-1] == k  # distinct and sorted: exactly 1..K
    out = []
    for name, y in (("y_train", y_train), ("y_test", y_test)):
        distinct = labels[name]
        if distinct.size == 0:
            continue
        if one_based:
            out.append(f"{source}: {name} has labels {distinct[0]}..{distinct[-1]}; {rule} (1-based? subtract 1)")
            continue
        if distinct[0] < 0:
            n = int(np.count_nonzero(y < 0))
            out.append(f"{source}: {name} has {n} negative label{'s' if n > 1 else ''} "
                       f"({'smallest ' if n > 1 else ''}{distinct[0]}); {rule}")
        if distinct[-1] > k - 1:
            n = int(np.count_nonzero(y > k - 1))
            out.append(f"{source}: {name} has {n} label{'s' if n > 1 else ''} above {k - 1} "
                       f"({'largest ' if n > 1 else ''}{distinct[-1]}); {rule}")
    unseen = np.setdiff1d(labels["y_test"], labels["y_train"])
    if unseen.size and labels["y_train"].size:
        n = int(np.count_nonzero(np.isin(y_test, unseen)))
        shown = ", ".join(str(v) for v in unseen[:10]) + (f" and {unseen.size - 10} more" if unseen.size > 10 else "")
        out.append(f"{source}: y_test has label{'s' if unseen.size > 1 else ''} {shown} ({n} test image"
                   f"{'s' if n > 1 else ''}) never seen in y_train; the model cannot learn them")
    return out


def normalization(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of (N, C, H, W) images, float32 of shape (C,); the std is
    floored at 1e-6 so that a constant channel divides safely. Accumulated in float64, a few thousand images
    at a time, so that CIFAR-10's 600 MB of float32 never gets a float64 copy."""
    if x_train.ndim != 4 or len(x_train) == 0:
        raise ValueError(f"normalization needs (N, C, H, W) images with N >= 1, got shape {x_train.shape}")
    chunks = range(0, len(x_train), 4096)
    count = x_train.size // x_train.shape[1]
    mean = sum(x_train[i:i + 4096].sum(axis=(0, 2, 3), dtype=np.float64) for i in chunks) / count
    centred = mean.reshape(1, -1, 1, 1)
    var = sum(np.square(x_train[i:i + 4096] - centred).sum(axis=(0, 2, 3)) for i in chunks) / count
    return mean.astype(np.float32), np.maximum(np.sqrt(var), 1e-6).astype(np.float32)


__all__ = ["Dataset", "DATASETS", "DatasetUnavailableError", "REMOTE", "RemoteDataset", "RemoteFile", "cache_root",
           "check_dataset", "load_dataset", "load_digits", "load_npz", "normalization", "read_idx"]
