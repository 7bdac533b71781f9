"""Assemble and compile gpuconv's CUDA kernels, one small compilation unit per registered variant.

Each kernel family lives in one ``kernels/<family>.cu`` file (shipped as the package
``gpuconv.kernels``) holding its templates and an export macro; the instantiations come from the
registry (``gpuconv/cuda/registry.py``): a compilation unit is a file's text with its
``#include "x.cuh"`` lines replaced by the headers' text (CuPy caches compiled modules on disk keyed on
the source text alone, so a header edit must change that text) followed by the generated
``extern "C"`` export lines of the variants it holds.

Two ways to compile:

* ``get_kernel(variant, dtype)`` -- on the GPU, through ``cupy.RawModule``: one module per variant and
  dtype, compiled on first use (NVRTC for the current device), cached on disk by CuPy and per device in
  this process. Editing one kernel file invalidates the cache of its own variants only.
* ``compile_unit`` / ``compile_variant`` / ``compile_file`` -- without a GPU, through NVRTC from
  ``cuda-bindings``, for any architecture; returns the cubin and each kernel's register, spill and
  shared-memory use as reported by ptxas.
"""
from __future__ import annotations

import functools
import importlib.resources
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import registry

#: NVRTC options for every kernel file (CuPy adds the architecture itself).
COMPILE_OPTIONS = ("-std=c++17",)
#: Options CuPy adds on its own; compile_unit adds them too, so that its
#: resource report describes the code CuPy runs.
CUPY_IMPLIED_OPTIONS = ("-ftz=true",)

_INCLUDE_LINE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.MULTILINE)


class KernelCompileError(RuntimeError):
    """A kernel file failed to compile; the message names it and holds the compiler log."""


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


def unit_source(instantiations) -> str:
    """The compilable text of one compilation unit: the kernel file of the given (variant, dtype) pairs
    (all from one file), headers inlined, then their generated ``extern "C"`` export lines."""
    instantiations = [(v, np.dtype(d)) for v, d in instantiations]
    files = {v.source for v, _ in instantiations}
    if len(files) != 1:
        raise ValueError(f"a compilation unit holds the variants of one kernel file, got {sorted(files)}")
    exports = "\n".join(v.export_line(d) for v, d in instantiations)
    return (f"{kernel_source(files.pop())}\n\n// ---- instantiations generated from gpuconv/cuda/registry.py ----\n"
            f"{exports}\n")


# ------------------------------------------------------------- CuPy (on a GPU) ---

_modules: dict[tuple[int, str], object] = {}
_modules_lock = threading.Lock()


def get_kernel(variant: "registry.Variant | str", dtype):
    """The ``cupy.RawKernel`` of one variant for ``dtype``, compiled for the current device on first use.

    CuPy's ``RawKernel`` does not check argument types: pass ``numpy.int32`` for
    ``int`` and ``numpy.int64`` for ``long long`` parameters (``_launch`` builds them).
    """
    from .._backend import require_cuda

    variant = registry.get(variant) if isinstance(variant, str) else variant
    name = variant.kernel_name(dtype)
    cupy = require_cuda()
    key = (cupy.cuda.Device().id, name)
    with _modules_lock:
        module = _modules.get(key)
        if module is None:
            module = cupy.RawModule(code=unit_source([(variant, dtype)]), options=COMPILE_OPTIONS)
            try:
                module.compile()
            except cupy.cuda.compiler.CompileException as exc:
                raise KernelCompileError(f"kernels/{variant.source} ({name}) failed to compile with NVRTC:"
                                         f"\n{exc}") from exc
            _modules[key] = module
    return module.get_function(name)


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
    """Path of a CUDA binary (cuobjdump, nvdisasm): on PATH, from PyPI's nvidia-cuda-<tool> wheel
    (``site-packages/nvidia/cu*/bin`` or ``nvidia/cuda_<tool>/bin``), or in /usr/local/cuda*/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = []
    for root in map(Path, sys.path):
        candidates += sorted((root / "nvidia").glob("*/bin"), reverse=True)
    candidates += sorted(Path("/usr/local").glob("cuda*/bin"), reverse=True)
    for directory in candidates:
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


def compile_unit(instantiations, arch: str = "sm_90") -> CompiledFile:
    """Compile one compilation unit (``unit_source``) with NVRTC for ``arch`` (e.g. "sm_90"); no GPU needed.

    Resource use comes from ptxas' verbose report (``-Xptxas=-v``, which NVRTC
    passes on); an NVRTC that refuses the option is asked again without it, and
    ``cuobjdump`` then reads the registers when it is installed.
    """
    instantiations = list(instantiations)
    file = instantiations[0][0].source
    nvrtc = _nvrtc()
    source = unit_source(instantiations)
    options = [*COMPILE_OPTIONS, *CUPY_IMPLIED_OPTIONS, f"-arch={arch}"]
    result, log, cubin = _nvrtc_compile(nvrtc, source, file, [*options, "-Xptxas=-v"])
    if result == nvrtc.nvrtcResult.NVRTC_ERROR_INVALID_OPTION:
        result, log, cubin = _nvrtc_compile(nvrtc, source, file, options)
    if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise KernelCompileError(f"kernels/{file} failed to compile for {arch} ({result.name}):\n{log}")
    kernels = parse_ptxas_log(log) or _resources_from_cuobjdump(cubin)
    return CompiledFile(file, arch, cubin, log, kernels)


def compile_variant(variant: "registry.Variant | str", dtype, arch: str = "sm_90") -> CompiledFile:
    """One variant for one dtype, exactly the unit ``get_kernel`` compiles on a GPU."""
    variant = registry.get(variant) if isinstance(variant, str) else variant
    return compile_unit([(variant, np.dtype(dtype))], arch)


def arch_instantiations(file: str, arch: str) -> tuple:
    """The registered instantiations of one kernel file that exist on ``arch`` ("sm_80"): those whose
    variant's min_compute_capability it meets (the tensor-core kernels need sm_80; ptxas refuses their
    mma.sync and cp.async for older targets)."""
    match = re.search(r"(\d+)", arch)
    capability = int(match.group(1)) if match else 0
    return tuple((v, d) for v, d in registry.instantiations(file) if v.min_compute_capability <= capability)


def compile_file(file: str, arch: str = "sm_90") -> CompiledFile:
    """Every registered instantiation of one kernel file for ``arch`` (``arch_instantiations``) in a single
    unit (one NVRTC run: a quick check)."""
    if not registry.instantiations(file):
        raise ValueError(f"no registered variant lives in kernels/{file}; files: {registry.sources()}")
    instantiations = arch_instantiations(file, arch)
    if not instantiations:
        raise ValueError(f"kernels/{file} has no variant for {arch}")
    return compile_unit(instantiations, arch)


__all__ = ["COMPILE_OPTIONS", "CUPY_IMPLIED_OPTIONS", "KernelCompileError", "KernelResources", "CompiledFile",
           "kernel_source", "unit_source", "get_kernel", "nvrtc_version", "parse_ptxas_log",
           "parse_cuobjdump_resource_usage", "find_cuda_tool", "compile_unit", "compile_variant", "compile_file",
           "arch_instantiations"]
