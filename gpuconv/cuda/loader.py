"""Find, assemble and compile gpuconv's CUDA kernels.

Each kernel family lives in one ``kernels/<family>.cu`` file (shipped as the
package ``gpuconv.kernels``). Before compiling, a file's ``#include "x.cuh"``
lines are replaced by the headers' text: CuPy caches compiled modules on disk
keyed on the source text alone, so a header edit must change that text.

Two ways to compile:

* ``get_kernel(file, name)`` -- on the GPU, through ``cupy.RawModule`` (NVRTC for
  the current device, cached on disk by CuPy and per device in this process).
* ``compile_for_arch(file, arch)`` / ``compile_all_for_arch(arch)`` -- without a
  GPU, through NVRTC from ``cuda-bindings``, for any architecture; returns each
  kernel's register, spill and shared-memory use as reported by ptxas.

``KERNELS`` lists every ``extern "C"`` kernel the package launches; the compile
test checks it against what each file actually exports.
"""
from __future__ import annotations

import functools
import importlib.resources
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: NVRTC options for every kernel file (CuPy adds the architecture itself).
COMPILE_OPTIONS = ("-std=c++17",)
#: Options CuPy adds on its own; compile_for_arch adds them too, so that its
#: resource report describes the code CuPy runs.
CUPY_IMPLIED_OPTIONS = ("-ftz=true",)

#: Suffix of each kernel instantiation per storage dtype.
DTYPE_SUFFIXES = {np.dtype(np.float16): "f16", np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}

#: Kernel file -> the kernel names it exports, without the dtype suffix.
KERNEL_BASE_NAMES = {
    "im2col.cu": ("gpuconv_im2col_nchw", "gpuconv_col2im_nchw"),
    "conv2d_fprop.cu": ("gpuconv_conv2d_fprop_tile64x64", "gpuconv_conv2d_fprop_tile256x4"),
    "conv2d_dgrad.cu": ("gpuconv_conv2d_dgrad_tile64x64", "gpuconv_conv2d_dgrad_tile256x4"),
    "conv2d_wgrad.cu": ("gpuconv_conv2d_wgrad_tile64x64", "gpuconv_conv2d_wgrad_tile16x16",
                        "gpuconv_conv2d_wgrad_reduce"),
    "pooling.cu": ("gpuconv_maxpool2d_forward", "gpuconv_maxpool2d_backward",
                   "gpuconv_avgpool2d_forward", "gpuconv_avgpool2d_backward"),
}

#: Kernel file -> every kernel name it exports (one per base name and dtype).
KERNELS = {file: tuple(f"{base}_{suffix}" for base in bases for suffix in DTYPE_SUFFIXES.values())
           for file, bases in KERNEL_BASE_NAMES.items()}

_INCLUDE_LINE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.MULTILINE)


class KernelCompileError(RuntimeError):
    """A kernel file failed to compile; the message names it and holds the compiler log."""


def kernel_name(base: str, dtype) -> str:
    """``kernel_name("gpuconv_im2col_nchw", float32)`` -> ``"gpuconv_im2col_nchw_f32"``."""
    try:
        return f"{base}_{DTYPE_SUFFIXES[np.dtype(dtype)]}"
    except KeyError:
        raise TypeError(f"no CUDA kernels for dtype {np.dtype(dtype)}; use float16, float32 or float64") from None


def kernel_files() -> tuple[str, ...]:
    return tuple(KERNELS)


def exported_kernels() -> dict[str, tuple[str, ...]]:
    """Kernel file -> the ``extern "C"`` kernel names the package expects it to export."""
    return dict(KERNELS)


@functools.lru_cache(maxsize=None)
def _kernel_directory():
    """The directory holding the .cu files: the installed package data, or the source tree's kernels/."""
    try:
        directory = importlib.resources.files("gpuconv.kernels")
        if directory.joinpath("common.cuh").is_file():
            return directory
    except (ModuleNotFoundError, TypeError):
        pass
    source_tree = Path(__file__).resolve().parents[2] / "kernels"
    if (source_tree / "common.cuh").is_file():
        return source_tree
    raise FileNotFoundError("gpuconv's CUDA kernel sources were not found: neither the package "
                            f"gpuconv.kernels nor {source_tree} holds common.cuh")


def _read_text(name: str) -> str:
    path = _kernel_directory().joinpath(name)
    if not path.is_file():
        raise FileNotFoundError(f"kernel source {name!r} not found in {_kernel_directory()}")
    return path.read_text(encoding="utf-8")


def kernel_source(file: str) -> str:
    """The text of one kernel file with every ``#include "x.cuh"`` replaced by that header.

    Headers are inlined once each (later includes of the same header become
    comments), and ``#line`` markers keep compiler messages pointing at the
    original file and line.
    """
    included: set[str] = set()

    def expand(name: str) -> str:
        text = _read_text(name)
        pieces, position = [], 0
        for match in _INCLUDE_LINE.finditer(text):
            header = match.group(1)
            pieces.append(text[position:match.start()])
            if header in included:
                pieces.append(f"// {header} already inlined above")
            else:
                included.add(header)
                resume_line = text.count("\n", 0, match.end()) + 2
                pieces.append(f'#line 1 "{header}"\n{expand(header)}\n#line {resume_line} "{name}"')
            position = match.end()
        pieces.append(text[position:])
        return "".join(pieces)

    return expand(file)


def kernel_sources() -> dict[str, str]:
    """Kernel file -> its compilable source (headers inlined)."""
    return {file: kernel_source(file) for file in KERNELS}


# ------------------------------------------------------------- CuPy (on a GPU) ---

_modules: dict[tuple[int, str], object] = {}
_modules_lock = threading.Lock()


def get_module(file: str):
    """The ``cupy.RawModule`` of one kernel file, compiled for the current device."""
    from .._backend import require_cuda

    cupy = require_cuda()
    key = (cupy.cuda.Device().id, file)
    with _modules_lock:
        module = _modules.get(key)
        if module is None:
            if file not in KERNELS:
                raise ValueError(f"unknown kernel file {file!r}; expected one of {tuple(KERNELS)}")
            module = cupy.RawModule(code=kernel_source(file), options=COMPILE_OPTIONS)
            try:
                module.compile()
            except cupy.cuda.compiler.CompileException as exc:
                raise KernelCompileError(f"kernels/{file} failed to compile with NVRTC:\n{exc}") from exc
            _modules[key] = module
        return module


def get_kernel(file: str, name: str):
    """The kernel ``name`` (a ``cupy.RawKernel``) from kernels/``file``, compiled for the current device.

    CuPy's ``RawKernel`` does not check argument types: pass ``numpy.int32`` for
    ``int`` and ``numpy.int64`` for ``long long`` parameters.
    """
    if name not in KERNELS.get(file, ()):
        raise ValueError(f"kernels/{file} exports no kernel named {name!r}")
    return get_module(file).get_function(name)


# ------------------------------------------------- NVRTC (no GPU needed) ---

@dataclass(frozen=True)
class KernelResources:
    """What ptxas reports for one kernel; None where it could not be read."""
    registers: int | None
    spill_stores: int | None  # bytes
    spill_loads: int | None   # bytes
    stack_bytes: int | None
    shared_bytes: int | None


@dataclass(frozen=True)
class CompiledFile:
    file: str
    arch: str
    cubin: bytes
    log: str
    kernels: dict  # name -> KernelResources, for every entry point found

    def exports(self, name: str) -> bool:
        """Whether the cubin defines the symbol ``name``."""
        return b"\0" + name.encode() + b"\0" in self.cubin


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        try:
            from cuda import nvrtc  # cuda-python < 12.6 layout
        except ImportError as exc:
            raise ImportError("cuda-bindings is not installed (pip install cuda-bindings "
                              "nvidia-cuda-nvrtc); it is needed to compile kernels without a GPU") from exc
    return nvrtc


def nvrtc_version() -> tuple[int, int]:
    nvrtc = _nvrtc()
    err, major, minor = nvrtc.nvrtcVersion()
    return int(major), int(minor)


def _nvrtc_compile(nvrtc, source: str, file: str, options: list[str]):
    """(result code, log, cubin or None) of one NVRTC compilation."""
    err, program = nvrtc.nvrtcCreateProgram(source.encode(), file.encode(), 0, [], [])
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise KernelCompileError(f"kernels/{file}: nvrtcCreateProgram failed: {err}")
    try:
        encoded = [o.encode() for o in options]
        (result,) = nvrtc.nvrtcCompileProgram(program, len(encoded), encoded)
        _, log_size = nvrtc.nvrtcGetProgramLogSize(program)
        log = b" " * log_size
        nvrtc.nvrtcGetProgramLog(program, log)
        log = log.rstrip(b"\0 ").decode(errors="replace")
        cubin = None
        if result == nvrtc.nvrtcResult.NVRTC_SUCCESS:
            _, size = nvrtc.nvrtcGetCUBINSize(program)
            cubin = b" " * size
            nvrtc.nvrtcGetCUBIN(program, cubin)
        return result, log, cubin
    finally:
        nvrtc.nvrtcDestroyProgram(program)


_ENTRY = re.compile(r"Compiling entry function '([^']+)'")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")
_SHARED = re.compile(r"(\d+) bytes smem")


def parse_ptxas_log(log: str) -> dict:
    """Kernel name -> KernelResources from ptxas' verbose (-v) report."""
    kernels, name, fields = {}, None, {}

    def flush():
        if name is not None:
            kernels[name] = KernelResources(fields.get("registers"), fields.get("spill_stores"),
                                            fields.get("spill_loads"), fields.get("stack"),
                                            fields.get("shared", 0 if "registers" in fields else None))

    for line in log.splitlines():
        entry = _ENTRY.search(line)
        if entry:
            flush()
            name, fields = entry.group(1), {}
            continue
        if name is None:
            continue
        if (m := _SPILLS.search(line)) and "stack" not in fields:
            fields.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        if (m := _REGISTERS.search(line)) and "registers" not in fields:
            fields["registers"] = int(m.group(1))
        if m := _SHARED.search(line):
            fields["shared"] = int(m.group(1))
    flush()
    return kernels


def find_cuda_tool(name: str) -> str | None:
    """Path of a CUDA binary (cuobjdump, nvdisasm): on PATH or in /usr/local/cuda*/bin."""
    found = shutil.which(name)
    if found:
        return found
    for directory in sorted(Path("/usr/local").glob("cuda*/bin"), reverse=True):
        if (directory / name).is_file():
            return str(directory / name)
    return None


_CUOBJDUMP_FUNCTION = re.compile(r"Function ([^:\s]+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def parse_cuobjdump_resource_usage(text: str) -> dict:
    """Kernel name -> KernelResources from ``cuobjdump --dump-resource-usage`` (it reports no spill counts)."""
    return {m.group(1): KernelResources(int(m.group(2)), None, None, int(m.group(3)), int(m.group(4)))
            for m in _CUOBJDUMP_FUNCTION.finditer(text)}


def _resources_from_cuobjdump(cubin: bytes) -> dict:
    """Resource use read from the cubin by cuobjdump; {} when cuobjdump is not installed."""
    tool = find_cuda_tool("cuobjdump")
    if tool is None:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        run = subprocess.run([tool, "--dump-resource-usage", handle.name], capture_output=True, text=True)
    return parse_cuobjdump_resource_usage(run.stdout)


def compile_for_arch(file: str, arch: str = "sm_90") -> CompiledFile:
    """Compile one kernel file with NVRTC for ``arch`` (e.g. "sm_90"); no GPU needed.

    Resource use comes from ptxas' verbose report (``-Xptxas=-v``, which NVRTC
    passes on); an NVRTC that refuses the option is asked again without it, and
    ``cuobjdump`` then reads the registers when it is installed.
    """
    nvrtc = _nvrtc()
    source = kernel_source(file)
    options = [*COMPILE_OPTIONS, *CUPY_IMPLIED_OPTIONS, f"-arch={arch}"]
    result, log, cubin = _nvrtc_compile(nvrtc, source, file, [*options, "-Xptxas=-v"])
    if result == nvrtc.nvrtcResult.NVRTC_ERROR_INVALID_OPTION:
        result, log, cubin = _nvrtc_compile(nvrtc, source, file, options)
    if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise KernelCompileError(f"kernels/{file} failed to compile for {arch} ({result.name}):\n{log}")
    kernels = parse_ptxas_log(log) or _resources_from_cuobjdump(cubin)
    return CompiledFile(file, arch, cubin, log, kernels)


def compile_all_for_arch(arch: str = "sm_90") -> dict:
    """Kernel file -> {kernel name: KernelResources} for every kernel file, compiled for ``arch``.

    A kernel whose resources could not be read maps to a KernelResources of Nones.
    Raises KernelCompileError, naming the file, when one fails to compile.
    """
    report = {}
    for file in KERNELS:
        compiled = compile_for_arch(file, arch)
        empty = KernelResources(None, None, None, None, None)
        report[file] = {name: compiled.kernels.get(name, empty) for name in KERNELS[file]}
    return report


__all__ = ["COMPILE_OPTIONS", "DTYPE_SUFFIXES", "KERNEL_BASE_NAMES", "KERNELS", "KernelCompileError",
           "KernelResources", "CompiledFile", "kernel_name", "kernel_files", "exported_kernels",
           "kernel_source", "kernel_sources", "get_module", "get_kernel", "nvrtc_version",
           "parse_ptxas_log", "parse_cuobjdump_resource_usage", "find_cuda_tool", "compile_for_arch",
           "compile_all_for_arch"]
