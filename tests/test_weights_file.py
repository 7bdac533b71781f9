"""Weight files: exact round trips, no unpickling, atomic saves, and clear refusals of bad files."""
import os
import zipfile

import numpy as np
import pytest

from gpuconv import nn


def make_model(seed=0, dtype=np.float32):
    nn.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 3 * 3, 3)).to(dtype)


def trained_model(seed=0, dtype=np.float32):
    """A model whose BN running statistics moved off their initial 0 / 1."""
    model = make_model(seed, dtype)
    for step in range(3):
        model.forward(np.random.default_rng(step).standard_normal((4, 2, 6, 6)).astype(dtype) * 2 + 1)
    assert not np.allclose(model[1].running_mean, 0)
    return model


def assert_states_bitwise_equal(a, b):
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), name


def listing(directory):
    return sorted(os.listdir(directory))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_bitwise(tmp_path, dtype):
    model = trained_model(dtype=dtype)
    path = tmp_path / "weights.npz"
    model.save(path)
    assert listing(tmp_path) == ["weights.npz"]  # no temporary file left behind

    fresh = make_model(seed=1, dtype=dtype)
    assert not np.array_equal(fresh[0].weight.data, model[0].weight.data)
    fresh.load(path)
    assert_states_bitwise_equal(fresh.state_dict(), model.state_dict())
    assert "1.running_mean" in fresh.state_dict() and "1.running_var" in fresh.state_dict()
    model.eval(), fresh.eval()
    x = np.random.default_rng(9).standard_normal((2, 2, 6, 6)).astype(dtype)
    np.testing.assert_array_equal(fresh.forward(x), model.forward(x))
    # The loaded arrays are the model's own: changing the file later does not change the model.
    make_model(seed=2, dtype=dtype).save(path)
    assert_states_bitwise_equal(fresh.state_dict(), model.state_dict())


def test_save_overwrites_and_accepts_str_paths(tmp_path):
    path = str(tmp_path / "w.npz")
    make_model(seed=0).save(path)
    model = make_model(seed=3)
    model.save(path)
    loaded = nn.load_arrays(path)
    assert_states_bitwise_equal(loaded, model.state_dict())
    assert listing(tmp_path) == ["w.npz"]


def test_object_arrays_are_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"

    class Trap:  # unpickling this would create the marker directory
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    state = make_model().state_dict()
    trap = np.empty(1, dtype=object)
    trap[0] = Trap()
    state["0.bias"] = trap
    path = tmp_path / "evil.npz"
    np.savez(path, **state)

    with pytest.raises(ValueError, match=r"evil.npz: not a readable gpuconv weight file .*pickle"):
        make_model().load(path)
    with pytest.raises(ValueError, match=r"not a readable gpuconv weight file"):
        nn.load_arrays(path)
    assert not marker.exists()
    # The trap is real: a loader that allowed pickles would have run it.
    with np.load(path, allow_pickle=True) as data:
        data["0.bias"]
    assert marker.exists()


def test_failed_save_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "weights.npz"
    old = trained_model(seed=0)
    old.save(path)
    old_bytes = path.read_bytes()

    def savez_that_fails_half_way(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", savez_that_fails_half_way)
    with pytest.raises(OSError, match="disk full"):
        make_model(seed=5).save(path)
    assert path.read_bytes() == old_bytes
    assert listing(tmp_path) == ["weights.npz"]
    monkeypatch.undo()
    fresh = make_model(seed=5)
    fresh.load(path)
    assert_states_bitwise_equal(fresh.state_dict(), old.state_dict())


def test_failed_rename_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "weights.npz"
    make_model(seed=0).save(path)
    old_bytes = path.read_bytes()

    def replace_interrupted(src, dst):
        raise KeyboardInterrupt  # even an interrupt cleans up

    monkeypatch.setattr(os, "replace", replace_interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_model(seed=5).save(path)
    assert path.read_bytes() == old_bytes
    assert listing(tmp_path) == ["weights.npz"]


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    def savez_fails(file, **arrays):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", savez_fails)
    with pytest.raises(OSError):
        make_model().save(tmp_path / "new.npz")
    assert listing(tmp_path) == []


def test_save_into_a_missing_directory_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        make_model().save(tmp_path / "no-such-dir" / "w.npz")


# ------------------------------------------------------- refused files ---

def write_state(path, state):
    np.savez(path, **state)
    return path


def edit_state(**changes):
    state = trained_model().state_dict()
    for name, value in changes.items():
        name = name.replace("__", ".")
        if value is None:
            del state[name]
        else:
            state[name] = value
    return state


@pytest.mark.parametrize("state,match", [
    (edit_state(**{"1__running_var": None}), r"missing \['1.running_var'\], unexpected \[\]"),
    (edit_state(**{"5__bias": None, "0__weight": None}), r"missing \['0.weight', '5.bias'\]"),
    (edit_state(**{"7.weight": np.zeros(3, np.float32)}), r"missing \[\], unexpected \['7.weight'\]"),
    (edit_state(**{"0__weight": np.zeros((4, 2, 3, 2), np.float32)}),
     r"0.weight: expected shape \(4, 2, 3, 3\) dtype float32, got shape \(4, 2, 3, 2\) dtype float32"),
    (edit_state(**{"5__weight": np.zeros((3, 36, 1), np.float32)}),
     r"5.weight: expected shape \(3, 36\) dtype float32, got shape \(3, 36, 1\)"),
    (edit_state(**{"1__running_mean": np.zeros(4, np.float64)}),
     r"1.running_mean: expected shape \(4,\) dtype float32, got shape \(4,\) dtype float64"),
    (edit_state(**{"0__bias": np.zeros(4, np.int32)}), r"0.bias: expected .*dtype float32, got .*dtype int32"),
], ids=["missing-buffer", "missing-two", "extra", "wrong-shape", "wrong-ndim", "wrong-dtype-buffer",
        "wrong-dtype-int"])
def test_load_refuses_mismatched_state(tmp_path, state, match):
    path = write_state(tmp_path / "w.npz", state)
    model = make_model(seed=4)
    before = model.state_dict()
    with pytest.raises(ValueError, match=match):
        model.load(path)
    assert_states_bitwise_equal(model.state_dict(), before)  # nothing half-loaded


def test_load_refuses_a_float64_file_for_a_float32_model(tmp_path):
    path = tmp_path / "w.npz"
    make_model(dtype=np.float64).save(path)
    with pytest.raises(ValueError, match=r"0.weight: expected shape \(4, 2, 3, 3\) dtype float32, got .*float64"):
        make_model().load(path)


@pytest.mark.parametrize("cut", ["tail-1", "half", "header-only", "empty"])
def test_load_refuses_truncated_files(tmp_path, cut):
    good = tmp_path / "good.npz"
    trained_model().save(good)
    data = good.read_bytes()
    keep = {"tail-1": len(data) - 1, "half": len(data) // 2, "header-only": 30, "empty": 0}[cut]
    bad = tmp_path / "cut.npz"
    bad.write_bytes(data[:keep])
    with pytest.raises(ValueError, match=r"cut.npz: not a readable gpuconv weight file \(\w+"):
        make_model().load(bad)


def test_load_refuses_a_corrupted_member(tmp_path):
    path = tmp_path / "w.npz"
    trained_model().save(path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("0.weight.npy")
    offset = info.header_offset + 30 + len(info.filename) + info.compress_size - 8  # inside the stored data
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"not a readable gpuconv weight file \(BadZipFile: .*CRC"):
        make_model().load(path)


@pytest.mark.parametrize("content,match", [
    (b"these are not weights\n", r"not a readable gpuconv weight file"),
    (b"PK\x03\x04" + b"\x00" * 40, r"not a readable gpuconv weight file"),
], ids=["text", "zip-magic-then-garbage"])
def test_load_refuses_files_that_are_not_archives(tmp_path, content, match):
    path = tmp_path / "w.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        make_model().load(path)


def test_load_refuses_a_single_npy_array(tmp_path):
    path = tmp_path / "w.npy"
    np.save(path, np.zeros((4, 2, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"w.npy: not a readable gpuconv weight file .*not an .npz archive"):
        make_model().load(path)


def test_load_of_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        make_model().load(tmp_path / "absent.npz")
