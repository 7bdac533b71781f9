"""Every kernel file compiles with NVRTC for every GPU generation we support -- no GPU needed.

Each file, with all its registered instantiations in one unit (``loader.compile_file``), must export
exactly the ``extern "C"`` kernels the registry names, for each architecture, and ptxas must report
register, spill and shared-memory use for each of them: ``pytest -s`` prints the table. One variant is
also compiled alone, as ``get_kernel`` does on a GPU.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from gpuconv.cuda import loader, registry

pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings is not installed (it provides NVRTC to "
                                                  "compile the kernels without a GPU)")

ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100")
MAX_STATIC_SHARED_BYTES = 48 * 1024

_compiled: dict[tuple[str, str], loader.CompiledFile] = {}


def compiled(file: str, arch: str) -> loader.CompiledFile:
    """Compile once per (file, arch) for the whole module; skip a file with no variant for ``arch`` (the
    tensor-core kernels need sm_80)."""
    if not expected_kernels(file, arch):
        pytest.skip(f"{file} has no variant for {arch}")
    if (file, arch) not in _compiled:
        _compiled[(file, arch)] = loader.compile_file(file, arch)
    return _compiled[(file, arch)]


def expected_kernels(file: str, arch: str) -> set:
    """The kernels of a file that exist on ``arch``: the instantiations of the variants it is new enough for."""
    return {v.kernel_name(d) for v, d in loader.arch_instantiations(file, arch)}


def test_architecture_limits_are_the_registry_s():
    """Every instantiation exists on sm_90; below a variant's min_compute_capability it is not compiled."""
    assert set(loader.arch_instantiations("conv2d_tensor_core.cu", "sm_90")) == set(
        registry.instantiations("conv2d_tensor_core.cu"))
    assert loader.arch_instantiations("conv2d_tensor_core.cu", "sm_75") == ()
    assert set(loader.arch_instantiations("conv2d_fprop.cu", "sm_75")) == set(
        registry.instantiations("conv2d_fprop.cu"))
    with pytest.raises(ValueError, match="no variant for sm_75"):
        loader.compile_file("conv2d_tensor_core.cu", "sm_75")


def test_sources_are_self_contained():
    for file in registry.sources():
        source = loader.unit_source(registry.instantiations(file))
        assert not re.search(r"^\s*#\s*include", source, re.MULTILINE), f"{file}: an #include was left in"
        assert source.count("struct gpuconv_half {") == 1, f"{file}: common.cuh must be inlined exactly once"


def test_a_unit_holds_one_file():
    with pytest.raises(ValueError, match="one kernel file"):
        loader.unit_source([(registry.get("im2col_nchw"), np.float32), (registry.get("maxpool2d_forward"),
                                                                         np.float32)])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("file", registry.sources())
def test_compiles_and_exports_what_the_registry_names(file, arch):
    result = compiled(file, arch)
    expected = expected_kernels(file, arch)
    missing = sorted(name for name in expected if not result.exports(name))
    assert not missing, f"{file} ({arch}) lacks the kernels {missing}"
    if "ptxas info" not in result.log:  # an NVRTC without -Xptxas=-v: cuobjdump's registers at best
        assert not result.kernels or set(result.kernels) == expected
        pytest.skip(f"NVRTC {loader.nvrtc_version()} gave no ptxas report: spills cannot be read")
    assert set(result.kernels) == expected, (
        f"{file} ({arch}): ptxas compiled the entry points {sorted(result.kernels)}, "
        f"the registry names {sorted(expected)}")
    for name, r in result.kernels.items():
        for field in ("registers", "spill_stores", "spill_loads", "stack_bytes", "shared_bytes"):
            value = getattr(r, field)
            assert isinstance(value, int) and value >= 0, f"{name} ({arch}): {field} not reported: {r}"
        assert r.registers <= 255
        assert r.shared_bytes <= MAX_STATIC_SHARED_BYTES, f"{name} ({arch}) uses {r.shared_bytes} B of shared memory"
    for variant, dtype in loader.arch_instantiations(file, arch):
        assert result.kernels[variant.kernel_name(dtype)].shared_bytes == variant.static_shared_bytes(dtype), (
            f"{variant.name} {dtype}: the registry's static shared memory differs from ptxas'")


def test_one_variant_compiles_alone_as_on_a_gpu():
    result = loader.compile_variant("wgrad_simt_16x16x32_1stage_splitk", np.float16, "sm_90")
    assert result.exports("gpuconv_wgrad_simt_16x16x32_1stage_splitk_f16")
    assert not result.exports("gpuconv_wgrad_simt_64x64x16_1stage_splitk_f16")


def test_print_register_and_spill_table():
    """One row per kernel: registers per architecture, spill bytes and shared memory (pytest -s shows it)."""
    resources = {}  # kernel -> {arch: KernelResources}
    for file in registry.sources():
        for arch in ARCHS:
            if not expected_kernels(file, arch):
                continue
            result = compiled(file, arch)
            if "ptxas info" not in result.log:
                pytest.skip("this NVRTC gives no ptxas report (-Xptxas=-v): no spill counts to print")
            for name, r in result.kernels.items():
                resources.setdefault(name, {})[arch] = r
    width = max(map(len, resources))
    print(f"\n{'kernel':<{width}}  {'registers ' + '/'.join(a[3:] for a in ARCHS):<32}"
          f"spill stores+loads (B)  smem (B)")
    for name in sorted(resources):
        per_arch = [resources[name][arch] for arch in ARCHS if arch in resources[name]]
        registers = "/".join(f"{resources[name][arch].registers}" if arch in resources[name] else "-"
                             for arch in ARCHS)
        spilled = [r.spill_stores + r.spill_loads for r in per_arch]
        spills = "/".join(map(str, spilled)) if any(spilled) else "0"
        print(f"{name:<{width}}  {registers:<32}{spills:<24}{per_arch[0].shared_bytes:>8}")
    for per_arch in resources.values():
        assert all(isinstance(r.spill_stores, int) and isinstance(r.spill_loads, int) for r in per_arch.values())


def test_compile_error_names_the_file_and_carries_the_log(monkeypatch):
    real_read = loader._read_text

    assert "col_segment[q] = row_inside" in real_read("im2col.cu"), "the injected error needs a new target"

    def read(name):
        if name == "im2col.cu":
            return real_read(name).replace("col_segment[q] = row_inside",
                                           "col_segment[q] = undefined_name + row_inside", 1)
        return real_read(name)

    monkeypatch.setattr(loader, "_read_text", read)
    with pytest.raises(loader.KernelCompileError, match=r"kernels/im2col\.cu") as excinfo:
        loader.compile_variant("im2col_nchw", np.float32, "sm_90")
    assert "undefined_name" in str(excinfo.value)
    assert "im2col.cu" in str(excinfo.value).split("\n", 1)[1], "the NVRTC log should point into im2col.cu"


def test_parse_ptxas_log():
    log = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'first' for 'sm_90'
ptxas info    : Function properties for first
ptxas         .     8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 8320 bytes smem, 452 bytes cmem[0]
ptxas info    : Compiling entry function 'second' for 'sm_90'
ptxas info    : Function properties for second
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 20 registers, used 0 barriers, 384 bytes cmem[0]
"""
    assert loader.parse_ptxas_log(log) == {
        "first": loader.KernelResources(40, 4, 12, 8, 8320),
        "second": loader.KernelResources(20, 0, 0, 0, 0),
    }


def test_parse_cuobjdump_resource_usage():
    """The fallback for an NVRTC without -Xptxas: registers and shared memory, spills unknown."""
    text = """
Resource usage:
 Common:
  GLOBAL:64 CONSTANT[4]:128
 Function gpuconv_wgrad_splitk_reduce_f64:
  REG:32 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:556 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function gpuconv_wgrad_simt_16x16x32_1stage_splitk_f32:
  REG:55 STACK:16 SHARED:5376 LOCAL:0 CONSTANT[0]:632 TEXTURE:0 SURFACE:0 SAMPLER:0
"""
    assert loader.parse_cuobjdump_resource_usage(text) == {
        "gpuconv_wgrad_splitk_reduce_f64": loader.KernelResources(32, None, None, 0, 0),
        "gpuconv_wgrad_simt_16x16x32_1stage_splitk_f32": loader.KernelResources(55, None, None, 16, 5376),
    }
