"""Data-parallel training: a small communicator interface over an existing engine.

``world()`` is the communicator of this process: ``SingleProcess`` for a plain run, ``MPICommunicator``
(mpi4py) when the process was started by ``mpiexec -n N`` (NumPy arrays, on the CPU), and
``NCCLCommunicator`` (CuPy's NCCL bindings, bootstrapped over MPI) for CuPy arrays on several GPUs.
Each offers ``rank``, ``size``, ``allreduce_sum`` (in place, on a list of arrays, as one flat bucket per
dtype and at most ``BUCKET_BYTES``: few calls, in a fixed order so that runs repeat bit for bit),
``broadcast`` (in place, from rank 0), ``allgather`` (small Python objects), ``barrier`` and ``abort``
(end every rank: a failure on one rank must not leave the others waiting in a collective).

The extra ``gpuconv[mpi]`` installs mpi4py and the MPICH wheel, which is a working MPI on its own.
"""
from __future__ import annotations

import os

import numpy as np


#: At most this many bytes per all-reduce call (one call per bucket).
BUCKET_BYTES = 16 << 20

#: Environment variables an MPI launcher sets to the number of processes (MPICH's Hydra, Open MPI, PMIx).
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")

INSTALL_HINT = "pip install 'gpuconv[mpi]' (mpi4py and the MPICH wheel)"


class DistributedUnavailableError(RuntimeError):
    """Several processes were asked for, but MPI (or NCCL) cannot be used here."""


def launched_by_mpi() -> bool:
    """Whether an MPI launcher started this process as one of several."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 1:
            return True
    return False


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DistributedUnavailableError(f"several processes need mpi4py ({exc}): {INSTALL_HINT}") from None
    return MPI


class SingleProcess:
    """The communicator of a run in one process: every collective is the identity."""

    rank, size = 0, 1

    def allreduce_sum(self, arrays: list) -> None:
        pass

    def broadcast(self, arrays: list) -> None:
        pass

    def allgather(self, value) -> list:
        return [value]

    def barrier(self) -> None:
        pass

    def abort(self, code: int) -> None:
        raise SystemExit(code)


def buckets(arrays: list, limit: int = BUCKET_BYTES) -> list[list[int]]:
    """Indices of ``arrays`` grouped, in order, into runs of one dtype and at most ``limit`` bytes each."""
    out, current, size, dtype = [], [], 0, None
    for i, a in enumerate(arrays):
        if current and (a.dtype != dtype or size + a.nbytes > limit):
            out.append(current)
            current, size = [], 0
        current.append(i)
        size += a.nbytes
        dtype = a.dtype
    if current:
        out.append(current)
    return out


def _flatten(xp, arrays, indices):
    return xp.concatenate([arrays[i].reshape(-1) for i in indices])


def _unflatten(flat, arrays, indices) -> None:
    offset = 0
    for i in indices:
        n = arrays[i].size
        arrays[i][...] = flat[offset:offset + n].reshape(arrays[i].shape)
        offset += n


class MPICommunicator:
    """mpi4py's COMM_WORLD, for NumPy arrays."""

    def __init__(self):
        self.MPI = _mpi()
        self.comm = self.MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()

    def allreduce_sum(self, arrays: list) -> None:
        for indices in buckets(arrays):
            flat = _flatten(np, arrays, indices)
            self.comm.Allreduce(self.MPI.IN_PLACE, flat, op=self.MPI.SUM)
            _unflatten(flat, arrays, indices)

    def broadcast(self, arrays: list) -> None:
        for indices in buckets(arrays):
            flat = _flatten(np, arrays, indices)
            self.comm.Bcast(flat, root=0)
            _unflatten(flat, arrays, indices)

    def allgather(self, value) -> list:
        return self.comm.allgather(value)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int) -> None:
        self.comm.Abort(code)


class NCCLCommunicator:
    """NCCL through CuPy, for CuPy arrays, one GPU per rank (rank r on GPU r mod the GPUs present);
    MPI starts the processes and hands NCCL its unique id."""

    _NCCL_TYPES = {np.dtype(np.float16): "NCCL_FLOAT16", np.dtype(np.float32): "NCCL_FLOAT32",
                   np.dtype(np.float64): "NCCL_FLOAT64", np.dtype(np.int64): "NCCL_INT64"}

    def __init__(self, mpi: MPICommunicator | None = None):
        self.mpi = mpi or MPICommunicator()
        self.rank, self.size = self.mpi.rank, self.mpi.size
        try:
            import cupy
            from cupy.cuda import nccl
        except ImportError as exc:
            raise DistributedUnavailableError(f"NCCL through CuPy is not available ({exc})") from None
        self.cupy, self.nccl = cupy, nccl
        cupy.cuda.Device(self.rank % cupy.cuda.runtime.getDeviceCount()).use()
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = self.mpi.comm.bcast(uid, root=0)
        self.comm = nccl.NcclCommunicator(self.size, uid, self.rank)

    @property
    def device(self) -> str:
        return f"cuda:{self.cupy.cuda.Device().id}"

    def _type(self, dtype):
        try:
            return getattr(self.nccl, self._NCCL_TYPES[np.dtype(dtype)])
        except KeyError:
            raise TypeError(f"NCCL all-reduce of {dtype} arrays is not supported here") from None

    def allreduce_sum(self, arrays: list) -> None:
        stream = self.cupy.cuda.get_current_stream().ptr
        for indices in buckets(arrays):
            flat = _flatten(self.cupy, arrays, indices)
            self.comm.allReduce(flat.data.ptr, flat.data.ptr, flat.size, self._type(flat.dtype), self.nccl.NCCL_SUM,
                                stream)
            _unflatten(flat, arrays, indices)

    def broadcast(self, arrays: list) -> None:
        stream = self.cupy.cuda.get_current_stream().ptr
        for indices in buckets(arrays):
            flat = _flatten(self.cupy, arrays, indices)
            self.comm.bcast(flat.data.ptr, flat.size, self._type(flat.dtype), 0, stream)
            _unflatten(flat, arrays, indices)

    def allgather(self, value) -> list:
        return self.mpi.allgather(value)

    def barrier(self) -> None:
        self.cupy.cuda.get_current_stream().synchronize()
        self.mpi.barrier()

    def abort(self, code: int) -> None:
        self.mpi.abort(code)


_world = None


def world(device: str = "cpu"):
    """This process's communicator (created once): MPI (CPU) or NCCL (GPU) when started by an MPI launcher
    as one of several processes, else ``SingleProcess``."""
    global _world
    if _world is None:
        if not launched_by_mpi():
            _world = SingleProcess()
        elif device.startswith("cuda"):
            _world = NCCLCommunicator()
        else:
            _world = MPICommunicator()
    return _world


__all__ = ["world", "SingleProcess", "MPICommunicator", "NCCLCommunicator", "buckets", "launched_by_mpi",
           "DistributedUnavailableError", "BUCKET_BYTES", "INSTALL_HINT"]
