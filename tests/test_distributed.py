"""Data-parallel training: 2 processes over MPI on the CPU end where one process ends, a refusal on one rank
ends every rank with its message, and the communicators' bucketing and NCCL plumbing (with stand-ins)."""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from gpuconv import distributed, nn

ROOT = Path(__file__).resolve().parents[1]
MPI_MISSING = shutil.which("mpiexec") is None or __import__("importlib").util.find_spec("mpi4py") is None
needs_mpi = pytest.mark.skipif(MPI_MISSING, reason=f"no MPI here: {distributed.INSTALL_HINT}")
FINAL = re.compile(r"test accuracy (?P<acc>[\d.]+)% on \d+ images \| [\d.]+ s/epoch on (?P<where>.+) \(first")


def gpuconv(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "gpuconv", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


def test_buckets_keep_the_order_split_by_dtype_and_size():
    arrays = [np.zeros(10, np.float32), np.zeros(10, np.float32), np.zeros(3, np.int64), np.zeros(300, np.float32),
              np.zeros(1, np.float32)]
    assert distributed.buckets(arrays, limit=1000) == [[0, 1], [2], [3], [4]]
    assert distributed.buckets(arrays, limit=10 ** 6) == [[0, 1], [2], [3, 4]]


def test_a_plain_process_is_a_single_process_world(monkeypatch):
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.launched_by_mpi()
    monkeypatch.setenv("PMI_SIZE", "2")
    assert distributed.launched_by_mpi()
    world = distributed.SingleProcess()
    a = [np.ones(3)]
    world.allreduce_sum(a)
    assert a[0].tolist() == [1, 1, 1] and world.allgather("x") == ["x"]


@needs_mpi
def test_two_processes_train_to_the_weights_of_one(tmp_path):
    """The default model, 3 epochs, global batch 32: 2 processes x 16 images against 1 x 32."""
    one = gpuconv("train", "--device", "cpu", "--epochs", 3, "--save", tmp_path / "one.npz")
    two = gpuconv("train", "--device", "cpu", "--epochs", 3, "--nproc", 2, "--save", tmp_path / "two.npz")
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert "data-parallel: 2 processes (MPICommunicator), each 16-16 images of every batch of 32" in two.stdout
    assert two.stdout.count("data: ") == 1  # rank 0 alone prints
    a, b = FINAL.search(one.stdout), FINAL.search(two.stdout)
    assert a["acc"] == b["acc"] and b["where"] == "2 processes (cpu)"
    w1, w2 = nn.load_arrays(tmp_path / "one.npz"), nn.load_arrays(tmp_path / "two.npz")
    worst = 0.0
    for name in w1:
        if name != nn.module.METADATA:
            scale = max(float(np.abs(w1[name]).max()), 1.0)
            worst = max(worst, float(np.abs(w1[name] - w2[name]).max()) / scale)
    print(f"largest weight difference after 3 epochs, 1 vs 2 processes: {worst:.2e} (relative)")
    assert worst < 1e-5  # float32 rounding of sums taken in another order, over 135 Adam steps (measured 1.2e-7)


@needs_mpi
def test_a_refusal_on_one_rank_ends_every_rank_with_its_message(tmp_path):
    good = tmp_path / "good.npz"
    rng = np.random.default_rng(0)
    np.savez(good, x_train=rng.random((20, 8, 8)), y_train=np.arange(20) % 2, x_test=rng.random((4, 8, 8)),
             y_test=np.arange(4) % 2)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    common = [sys.executable, "-m", "gpuconv", "train", "--device", "cpu", "--epochs", "1"]
    proc = subprocess.run([shutil.which("mpiexec"), "-n", "1", *common, "--data", str(good), ":", "-n", "1", *common,
                           "--data", str(tmp_path / "absent.npz")], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert re.search(r"^gpuconv: error: rank 1: .*absent\.npz", proc.stderr, re.M), proc.stderr
    assert "Traceback" not in proc.stderr and "epoch " not in proc.stdout


def test_nproc_without_mpi_says_what_to_install(monkeypatch, capsys):
    from gpuconv import cli
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: None)
    assert cli.main(["train", "--nproc", "2"]) == 2
    assert f"--nproc needs MPI: {distributed.INSTALL_HINT}" in capsys.readouterr().err


# ------------------------------------------------- NCCL, with stand-ins ---

class _DeviceArray(np.ndarray):
    """A NumPy array that shows a CuPy-like ``.data.ptr``."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ctypes.data)


def test_nccl_all_reduce_and_broadcast_pass_each_bucket_by_pointer_size_and_type():
    calls = []

    class FakeNcclComm:
        def allReduce(self, send, recv, count, dtype, op, stream):  # as NCCL of 2 ranks holding the same values
            assert send == recv and op == "SUM" and stream == 7
            kind = {"F32": ctypes.c_float, "I64": ctypes.c_int64}[dtype]
            view = np.ctypeslib.as_array((kind * count).from_address(recv))
            view *= 2
            calls.append(("allReduce", count, dtype))

        def bcast(self, buffer, count, dtype, root, stream):
            calls.append(("bcast", count, dtype, root))

    fake_cupy = types.SimpleNamespace(
        concatenate=lambda parts: np.concatenate(parts).view(_DeviceArray),
        cuda=types.SimpleNamespace(get_current_stream=lambda: types.SimpleNamespace(ptr=7)))
    fake_nccl = types.SimpleNamespace(NCCL_FLOAT32="F32", NCCL_INT64="I64", NCCL_FLOAT16="F16", NCCL_FLOAT64="F64",
                                      NCCL_SUM="SUM")
    comm = distributed.NCCLCommunicator.__new__(distributed.NCCLCommunicator)
    comm.cupy, comm.nccl, comm.comm, comm.rank, comm.size = fake_cupy, fake_nccl, FakeNcclComm(), 0, 2
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(2, np.float32), np.array([3], np.int64)]
    comm.allreduce_sum(arrays)
    assert calls == [("allReduce", 8, "F32"), ("allReduce", 1, "I64")]
    assert arrays[0].tolist() == [[0, 2, 4], [6, 8, 10]] and arrays[1].tolist() == [2, 2] and arrays[2][0] == 6
    comm.broadcast(arrays)
    assert calls[2:] == [("bcast", 8, "F32", 0), ("bcast", 1, "I64", 0)]
    with pytest.raises(TypeError, match="NCCL all-reduce of int8 arrays is not supported"):
        comm.allreduce_sum([np.zeros(2, np.int8)])


def tiny_npz(path, n=7):
    rng = np.random.default_rng(3)
    np.savez(path, x_train=rng.random((n, 8, 8)).astype(np.float32), y_train=np.arange(n) % 2,
             x_test=rng.random((4, 8, 8)).astype(np.float32), y_test=np.arange(4) % 2)
    return path


@needs_mpi
def test_a_last_batch_smaller_than_the_processes_leaves_one_empty_and_still_matches(tmp_path):
    """7 images in batches of 3: the last batch has 1 image, so rank 0 gets none in that step."""
    data = tiny_npz(tmp_path / "tiny.npz")
    args = ("train", "--device", "cpu", "--data", data, "--batch-size", 3, "--epochs", 2)
    one, two = gpuconv(*args, "--save", tmp_path / "one.npz"), gpuconv(*args, "--nproc", 2, "--save", tmp_path / "two.npz")
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    w1, w2 = nn.load_arrays(tmp_path / "one.npz"), nn.load_arrays(tmp_path / "two.npz")
    for name in w1:
        if name != nn.module.METADATA:
            np.testing.assert_allclose(w2[name], w1[name], rtol=1e-5, atol=1e-6, err_msg=name)


@needs_mpi
def test_batch_norm_running_statistics_are_one_models_on_every_rank(tmp_path):
    """With BatchNorm each rank's batches move its own statistics; they are averaged after every epoch, so the
    accuracy printed is that of the weights saved (which eval recomputes from the file)."""
    data = tiny_npz(tmp_path / "tiny.npz", n=16)
    two = gpuconv("train", "--device", "cpu", "--data", data, "--model", "resnet8", "--batch-size", 8, "--epochs", 2,
                  "--nproc", 2, "--save", tmp_path / "w.npz")
    assert two.returncode == 0, two.stderr
    printed = FINAL.search(two.stdout)["acc"]
    evaluated = gpuconv("eval", "--weights", tmp_path / "w.npz", "--device", "cpu")
    assert f"accuracy {printed}% on 4 images" in evaluated.stdout, (two.stdout, evaluated.stdout)
