"""Run gpuconv's CUDA kernels on the CPU: compile a .cu file as C++17 with g++ and launch its kernels.

Why: CI machines have no GPU, yet the kernels in ``kernels/*.cu`` must be tested for correctness.
``cuda_emulation.h`` turns the CUDA dialect the kernels use (plain templates, static ``__shared__`` arrays,
``__syncthreads()``) into C++ and runs the threads of a block as cooperative fibers, one block after
another. This module finds the ``extern "C" __global__`` kernels of a file, generates a launcher for each,
compiles everything into a shared library (cached by content hash) and calls it through ctypes with
NumPy arrays standing in for device memory, checking every argument against the kernel's C parameter
types the way a careful ``cupy.RawKernel`` call should be checked.

Bug catchers, all on by default:
- ``__shared__`` memory is filled with NaN bytes at the start of every block (reads of shared memory the
  block did not write give NaN);
- buffers from :func:`empty` / :func:`to_guarded` are NaN-filled (an output element never written stays
  NaN) and mmap'ed flush against inaccessible (PROT_NONE) guard pages, 1 MiB of them on each side: with
  the default placement "end" the last byte of the data is the last byte of a page, so any read or write
  past the end faults; with "start" (:func:`set_buffer_placement`, or ``empty(..., placement="start")``)
  the first byte starts a page, so any access before the start faults. The handler in cuda_emulation.h
  stops the launch and :class:`OutOfBoundsAccess` names the buffer, the byte offset, the thread, the block
  and the source line. The slack on the other side (less than a page) is NaN-filled and checked after
  every launch (a write there is an :class:`OutOfBoundsWrite`; a read there reads NaN). A fault at an
  address in no buffer (a null or wild pointer) is an :class:`OutOfBoundsAccess` too; a fiber stack
  overflow or an integer division by zero a :class:`KernelLaunchError`; the process never crashes and the
  next launch runs normally. ``GPUCONV_EMU_BUFFER_PLACEMENT=start`` sets the default placement;
- g++ warns (``module.compiler_warnings``) about implicit narrowing conversions (``-Wconversion``), e.g.
  a 64-bit index stored in an ``int``;
- divergent ``__syncthreads()`` (some threads exited while others wait, or threads wait at different
  calls) and ``__trap()`` raise :class:`KernelLaunchError`;
- warp primitives (``__syncwarp``, shuffles, votes; ldmatrix and mma from kernels/warp_primitives.cuh) are
  rendezvous of the lanes of their mask: lanes at different call sites, a lane of the mask that exited or
  waits at ``__syncthreads()`` raise :class:`KernelLaunchError` ("divergent warp primitive", "deadlock");
  a lane that reads another's shared-memory write without ``__syncwarp()`` reads the NaN poison, and
  cp.async copies land only when the issuing thread waits for their group;
- ``schedule="reverse"`` runs threads and blocks in reverse order, exposing missing barriers and
  inter-block dependencies that the forward order hides.

Usage::

    module = load_gpuconv_kernels("im2col.cu")          # or load_module(path) for any .cu file
    x = to_guarded(np.random.rand(2, 3, 8, 8).astype(np.float32))
    col = empty((3 * 3 * 3, 2 * 6 * 6), np.float32)
    module.launch("gpuconv_im2col_nchw_f32", (64,), (256,), x, col, *conv.conv_shape_args(g))
    # or, as a cupy.RawKernel is called: module["gpuconv_im2col_nchw_f32"](grid, block, args)

Blocks run one after another and each block's threads one at a time, so this is for correctness on small
shapes (a 256-thread block with a few barriers takes about a millisecond), not for timing.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import mmap
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

HERE = Path(__file__).resolve().parent
HEADER = HERE / "cuda_emulation.h"
CXX = os.environ.get("CXX", "g++")
# -g1: line tables only, so that a fault is reported with its source line (addr2line). -fstack-clash-protection:
# a large stack frame probes every page, so a fiber stack overflow always hits the stack's guard page.
CXXFLAGS = ["-O1", "-g1", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", "-fno-strict-aliasing",
            "-fstack-clash-protection", "-U_FORTIFY_SOURCE", "-Wall", "-Wconversion", "-Wno-unknown-pragmas",
            "-Wno-unused-function", "-Wno-unused-variable", "-Wno-unused-but-set-variable"]
PAGE_BYTES = mmap.PAGESIZE
GUARD_BYTES = max(1 << 20, PAGE_BYTES)  # PROT_NONE on each side of every buffer: address space only
POISON_BYTE = 0xFF  # 0xFF.. is NaN in float16, float32 and float64 (and -1 in signed integers)
PLACEMENTS = ("end", "start")
_SI_KERNEL = 0x80  # si_code of a general protection fault (a non-canonical address): si_addr is 0


class CompileError(RuntimeError):
    """g++ rejected the kernel file (or the generated launchers)."""


class KernelLaunchError(RuntimeError):
    """The launch itself was wrong (bad configuration, argument types) or the kernel broke a CUDA rule."""


class OutOfBoundsWrite(KernelLaunchError):
    """A kernel wrote into the NaN-filled slack before or after a buffer (found after the launch)."""


class OutOfBoundsAccess(KernelLaunchError):
    """A kernel read or wrote a guard page next to a buffer, or an address in no buffer (found at once).

    ``address``, ``buffer`` (its label, or None for a wild access), ``offset`` (bytes from the buffer's
    start), ``is_write`` (True, False, or None where the CPU does not say), ``thread`` and ``block``.
    """

    def __init__(self, message, *, address=None, buffer=None, offset=None, is_write=None, thread=None,
                 block=None):
        super().__init__(message)
        self.address, self.buffer, self.offset, self.is_write = address, buffer, offset, is_write
        self.thread, self.block = thread, block


def compiler_available() -> bool:
    """g++ and the binutils next to it (nm, c++filt: the symbol table lists the shared variables)."""
    return all(shutil.which(tool) is not None for tool in (CXX, "nm", "c++filt"))


@dataclass(frozen=True)
class SharedVariable:
    name: str      # demangled, e.g. "gpuconv::conv2d_fprop<float, ...>(...)::smem"
    offset: int    # in the shared library
    size: int

    @property
    def owner(self) -> str:
        """The function that declares it (its static shared memory is the sum over its variables)."""
        return self.name.rsplit("::", 1)[0]


def function_local_statics(so_path: Path) -> list[SharedVariable]:
    """Writable function-local statics of a shared library (mangled ``_ZZ...``): the __shared__ variables."""
    listing = _run_compiler(["nm", "--defined-only", "-S", str(so_path)], "listing symbols").stdout
    found = []
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[2] in "bBdD" and fields[3].startswith("_ZZ"):
            found.append((fields[3], int(fields[0], 16), int(fields[1], 16)))
    if not found:
        return []
    demangled = subprocess.run(["c++filt"], input="\n".join(f[0] for f in found), capture_output=True,
                               text=True, check=True).stdout.splitlines()
    return [SharedVariable(name, offset, size) for name, (_, offset, size) in zip(demangled, found)]


def _symbol_offset(so_path: Path, symbol: str) -> int:
    listing = _run_compiler(["nm", "--defined-only", str(so_path)], "listing symbols").stdout
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[2] == symbol:
            return int(fields[0], 16)
    raise CompileError(f"{so_path}: symbol {symbol} not found")


# ------------------------------------------------------------------------------------------ sources ---

_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[ \t]*$', re.MULTILINE)


def inline_local_includes(path: Path, _seen: set | None = None) -> str:
    """The text of ``path`` with each ``#include "x"`` replaced by the file x from the same folder.

    Recursive; a file already inlined is not inlined again (as include guards / #pragma once would
    have it). #line directives keep compiler messages and ``__syncthreads()`` sites pointing at the
    real files. gpuconv/cuda/loader.py does the same textual inlining for NVRTC.
    """
    path = Path(path).resolve()
    seen = set() if _seen is None else _seen
    seen.add(path)
    text = path.read_text()
    pieces, last = [], 0
    for match in _INCLUDE.finditer(text):
        pieces.append(text[last:match.start()])
        included = (path.parent / match.group(1)).resolve()
        if not included.is_file():
            raise FileNotFoundError(f'{path}: #include "{match.group(1)}" not found next to it')
        line_after = text.count("\n", 0, match.end()) + 2
        if included not in seen:
            pieces.append(inline_local_includes(included, seen))
        pieces.append(f'\n#line {line_after} "{path.name}"')
        last = match.end()
    pieces.append(text[last:])
    return f'#line 1 "{path.name}"\n' + "".join(pieces)


# ----------------------------------------------------------------------------------- parameter types ---

_POINTEE_DTYPES = {
    "float": np.float32, "double": np.float64, "gpuconv_half": np.float16, "__half": np.float16,
    "gpuconv_bf16": ml_dtypes.bfloat16,  # kernels/warp_primitives.cuh's bfloat16 storage type
    "half": np.float16, "int": np.int32, "unsigned int": np.uint32, "unsigned": np.uint32,
    "long long": np.int64, "long long int": np.int64, "unsigned long long": np.uint64,
    "signed char": np.int8, "unsigned char": np.uint8, "char": np.int8, "short": np.int16,
    "unsigned short": np.uint16, "bool": np.bool_, "int8_t": np.int8, "uint8_t": np.uint8,
    "int32_t": np.int32, "uint32_t": np.uint32, "int64_t": np.int64, "uint64_t": np.uint64,
}
_SCALAR_TYPES = {  # C type -> (numpy scalar type, ctypes type)
    "int": (np.int32, ctypes.c_int), "int32_t": (np.int32, ctypes.c_int32),
    "unsigned int": (np.uint32, ctypes.c_uint), "unsigned": (np.uint32, ctypes.c_uint),
    "uint32_t": (np.uint32, ctypes.c_uint32),
    "long long": (np.int64, ctypes.c_longlong), "long long int": (np.int64, ctypes.c_longlong),
    "int64_t": (np.int64, ctypes.c_int64),
    "unsigned long long": (np.uint64, ctypes.c_ulonglong), "uint64_t": (np.uint64, ctypes.c_uint64),
    "size_t": (np.uint64, ctypes.c_size_t),
    "float": (np.float32, ctypes.c_float), "double": (np.float64, ctypes.c_double),
    "bool": (np.bool_, ctypes.c_bool),
}
_QUALIFIERS = {"const", "volatile", "__restrict__", "__restrict", "restrict"}


@dataclass(frozen=True)
class Parameter:
    c_type: str                 # as written (after macro expansion), e.g. "const float* __restrict__"
    name: str
    is_pointer: bool
    dtype: np.dtype             # pointee dtype for pointers, value dtype for scalars
    writable: bool              # pointers: the pointee is not const
    ctype: type = ctypes.c_void_p  # what ctypes passes

    def describe(self) -> str:
        return f"{self.c_type} {self.name}".strip()


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "<([":
            depth += 1
        elif ch in ">)]":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


_TYPE_KEYWORDS = {"int", "long", "float", "double", "char", "short", "unsigned", "signed", "bool"}


def split_parameter(text: str) -> tuple[str, str | None, list[str]]:
    """One C parameter -> (its type as written, its name or None, the type's tokens)."""
    tokens = re.findall(r"[A-Za-z_]\w*|\*|&|\[|\]", text)
    if "&" in tokens or "[" in tokens:
        raise KernelLaunchError(f"unsupported kernel parameter {text!r}: pass pointers or scalars")
    words = [t for t in tokens if t not in _QUALIFIERS and t != "*"]
    # The last identifier is the name unless the type ends there (an unnamed parameter).
    if tokens and tokens[-1] != "*" and tokens[-1] not in _QUALIFIERS and len(words) >= 2 \
            and words[-1] not in _TYPE_KEYWORDS:
        name = tokens[-1]
        stripped = text.rstrip()
        return stripped[:stripped.rfind(name)].strip(), name, tokens[:-1]
    return text.strip(), None, tokens


def parse_parameter(text: str, index: int, type_map: dict | None = None) -> Parameter:
    """One C parameter -> Parameter; ``type_map`` adds pointee types (e.g. {"my_half": np.float16})."""
    c_type, name, tokens = split_parameter(text)
    name = name or f"arg{index}"
    base = " ".join(t for t in tokens if t not in _QUALIFIERS and t != "*")
    stars = tokens.count("*")
    if stars > 1:
        raise KernelLaunchError(f"unsupported kernel parameter {text!r}: pointer to pointer")
    if stars == 1:
        writable = "const" not in tokens[:tokens.index("*")]
        pointee = {**_POINTEE_DTYPES, **(type_map or {})}.get(base)
        if pointee is None:
            raise KernelLaunchError(f"unsupported pointee type {base!r} in kernel parameter {text!r} "
                                    f"(pass type_map={{{base!r}: numpy dtype}} if it is a storage type)")
        return Parameter(c_type, name, True, np.dtype(pointee), writable)
    if base not in _SCALAR_TYPES:
        raise KernelLaunchError(f"unsupported scalar type {base!r} in kernel parameter {text!r}")
    return Parameter(c_type, name, False, np.dtype(_SCALAR_TYPES[base][0]), False, _SCALAR_TYPES[base][1])


@dataclass(frozen=True)
class KernelSignature:
    name: str
    parameters: tuple[Parameter, ...]

    def describe(self) -> str:
        return f"{self.name}({', '.join(p.describe() for p in self.parameters)})"


_GLOBAL_MARK = "__gpuconv_emu_global__"
_KERNEL = re.compile(_GLOBAL_MARK + r"\s+void\s+([A-Za-z_]\w*)\s*\(([^()]*)\)\s*\{")
_EXTERN_C_BLOCK = re.compile(r'extern\s*"C"\s*\{')


def _extern_c_block_spans(text: str) -> list[tuple[int, int]]:
    spans = []
    for match in _EXTERN_C_BLOCK.finditer(text):
        depth, i = 1, match.end()
        while depth and i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        spans.append((match.end(), i))
    return spans


def find_kernel_declarations(preprocessed: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(name, parameter list text) of each extern "C" kernel of a preprocessed file, and the names of
    __global__ functions with C++ linkage (which the loader cannot look up by name)."""
    spans = _extern_c_block_spans(preprocessed)
    declarations, cxx_linkage = [], []
    for match in _KERNEL.finditer(preprocessed):
        before = preprocessed[max(0, match.start() - 200):match.start()]
        name = match.group(1)
        if re.search(r">\s*$", before):  # template <...> __global__: not launchable by name
            continue
        if re.search(r'extern\s*"C"\s*$', before) or any(a <= match.start() < b for a, b in spans):
            declarations.append((name, " ".join(match.group(2).split())))
        else:
            cxx_linkage.append(name)
    return declarations, cxx_linkage


def parse_signature(name: str, parameters: str, type_map: dict | None = None) -> KernelSignature:
    texts = [p for p in _split_top_level(parameters) if p != "void"]
    return KernelSignature(name, tuple(parse_parameter(p, i, type_map) for i, p in enumerate(texts)))


# -------------------------------------------------------------------------------------- compilation ---

def cache_dir() -> Path:
    root = os.environ.get("GPUCONV_EMU_CACHE") or os.path.join(tempfile.gettempdir(),
                                                               f"gpuconv-cuda-emulation-{os.getuid()}")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run_compiler(args: list[str], what: str) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise CompileError(f"{what} failed ({' '.join(args)}):\n{result.stderr[-6000:]}")
    return result


def _launcher_source(name: str, parameters: str) -> str:
    """``NAME__launch(grid, block, PARAMS)``: runs kernel NAME over the grid with the fiber scheduler."""
    texts = [p for p in _split_top_level(parameters) if p != "void"]
    # Parameters renamed a0, a1, ...: the kernel's own may be unnamed.
    params = "".join(f", {split_parameter(p)[0]} a{i}" for i, p in enumerate(texts))
    call_args = ", ".join(f"a{i}" for i in range(len(texts)))
    return (f'extern "C" __attribute__((visibility("default"))) int {name}__launch('
            f"unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz{params}) {{\n"
            f"    auto body = [&]() {{ {name}({call_args}); }};\n"
            f"    return ::gpuconv_emu::launch(dim3(gx, gy, gz), dim3(bx, by, bz), body);\n}}\n")


@functools.lru_cache(maxsize=None)
def _compiler_version() -> str:
    return subprocess.run([CXX, "--version"], capture_output=True, text=True).stdout.splitlines()[0]


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def compile_source(source: str, name: str = "kernel") -> tuple[Path, list[tuple[str, str]], list[str], str]:
    """Compile CUDA source text (includes already inlined) into a shared library, cached by content.

    Returns (library path, (name, parameter text) of each extern "C" kernel, names of C++-linkage
    kernels, compiler warnings).
    """
    header = HEADER.read_text()
    # This file is part of the key too: it generates the launchers.
    key = hashlib.sha256("\0".join([header, Path(__file__).read_text(), source, " ".join(CXXFLAGS),
                                    _compiler_version()]).encode()).hexdigest()
    directory = cache_dir()
    stem = f"{Path(name).stem}-{key[:24]}"
    so_path, info_path = directory / f"{stem}.so", directory / f"{stem}.json"
    if so_path.exists() and info_path.exists():
        info = json.loads(info_path.read_text())
        return so_path, [tuple(k) for k in info["kernels"]], info["cxx_linkage"], info["warnings"]
    cu_path = directory / f"{stem}.cu"
    _write_atomically(cu_path, source)
    preprocessed = _run_compiler(
        [CXX, "-E", "-P", "-std=c++17", "-x", "c++", "-DGPUCONV_EMU_PARSE_ONLY", "-include", str(HEADER),
         str(cu_path)], f"preprocessing {name}").stdout
    declarations, cxx_linkage = find_kernel_declarations(preprocessed)
    cpp_path = directory / f"{stem}.{os.getpid()}.cpp"
    tmp_so = directory / f"{stem}.{os.getpid()}.so.tmp"
    cpp_path.write_text(f'#include "{cu_path}"\n\n// ---- launchers generated by emulator.py ----\n'
                        + "\n".join(_launcher_source(*d) for d in declarations))
    try:
        warnings = _run_compiler([CXX, *CXXFLAGS, "-x", "c++", "-include", str(HEADER), str(cpp_path),
                                  "-o", str(tmp_so)], f"compiling {name}").stderr
        _write_atomically(info_path, json.dumps({"kernels": declarations, "cxx_linkage": cxx_linkage,
                                                 "warnings": warnings}))
        os.replace(tmp_so, so_path)
    finally:
        cpp_path.unlink(missing_ok=True)
        tmp_so.unlink(missing_ok=True)
    return so_path, declarations, cxx_linkage, warnings


# ----------------------------------------------------------------------------------- guarded buffers ---

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.mmap.restype = ctypes.c_void_p
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mprotect.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.munmap.restype = ctypes.c_int
_MAP_NORESERVE = 0x4000 if os.uname().sysname == "Linux" else 0  # no swap reserved for the guards
_MAP_FAILED = ctypes.c_void_p(-1).value


@dataclass(frozen=True)
class _Buffer:
    ref: weakref.ref       # the uint8 array over the data pages: the base of every view of the buffer
    map_start: int         # address range of the mapping (guards included); disjoint between buffers
    map_end: int
    data: int              # address of the first byte of the data
    offset: int            # of the data in the raw array
    nbytes: int
    slack: tuple           # (start, stop) in the raw array of the NaN slack beside the data (maybe empty)
    label: str | None
    dtype: np.dtype
    shape: tuple

    def describe(self) -> str:
        return f"{self.label + ' ' if self.label else ''}{self.dtype}{list(self.shape)}"


_guarded: list[_Buffer] = []
_guarded_lock = threading.Lock()
_placement = os.environ.get("GPUCONV_EMU_BUFFER_PLACEMENT", "end")
if _placement not in PLACEMENTS:
    raise ValueError(f"GPUCONV_EMU_BUFFER_PLACEMENT must be 'end' or 'start', got {_placement!r}")


def set_buffer_placement(placement: str) -> str:
    """Where new buffers sit in their pages: "end" (overruns fault) or "start" (underruns fault).

    Applies to every later :func:`empty` / :func:`to_guarded` without ``placement=``. Returns the previous
    placement.
    """
    global _placement
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be 'end' or 'start', got {placement!r}")
    previous, _placement = _placement, placement
    return previous


def get_buffer_placement() -> str:
    return _placement


@contextlib.contextmanager
def buffer_placement(placement: str):
    """``with buffer_placement("start"): ...``: :func:`set_buffer_placement` for a block of code."""
    previous = set_buffer_placement(placement)
    try:
        yield
    finally:
        set_buffer_placement(previous)


def _map_guarded(data_bytes: int) -> tuple[int, int, ctypes.Array]:
    """mmap ``data_bytes`` (whole pages) of read-write memory between two GUARD_BYTES of PROT_NONE.

    Returns (mapping address, mapping size, a ctypes array over the data pages only, which unmaps the
    whole mapping when it is garbage-collected).
    """
    size = GUARD_BYTES + data_bytes + GUARD_BYTES
    address = _libc.mmap(None, size, 0,  # PROT_NONE
                         mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE, -1, 0)
    if address in (None, _MAP_FAILED):
        error = ctypes.get_errno()
        raise MemoryError(f"mmap of {size} bytes for a guarded buffer failed: {os.strerror(error)}")
    if data_bytes and _libc.mprotect(address + GUARD_BYTES, data_bytes, mmap.PROT_READ | mmap.PROT_WRITE) != 0:
        error = ctypes.get_errno()
        _libc.munmap(address, size)
        raise MemoryError(f"mprotect of a guarded buffer failed: {os.strerror(error)}")
    pages = (ctypes.c_ubyte * data_bytes).from_address(address + GUARD_BYTES)
    weakref.finalize(pages, _libc.munmap, address, size).atexit = False
    return address, size, pages


def empty(shape, dtype, label: str | None = None, placement: str | None = None) -> np.ndarray:
    """A C-contiguous array filled with NaN bytes, flush against an inaccessible guard region.

    Use it for every buffer a kernel reads or writes: an output element the kernel forgets stays NaN, and
    an access past the end ("end" placement, the default) or before the start ("start") faults and
    raises :class:`OutOfBoundsAccess`; a write into the slack on the other side raises
    :class:`OutOfBoundsWrite` at the end of the launch. The memory is unmapped when the array (and every
    view of it) is garbage-collected.
    """
    placement = _placement if placement is None else placement
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be 'end' or 'start', got {placement!r}")
    dtype = np.dtype(dtype)
    shape = (shape,) if np.isscalar(shape) else tuple(int(s) for s in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    data_bytes = -(-nbytes // PAGE_BYTES) * PAGE_BYTES
    address, size, pages = _map_guarded(data_bytes)
    raw = np.frombuffer(pages, dtype=np.uint8)  # the data pages: the guards stay out of NumPy's reach
    raw[...] = POISON_BYTE
    offset = data_bytes - nbytes if placement == "end" else 0
    slack = (0, offset) if placement == "end" else (nbytes, data_bytes)
    # (Not a slice of raw: numpy puts an empty slice at the start of its base, not at `offset`.)
    data = np.ndarray(shape, dtype, buffer=raw, offset=offset)
    data_address = address + GUARD_BYTES + offset
    record = _Buffer(weakref.ref(raw), address, address + size, data_address, offset, nbytes, slack, label,
                     dtype, shape)
    with _guarded_lock:
        _guarded.append(record)
    return data


def to_guarded(array, dtype=None, label: str | None = None, placement: str | None = None) -> np.ndarray:
    """A guarded copy of ``array`` (see :func:`empty`): a kernel's read past its end faults."""
    array = np.asarray(array, dtype=dtype)
    out = empty(array.shape, array.dtype, label, placement)
    out[...] = array
    return out


def _live_buffers() -> list[tuple[_Buffer, np.ndarray]]:
    """The buffers still alive (the list is pruned of the others), each with its raw array."""
    with _guarded_lock:
        alive = [(record, raw) for record in _guarded if (raw := record.ref()) is not None]
        _guarded[:] = [record for record, _ in alive]
    return alive


def check_guards() -> None:
    """Raise OutOfBoundsWrite if the NaN slack beside any live buffer changed (then repair it)."""
    problems = []
    for record, raw in _live_buffers():
        start, stop = record.slack
        if start == stop:
            continue
        changed = np.flatnonzero(raw[start:stop] != POISON_BYTE)
        if changed.size:
            if stop <= record.offset:
                where = f"{record.offset - (start + changed.min())} bytes before its start"
            else:
                where = f"{start + changed.max() + 1 - (record.offset + record.nbytes)} bytes after its end"
            raw[start:stop] = POISON_BYTE
            problems.append(f"buffer {record.label or f'{record.dtype}{list(record.shape)}'} "
                            f"({record.nbytes} bytes): written up to {where}")
    if problems:
        raise OutOfBoundsWrite("out-of-bounds write: " + "; ".join(problems))


def find_buffer(address: int):
    """The live guarded buffer whose mapping (data and guards) holds ``address``, or None."""
    for record, _ in _live_buffers():
        if record.map_start <= address < record.map_end:
            return record
    return None


# ------------------------------------------------------------------------------------------- module ---

# The fault handlers of a launch are process-wide (signals): one launch at a time, whatever the module.
_launch_lock = threading.Lock()


def source_location(so_path: Path, offset: int) -> str | None:
    """``file:line (in function)`` of an instruction of a shared library (addr2line; inlined calls too)."""
    if shutil.which("addr2line") is None:
        return None
    result = subprocess.run(["addr2line", "-C", "-f", "-i", "-s", "-e", str(so_path), hex(offset)],
                            capture_output=True, text=True)
    lines = result.stdout.splitlines()
    if result.returncode != 0 or len(lines) < 2:
        return None
    frames = [(lines[i].strip(), lines[i + 1].strip().split(" (discriminator")[0])
              for i in range(0, len(lines) - 1, 2)]
    located = [(function, where) for function, where in frames if not where.startswith("??")]
    if not located:
        return f"in {frames[0][0]}" if frames[0][0] != "??" else None
    function, where = located[0]
    text = f"at {where} (in {function.split('(')[0]})"
    if len(located) > 1:
        text += ", inlined into " + ", ".join(f"{w} ({f.split('(')[0]})" for f, w in located[1:])
    return text


def _dims(value, what: str) -> tuple[int, int, int]:
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, (int, np.integer)) for d in dims):
        raise KernelLaunchError(f"{what} must be an int or a tuple of 1 to 3 ints, got {value!r}")
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    if min(dims) < 1 or max(dims) >= 2 ** 32:
        raise KernelLaunchError(f"invalid {what} {value!r}: every dimension must be >= 1")
    return dims


class KernelModule:
    """The kernels of one .cu file, compiled for the CPU. Launch with :meth:`launch` or ``module[name]``."""

    def __init__(self, source: str, name: str = "kernel", *, poison_shared: bool = True,
                 schedule: str = "forward", stack_kib: int = 64, max_threads_per_block: int = 1024,
                 type_map: dict | None = None):
        if schedule not in ("forward", "reverse"):
            raise ValueError(f"schedule must be 'forward' or 'reverse', got {schedule!r}")
        self.name = name
        so_path, declarations, self.cxx_linkage_kernels, self.compiler_warnings = compile_source(source, name)
        kernels = [parse_signature(kernel, params, type_map) for kernel, params in declarations]
        self.so_path = so_path
        self.library = ctypes.CDLL(str(so_path), mode=os.RTLD_LOCAL)
        self.kernels = {k.name: k for k in kernels}
        self.max_threads_per_block = max_threads_per_block
        self._functions = {}
        for k in kernels:
            fn = getattr(self.library, f"{k.name}__launch")
            fn.argtypes = [ctypes.c_uint] * 6 + [p.ctype for p in k.parameters]
            fn.restype = ctypes.c_int
            self._functions[k.name] = fn
        self.library.gpuconv_emu_last_error.restype = ctypes.c_char_p
        self.library.gpuconv_emu_barriers_passed.restype = ctypes.c_longlong
        self.library.gpuconv_emu_warp_collectives.restype = ctypes.c_longlong
        self.library.gpuconv_emu_last_fault.argtypes = [ctypes.POINTER(ctypes.c_longlong)]
        self.library.gpuconv_emu_last_fault.restype = ctypes.c_int
        # __shared__ variables of function templates are not in the shared section (see the header): pass
        # the addresses of all function-local statics, found in the symbol table, to be poisoned too.
        self.shared_variables = function_local_statics(so_path)
        self.load_base = load_base = (ctypes.cast(self.library.gpuconv_emu_configure, ctypes.c_void_p).value
                                      - _symbol_offset(so_path, "gpuconv_emu_configure"))
        count = len(self.shared_variables)
        self.library.gpuconv_emu_set_shared_ranges(
            (ctypes.c_void_p * max(count, 1))(*[load_base + v.offset for v in self.shared_variables]),
            (ctypes.c_size_t * max(count, 1))(*[v.size for v in self.shared_variables]), ctypes.c_int(count))
        self.library.gpuconv_emu_configure.argtypes = [ctypes.c_int] * 3
        self.configure(poison_shared=poison_shared, schedule=schedule, stack_kib=stack_kib)

    def configure(self, *, poison_shared: bool | None = None, schedule: str | None = None,
                  stack_kib: int | None = None) -> None:
        if poison_shared is not None:
            self.poison_shared = bool(poison_shared)
        if schedule is not None:
            if schedule not in ("forward", "reverse"):
                raise ValueError(f"schedule must be 'forward' or 'reverse', got {schedule!r}")
            self.schedule = schedule
        if stack_kib is not None:
            self.stack_kib = int(stack_kib)
        self.library.gpuconv_emu_configure(int(self.poison_shared), int(self.schedule == "reverse"),
                                           self.stack_kib)

    def static_shared_bytes(self) -> dict[str, int]:
        """Static shared memory per declaring function (CUDA allows at most 48 KiB per block)."""
        usage: dict[str, int] = {}
        for v in self.shared_variables:
            usage[v.owner] = usage.get(v.owner, 0) + v.size
        return usage

    @property
    def barriers_passed(self) -> int:
        """How many __syncthreads() barriers the last launch passed (summed over blocks)."""
        return int(self.library.gpuconv_emu_barriers_passed())

    @property
    def warp_collectives(self) -> int:
        """How many warp collectives (__syncwarp, shuffles, votes, ldmatrix, mma) the last launch completed."""
        return int(self.library.gpuconv_emu_warp_collectives())

    def __getitem__(self, name: str) -> "EmulatedKernel":
        self._signature(name)
        return EmulatedKernel(self, name)

    def _signature(self, name: str) -> KernelSignature:
        if name not in self.kernels:
            hint = " (it is a __global__ function without extern \"C\")" if name in self.cxx_linkage_kernels else ""
            raise KeyError(f"no kernel {name!r} in {self.name}{hint}; it has: {sorted(self.kernels)}")
        return self.kernels[name]

    def convert_arguments(self, name: str, args) -> list:
        """Check ``args`` against the kernel's parameters; return the values ctypes receives."""
        sig = self._signature(name)
        if len(args) != len(sig.parameters):
            raise KernelLaunchError(f"{name} takes {len(sig.parameters)} arguments, got {len(args)}: "
                                    f"{sig.describe()}")
        values = []
        for i, (param, arg) in enumerate(zip(sig.parameters, args)):
            where = f"{name} argument {i} ({param.describe()})"
            if param.is_pointer:
                if arg is None:
                    values.append(None)
                    continue
                if not isinstance(arg, np.ndarray):
                    raise KernelLaunchError(f"{where}: expected a numpy array of {param.dtype}, "
                                            f"got {type(arg).__name__}")
                if arg.dtype != param.dtype:
                    raise KernelLaunchError(f"{where}: expected dtype {param.dtype}, got {arg.dtype}")
                if not arg.flags.c_contiguous:
                    raise KernelLaunchError(f"{where}: the array is not C-contiguous")
                if param.writable and not arg.flags.writeable:
                    raise KernelLaunchError(f"{where}: the kernel may write it but the array is read-only")
                values.append(arg.ctypes.data)
            else:
                # A careful RawKernel call passes numpy scalars of the exact C type: a Python int goes
                # to CuPy as a 64-bit integer, right only for a `long long` parameter.
                if isinstance(arg, np.generic):
                    if arg.dtype != param.dtype:
                        raise KernelLaunchError(f"{where}: expected a numpy {param.dtype} scalar, "
                                                f"got {arg.dtype}")
                elif isinstance(arg, bool) and param.dtype == np.bool_:
                    pass
                elif isinstance(arg, int) and not isinstance(arg, bool) and param.dtype == np.int64:
                    pass
                elif isinstance(arg, float) and param.dtype == np.float64:
                    pass
                else:
                    raise KernelLaunchError(f"{where}: expected a numpy {param.dtype} scalar, "
                                            f"got {type(arg).__name__} {arg!r}")
                values.append(arg.item() if isinstance(arg, np.generic) else arg)
        return values

    def launch(self, name: str, grid, block, *args, shared_mem: int = 0) -> None:
        """Run kernel ``name`` over ``grid`` x ``block`` with numpy arrays as device memory."""
        grid3, block3 = _dims(grid, "grid"), _dims(block, "block")
        threads = block3[0] * block3[1] * block3[2]
        if threads > self.max_threads_per_block:
            raise KernelLaunchError(f"{name}: block {block3} has {threads} threads, more than the "
                                    f"{self.max_threads_per_block} allowed")
        if shared_mem:
            raise KernelLaunchError(f"{name}: dynamic shared memory ({shared_mem} bytes) is not emulated")
        values = self.convert_arguments(name, args)
        with _launch_lock:
            status = self._functions[name](*grid3, *block3, *values)
            message = self.library.gpuconv_emu_last_error().decode(errors="replace")
            info = (ctypes.c_longlong * 12)()
            signal_number = self.library.gpuconv_emu_last_fault(info)
        access = None
        if signal_number in (signal.SIGSEGV, signal.SIGBUS) and info[11] < 0:
            access = self._describe_access(name, args, values, signal_number, list(info))
        elif signal_number:
            located = self._locate(info[1])
            message += f" in kernel {name}" + (f", {located}" if located else "")
        try:
            check_guards()
        except OutOfBoundsWrite as error:
            if status == 0:
                raise
            if access is not None:
                access.args = (f"{access.args[0]}; and {error}",)
            else:
                message += f"; and {error}"
        if access is not None:
            raise access
        if status != 0:
            raise KernelLaunchError(f"{name} grid {grid3} block {block3}: {message}")

    def _locate(self, pc: int) -> str | None:
        return source_location(self.so_path, pc - self.load_base) if pc else None

    def _describe_access(self, name, args, values, signal_number, info) -> OutOfBoundsAccess:
        """The OutOfBoundsAccess for a fault the handler recorded (``info``: see gpuconv_emu_last_fault)."""
        address, pc, is_write, in_thread = info[0] & (2 ** 64 - 1), info[1] & (2 ** 64 - 1), info[2], info[3]
        thread, block = tuple(info[4:7]), tuple(info[7:10])
        si_code = info[10]
        # A non-canonical address is a general protection fault: no address and no read/write bit.
        is_write = None if is_write < 0 or si_code == _SI_KERNEL else bool(is_write)
        kind = {None: "read or write", True: "write", False: "read"}[is_write]
        sig = self.kernels[name]
        record = find_buffer(address) if si_code != _SI_KERNEL else None
        offset = None
        if record is not None:
            offset = address - record.data
            if offset < 0:
                where = f"{-offset} bytes before its start"
            elif offset >= record.nbytes:
                where = f"{offset - record.nbytes} bytes past its end"
            else:
                where = "inside it, yet inaccessible"  # only if something else mprotect'ed it
            what = (f"buffer {record.describe()} at byte offset {offset} "
                    f"(element {offset // max(record.dtype.itemsize, 1)}, {where})")
            passed = [f"argument {i} `{p.describe()}`" for i, (p, v) in enumerate(zip(sig.parameters, values))
                      if p.is_pointer and v is not None and record.data <= v <= record.data + record.nbytes]
            # A plain (unguarded) array argument may lie just below or above this buffer's guard region.
            distance = -offset if offset < 0 else offset - record.nbytes + 1
            nearest = self._nearest_argument(sig, args, values, address, closer_than=distance)
            if nearest:
                what += f" (but that is also {nearest}: the likelier culprit)"
        elif si_code == _SI_KERNEL:
            passed = []
            what = ("a non-canonical address (a wild pointer; the CPU does not say which address: "
                    "general protection fault)")
        else:
            passed = []
            what = f"address {address:#x}, in no buffer from emu.empty/to_guarded: a wild pointer"
            if address < PAGE_BYTES:
                what += " (a null pointer plus an offset)" if address else " (a null pointer)"
            nearest = self._nearest_argument(sig, args, values, address)
            if nearest:
                what += f" (it is {nearest})"
        who = f"thread ({thread[0]},{thread[1]},{thread[2]}) of block ({block[0]},{block[1]},{block[2]})" \
            if in_thread else f"the emulator's scheduler, during block ({block[0]},{block[1]},{block[2]})"
        message = f"out-of-bounds {kind} of {what} by {who} in kernel {name}"
        located = self._locate(pc)
        if located:
            message += f", {located}"
        if passed:
            message += f"; the buffer is {' and '.join(passed)}"
        if signal_number == signal.SIGBUS:
            message += " (SIGBUS)"
        return OutOfBoundsAccess(message, address=address, buffer=None if record is None else record.describe(),
                                 offset=offset, is_write=is_write, thread=thread if in_thread else None,
                                 block=block)

    @staticmethod
    def _nearest_argument(sig, args, values, address, closer_than: int = GUARD_BYTES + 1) -> str | None:
        """The pointer argument not from :func:`empty` (a plain NumPy array, unguarded) nearest outside
        ``address``, if nearer than ``closer_than`` bytes and than GUARD_BYTES."""
        best = None
        for i, (param, arg, value) in enumerate(zip(sig.parameters, args, values)):
            if not param.is_pointer or value is None or find_buffer(value) is not None:
                continue
            start, stop = value, value + arg.nbytes
            distance = start - address if address < start else address - stop + 1 if address >= stop else 0
            if 0 < distance <= min(GUARD_BYTES, closer_than - 1) and (best is None or distance < best[0]):
                where = (f"{start - address} bytes before the start" if address < start
                         else f"{address - stop} bytes past the end")
                best = (distance, f"{where} of argument {i} `{param.describe()}`, an unguarded array not from "
                                  f"emu.empty")
        return best[1] if best else None


class EmulatedKernel:
    """``module[name]``: callable like a cupy.RawKernel, ``kernel(grid, block, args)``."""

    def __init__(self, module: KernelModule, name: str):
        self.module, self.name = module, name

    def __call__(self, grid, block, args, *, shared_mem: int = 0):
        self.module.launch(self.name, grid, block, *args, shared_mem=shared_mem)


def load_source(source: str, name: str = "kernel", **options) -> KernelModule:
    return KernelModule(source, name, **options)


def load_module(path, **options) -> KernelModule:
    """Compile a kernel file (its ``#include "x.cuh"`` lines inlined) for the CPU."""
    path = Path(path)
    return KernelModule(read_kernel_source(path), path.name, **options)


def load_gpuconv_kernels(file: str, **options) -> KernelModule:
    """One of gpuconv's kernel files (e.g. "conv2d_fprop.cu"), assembled by gpuconv's own loader.

    ``gpuconv.cuda.loader.kernel_source`` inlines the headers exactly as for NVRTC, so the emulator
    compiles the very text the GPU would.
    """
    from gpuconv.cuda import loader

    return KernelModule(f'#line 1 "{file}"\n' + loader.kernel_source(file), file, **options)


def read_kernel_source(path: Path) -> str:
    """A kernel file with its local ``#include "x"`` lines inlined (see :func:`inline_local_includes`)."""
    return inline_local_includes(Path(path))


__all__ = ["KernelModule", "EmulatedKernel", "KernelSignature", "Parameter", "SharedVariable", "load_module",
           "load_gpuconv_kernels", "load_source", "empty", "to_guarded", "check_guards", "compiler_available",
           "set_buffer_placement", "get_buffer_placement", "buffer_placement", "find_buffer",
           "CompileError", "KernelLaunchError", "OutOfBoundsWrite", "OutOfBoundsAccess", "inline_local_includes",
           "find_kernel_declarations", "parse_signature", "parse_parameter", "function_local_statics"]
