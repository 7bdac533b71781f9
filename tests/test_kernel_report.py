"""The kernel report (gpuconv/cuda/report.py): SASS parsing, loop analysis and occupancy on handwritten
text, then one real variant end to end (NVRTC + nvdisasm, no GPU needed).

The snippets are in the format nvdisasm 13 prints for our cubins (``nvdisasm -c``), cut down.
"""
from __future__ import annotations

import json

import pytest

from gpuconv.cuda import report
from gpuconv.cuda.report import Instruction, occupancy, parse_instruction, parse_sass


def _loop_of(sass: str, function: str = "k"):
    instructions = parse_sass(sass)[function]
    return instructions, report.main_loop_stats(instructions)


# A function with a helper subroutine, labels, predicates and the padding nvdisasm prints at the end.
KERNEL = """\
	.target	sm_90

	.elftype	@"ET_EXEC"


//--------------------- .text.k                   --------------------------
	.section	.text.k,"ax",@progbits
	.align	128
        .global         k
        .type           k,@function
        .size           k,(.L_x_9 - k)
        .other          k,@"STO_CUDA_ENTRY STV_DEFAULT"
k:
.text.k:
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   S2R R0, SR_TID.X ;
        /*0020*/                   ULDC.64 UR4, c[0x0][0x208] ;
        /*0030*/                   ISETP.GE.AND P0, PT, R0, UR4, PT ;
        /*0040*/               @P0 EXIT ;
.L_x_1:
        /*0050*/                   LDS R8, [R3+UR11] ;
        /*0060*/                   LDS.128 R12, [R3+UR11+0x10] ;
        /*0070*/                   FFMA.FTZ R20, R8.reuse, R12, R20 ;
        /*0080*/                   FFMA.FTZ R21, R8, R13, R21 ;
.L_x_0:
        /*0090*/                   IADD3 R4, R4, 0x1, RZ ;
        /*00a0*/                   ISETP.GE.AND P1, PT, R4, 0x3, PT ;
        /*00b0*/              @!P1 BRA `(.L_x_0) ;
        /*00c0*/                   UIADD3 UR4, UP0, UR4, 0x10, URZ ;
        /*00d0*/                   ISETP.LE.U32.AND P0, PT, R6, UR4, PT ;
        /*00e0*/              @!P0 BRA `(.L_x_1) ;
        /*00f0*/                   CALL.REL.NOINC `($__internal_0_$__cuda_sm20_div_s64) ;
        /*0100*/                   STG.E desc[UR4][R10.64], R20 ;
        /*0110*/                   EXIT ;
        .weak           $__internal_0_$__cuda_sm20_div_s64
        .type           $__internal_0_$__cuda_sm20_div_s64,@function
        .size           $__internal_0_$__cuda_sm20_div_s64,(.L_x_9 - $__internal_0_$__cuda_sm20_div_s64)
$__internal_0_$__cuda_sm20_div_s64:
        /*0120*/                   IMAD.WIDE.U32 R10, R6, R7, RZ ;
        /*0130*/                   RET.REL.NODEC R2 `(k) ;
.L_x_8:
        /*0140*/                   BRA `(.L_x_8);
        /*0150*/                   NOP;
        /*0160*/                   NOP;
.L_x_9:
"""


def test_parse_sass_functions_labels_predicates_operands():
    functions = parse_sass(KERNEL)
    assert list(functions) == ["k", "$__internal_0_$__cuda_sm20_div_s64"]
    k = functions["k"]
    assert len(k) == 18 and k[0] == Instruction(0, "LDC", ("R1", "c[0x0][0x28]"))
    exit_ = k[4]
    assert (exit_.offset, exit_.predicate, exit_.opcode, exit_.operands) == (0x40, "P0", "EXIT", ())
    lds = k[6]
    assert (lds.opcode, lds.base, lds.modifiers, lds.operands) == ("LDS.128", "LDS", ("128",),
                                                                   ("R12", "[R3+UR11+0x10]"))
    assert k[5].labels == (".L_x_1",) and k[9].labels == (".L_x_0",)
    branch = k[11]
    assert (branch.predicate, branch.opcode, branch.target) == ("!P1", "BRA", ".L_x_0")
    stg = k[16]
    assert stg.operands == ("desc[UR4][R10.64]", "R20")
    helper = functions["$__internal_0_$__cuda_sm20_div_s64"]
    assert [i.opcode for i in helper] == ["IMAD.WIDE.U32", "RET.REL.NODEC", "BRA", "NOP", "NOP"]
    assert helper[2].target == ".L_x_8" and helper[2].labels == (".L_x_8",)


def test_find_loops_nested_backward_branches_and_padding():
    k = parse_sass(KERNEL)["k"]
    loops = report.find_loops(k)
    assert [(loop.label, k[loop.start].offset, k[loop.end].offset) for loop in loops] == [
        (".L_x_1", 0x50, 0xe0), (".L_x_0", 0x90, 0xb0)]
    # The BRA-to-itself after the last RET is padding, not a loop.
    assert report.find_loops(parse_sass(KERNEL)["$__internal_0_$__cuda_sm20_div_s64"]) == []
    # The main loop is the one with the FFMAs (the outer one here), not the inner counting loop.
    stats = report.main_loop_stats(k)
    assert (stats.label, stats.instructions, stats.fma, stats.uniform) == (".L_x_1", 10, 2, 1)
    assert stats.shared_loads == {"LDS": 1, "LDS.128": 1}


def test_cuobjdump_format_with_encodings_and_address_targets():
    sass = """\
	code for sm_90
	.target	sm_90

		Function : k
	.headerflags	@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                               /* 0x00000a00ff017b82 */
                                                                                        /* 0x000fe20000000800 */
        /*0010*/                   LDS R8, [R3] ;                                       /* 0x0000000003087984 */
                                                                                        /* 0x000e240000000800 */
        /*0020*/                   FFMA R20, R8, R8, R20 ;                              /* 0x0000000808147223 */
                                                                                        /* 0x001fc80000000014 */
        /*0030*/               @P1 BRA 0x10 ;                                           /* 0xfffffffc00f41947 */
                                                                                        /* 0x000fea000383ffff */
        /*0040*/                   EXIT ;                                               /* 0x000000000000794d */
                                                                                        /* 0x000fea0003800000 */
"""
    functions = parse_sass(sass)
    assert list(functions) == ["k"] and len(functions["k"]) == 5
    assert functions["k"][3].target == "0x10"
    stats = report.main_loop_stats(functions["k"])
    assert (stats.label, stats.instructions, stats.fma, stats.shared_loads) == ("0x10", 3, 1, {"LDS": 1})


LOOP = """\
        .type           k,@function
k:
        /*0000*/                   MOV R2, RZ ;
.L_x_0:
{body}
        /*0ff0*/               @P0 BRA `(.L_x_0) ;
        /*1000*/                   EXIT ;
"""


def _body(*lines: str) -> str:
    """Loop-body lines in nvdisasm's layout, numbered from 0x10."""
    out = []
    for i, line in enumerate(lines):
        predicate, _, rest = line.partition(" ") if line.startswith("@") else ("", "", line)
        out.append(f"        /*{0x10 * (i + 1):04x}*/{predicate:>18} {rest} ;")
    return LOOP.format(body="\n".join(out))


def test_never_executed_placeholders_and_nops_are_not_counted():
    _, stats = _loop_of(_body(
        "@!PT LDS RZ, [RZ]",
        "@!PT LDS RZ, [RZ]",
        "LDGSTS.E.BYPASS.LTC128B.128 [R5], desc[UR6][R2.64]",
        "LDGDEPBAR",
        "DEPBAR.LE SB0, 0x1",
        "LDS.64 R8, [R4]",
        "FFMA R10, R8, R9, R10",
        "NOP",
    ))
    assert stats.instructions == 6    # the five that execute and the BRA
    assert stats.shared_loads == {"LDS.64": 1}
    assert stats.async_copies == 1 and stats.global_loads == 0
    assert "NOP" not in stats.opcodes and stats.opcodes.get("LDS") is None


def test_shared_load_widths_and_fmas_per_load():
    _, stats = _loop_of(_body(
        "LDS R8, [R2]",
        "LDS.64 R10, [R2+0x100]",
        "LDS.128 R12, [R2+0x200]",
        "LDS.128 R16, [R2+0x300]",
        "LDS.U16 R20, [R2+0x400]",
        "LDSM.16.M88.4 R24, [R3]",
        "FFMA.FTZ R30, R8, R12, R30",
        "FFMA.FTZ R31, R8, R13, R31",
        "FFMA.FTZ R32, R10, R14, R32",
        "FFMA.FTZ R33, R11, R15, R33",
        "HMMA.16816.F32 R40, R24, R28, R40",
        "HMMA.16816.F32 R44, R24, R30, R44",
    ))
    assert stats.shared_loads == {"LDS": 1, "LDS.64": 1, "LDS.128": 2, "LDS.U16": 1, "LDSM.16.M88.4": 1}
    assert stats.shared_load_count == 6
    assert (stats.fma, stats.tensor, stats.instructions) == (4, 2, 13)
    assert stats.fma_per_shared_load == pytest.approx(1.0)
    assert stats.fma_share == pytest.approx(4 / 13) and stats.tensor_share == pytest.approx(2 / 13)


def test_integer_and_uniform_shares():
    _, stats = _loop_of(_body(
        "FFMA R20, R4, R5, R20",
        "FFMA R21, R4, R6, R21",
        "DFMA R22, R8, R10, R22",
        "IMAD.WIDE.U32 R2, R7, 0x4, R2",
        "IADD3 R7, R7, 0x1, RZ",
        "LEA.HI.X R3, R7, R9, RZ, 0x2, P0",
        "ISETP.GE.AND P0, PT, R7, R6, PT",
        "HFMA2.MMA R11, -RZ, RZ, 0, 0",        # ptxas' "move a constant": not an FMA
        "UIADD3 UR4, UP0, UR4, 0x10, URZ",
        "ULDC.64 UR6, c[0x0][0x208]",
        "BAR.SYNC.DEFER_BLOCKING 0x0",
    ))
    assert stats.instructions == 12
    assert (stats.fma, stats.integer, stats.uniform, stats.barriers) == (3, 5, 2, 1)
    assert stats.integer_share == pytest.approx(5 / 12) and stats.uniform_share == pytest.approx(2 / 12)
    assert stats.barriers_per_fma == pytest.approx(1 / 3)


def test_global_load_used_right_away_is_exposed_after_math_is_hidden():
    _, exposed = _loop_of(_body(
        "LDG.E.CONSTANT R67, desc[UR14][R44.64]",
        "BSYNC B1",
        "STS [R48], R67",                       # waits for the load with nothing to do
        "FFMA R20, R4, R5, R20",
    ))
    assert (exposed.global_loads, exposed.exposed_global_round_trips, exposed.hidden_global_loads) == (1, 1, 0)
    _, hidden = _loop_of(_body(
        "LDG.E.CONSTANT R67, desc[UR14][R44.64]",
        "FFMA R20, R4, R5, R20",
        "FFMA R21, R4, R6, R21",
        "STS [R48], R67",
    ))
    assert (hidden.exposed_global_round_trips, hidden.hidden_global_loads) == (0, 1)


def test_loads_issued_together_are_one_round_trip_serialised_loads_are_several():
    _, together = _loop_of(_body(
        "LDG.E R4, desc[UR4][R2.64]",
        "LDG.E R5, desc[UR4][R2.64+0x100]",
        "STS [R8], R4",
        "STS [R8+0x4], R5",
    ))
    assert together.exposed_global_round_trips == 1
    _, serial = _loop_of(_body(
        "LDG.E R4, desc[UR4][R2.64]",
        "STS [R8], R4",
        "LDG.E R5, desc[UR4][R2.64+0x100]",
        "STS [R8+0x4], R5",
    ))
    assert serial.exposed_global_round_trips == 2


def test_wide_load_destinations_cover_every_register():
    # LDG.E.128 R4 writes R4..R7: reading R7 right away waits for it; R8 is not part of it.
    _, quad = _loop_of(_body(
        "LDG.E.128 R4, desc[UR4][R2.64]",
        "FADD R9, R8, 1",
        "FFMA R10, -R7.reuse, |R11|, R10",
    ))
    assert quad.exposed_global_round_trips == 1 and quad.hidden_global_loads == 0
    _, pair = _loop_of(_body(
        "LDG.E.64 R4, desc[UR4][R2.64]",
        "FFMA R20, R10, R11, R20",
        "STS.64 [R12+0x10], R4",
    ))
    assert (pair.exposed_global_round_trips, pair.hidden_global_loads) == (0, 1)
    _, double = _loop_of(_body(
        "LDG.E.64 R4, desc[UR4][R2.64]",
        "DFMA R20, R10, R12, R20",
        "DFMA R22, R4, R12, R22",              # a double in R4..R5
    ))
    assert (double.exposed_global_round_trips, double.hidden_global_loads) == (0, 1)


def test_prefetch_for_the_next_iteration_follows_the_back_branch():
    # Register double buffering: the load at the bottom is stored at the top of the next iteration.
    _, covered = _loop_of(_body(
        "STS [R8], R4",
        "BAR.SYNC.DEFER_BLOCKING 0x0",
        "LDS R12, [R9]",
        "LDG.E R4, desc[UR4][R2.64]",
        "FFMA R20, R12, R12, R20",
        "BAR.SYNC.DEFER_BLOCKING 0x0",
    ))
    assert (covered.exposed_global_round_trips, covered.hidden_global_loads) == (0, 1)
    _, uncovered = _loop_of(_body(
        "STS [R8], R4",
        "LDS R12, [R9]",
        "FFMA R20, R12, R12, R20",
        "LDG.E R4, desc[UR4][R2.64]",
    ))
    assert uncovered.exposed_global_round_trips == 1


def test_register_operand_forms():
    def reads(text):
        return report.read_registers(parse_instruction(text))

    def writes(text):
        return report.written_registers(parse_instruction(text))

    assert reads("FFMA R1, -R4.reuse, |R5|, R6") == {4, 5, 6}
    assert reads("LDS R1, [R4+0x10]") == {4} and writes("LDS R1, [R4+0x10]") == {1}
    assert reads("LDG.E.128 R8, desc[UR14][R44.64+0x10]") == {44, 45}
    assert writes("LDG.E.128 R8, desc[UR14][R44.64+0x10]") == {8, 9, 10, 11}
    assert writes("LDG.E.U16.CONSTANT R8, desc[UR4][R2.64]") == {8}
    assert reads("STG.E.64 desc[UR4][R2.64], R6") == {2, 3, 6, 7} and writes("STG.E.64 desc[UR4][R2.64], R6") == set()
    assert reads("DFMA R4, R6, R8, R10") == {6, 7, 8, 9, 10, 11} and writes("DFMA R4, R6, R8, R10") == {4, 5}
    assert writes("IMAD.WIDE.U32 R26, R26, R6, RZ") == {26, 27} and reads("IMAD.WIDE.U32 R26, R26, R6, RZ") == {26, 6}
    assert reads("ISETP.GE.U32.AND P1, PT, R2, UR8, PT") == {2}
    assert reads("S2R R6, SR_TID.X") == set() and reads("MOV R44, UR7") == set()
    assert reads("IADD3 R7, P0, R7.reuse, R42, RZ") == {7, 42}


def test_occupancy_register_limited():
    # 256 threads = 8 warps; 72 registers * 32 = 2304 per warp (already a multiple of 256);
    # 65536 / 4 sub-partitions = 16384 per partition -> floor(16384 / 2304) = 7 warps each -> 28 warps
    # -> floor(28 / 8) = 3 blocks = 24 of 64 warps. Shared memory: 8320 + 1024 reserved = 9344 (a multiple
    # of 128) -> floor(233472 / 9344) = 24 blocks; threads: 64 / 8 = 8 blocks; the cap: 32.
    occ = occupancy("sm_90", 72, 256, 8320, 0)
    assert (occ.blocks_per_sm, occ.active_warps, occ.max_warps) == (3, 24, 64)
    assert occ.occupancy == pytest.approx(0.375) and occ.limited_by == ("registers",)
    assert occ.blocks_by == {"registers": 3, "shared memory": 24, "threads": 8, "blocks": 32}
    assert (occ.registers_per_warp, occ.smem_per_block) == (2304, 9344)
    # 65 registers round up to 72 (2080 -> 2304 per warp): the same 3 blocks; 64 registers (2048 per
    # warp, 8 warps per partition, 32 per SM) give 4 blocks.
    assert occupancy("sm_90", 65, 256, 8320).blocks_per_sm == 3
    assert occupancy("sm_90", 64, 256, 8320).blocks_per_sm == 4


def test_occupancy_shared_memory_limited_by_dynamic_shared_memory():
    # 128 threads (4 warps), 32 registers: 1024 per warp -> 16 warps per partition -> 64 warps -> 16 blocks;
    # threads: 64 / 4 = 16 blocks. Static 8320 B alone: 9344 B per block -> 24 blocks: threads limit it.
    alone = occupancy("sm_90", 32, 128, 8320, 0)
    assert (alone.blocks_per_sm, alone.limited_by) == (16, ("registers", "threads"))
    # Plus 64 KiB dynamic: 8320 + 65536 + 1024 = 74880 B (585 * 128) -> floor(233472 / 74880) = 3 blocks,
    # 12 of 64 warps.
    occ = occupancy("sm_90", 32, 128, 8320, 64 * 1024)
    assert (occ.blocks_per_sm, occ.active_warps, occ.limited_by) == (3, 12, ("shared memory",))
    assert occ.occupancy == pytest.approx(12 / 64) and occ.smem_per_block == 74880
    # sm_86 has 100 KiB per SM: 102400 / 74880 -> 1 block.
    assert occupancy("sm_86", 32, 128, 8320, 64 * 1024).blocks_per_sm == 1


def test_occupancy_threads_blocks_and_launch_failures():
    # sm_86: 48 warps per SM, a 1024-thread block is 32 warps -> 1 block, 2/3 occupancy.
    occ = occupancy("sm_86", 16, 1024)
    assert (occ.blocks_per_sm, occ.active_warps, occ.max_warps, occ.limited_by) == (1, 32, 48, ("threads",))
    # One-warp blocks: 64 would fit by threads, 128 by registers (512 per warp), the cap is 32.
    occ = occupancy("sm_90", 16, 32)
    assert (occ.blocks_per_sm, occ.occupancy, occ.limited_by) == (32, 0.5, ("blocks",))
    # sm_75: no reserved shared memory, 256-byte units, 64 KiB per SM: 48 KiB per block -> 1 block.
    assert occupancy("sm_75", 32, 256, 48 * 1024).blocks_by["shared memory"] == 1
    assert occupancy("sm_75", 32, 256, 32 * 1024 - 100).blocks_by["shared memory"] == 2
    # Cannot launch: too many registers, shared memory or threads.
    assert occupancy("sm_90", 256, 128).limited_by == ("registers",)
    assert occupancy("sm_90", 32, 128, 0, 228 * 1024).blocks_per_sm == 0
    assert occupancy("sm_90", 32, 2048).limited_by == ("threads",)


def test_arch_table():
    assert set(report.ARCHS) == {"sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120"}
    for limits in report.ARCHS.values():
        assert (limits.registers_per_sm, limits.register_granularity, limits.max_registers_per_thread) == (
            65536, 256, 255)
        assert limits.smem_per_block <= limits.smem_per_sm
        assert limits.smem_reserved_per_block == (0 if limits.name == "sm_75" else 1024)
    assert report.arch_limits("sm_90a") is report.ARCHS["sm_90"] and report.arch_limits("90").max_warps_per_sm == 64
    with pytest.raises(ValueError):
        report.arch_limits("sm_61")


def test_without_a_disassembler_the_resources_are_still_reported(monkeypatch, capsys, tmp_path):
    from gpuconv.cuda import loader

    def fake_compile(variant, dtype, arch):
        kernel = variant.kernel_name(dtype)
        return loader.CompiledFile(variant.source, arch, b"\x7fELF fake", "",
                                   {kernel: loader.KernelResources(72, 0, 0, 0, 8320)})

    monkeypatch.setattr(loader, "compile_variant", fake_compile)
    monkeypatch.setattr(loader, "nvrtc_version", lambda: (13, 0))
    monkeypatch.setattr(report, "find_disassembler", lambda name: None)
    out_json = tmp_path / "r.json"
    assert report.main(["--variant", "fprop_simt_64x64x16_1stage", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "pip install nvidia-cuda-nvdisasm" in out
    row = next(line for line in out.splitlines() if line.startswith("fprop_simt_64x64x16_1stage"))
    assert "72" in row and "8320" in row and "24/64 38% (3)" in row
    variant = json.loads(out_json.read_text())["variants"][0]
    assert variant["main_loop"] is None and variant["registers"] == 72


def test_unknown_variant_is_an_error(capsys):
    assert report.main(["--variant", "no_such_kernel"]) == 2
    assert "no_such_kernel" in capsys.readouterr().err


# ------------------------------------------------------------------- end to end (NVRTC, nvdisasm) ---

VARIANT = "fprop_simt_64x64x16_1stage"


@pytest.fixture(scope="module")
def real_report(tmp_path_factory):
    pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings is not installed (it provides NVRTC to "
                                                      "compile the kernels without a GPU)")
    if report.find_disassembler("nvdisasm") is None:
        pytest.skip("nvdisasm is not installed (pip install nvidia-cuda-nvdisasm; the test extra has it)")
    directory = tmp_path_factory.mktemp("report")
    json_file, cubin_dir = directory / "report.json", directory / "cubin"
    status = report.main(["--arch", "sm_90", "--variant", VARIANT, "--json", str(json_file),
                          "--emit-cubin", str(cubin_dir)])
    return status, json.loads(json_file.read_text()), cubin_dir


def test_real_variant_report(real_report):
    from gpuconv.cuda import loader, registry

    status, document, cubin_dir = real_report
    assert status == 0
    assert document["arch"] == "sm_90" and document["disassembler"] == "nvdisasm"
    assert document["nvrtc_version"] == "%d.%d" % loader.nvrtc_version()
    (variant,) = document["variants"]
    kernel = registry.get(VARIANT).kernel_name("float32")
    assert variant["variant"] == VARIANT and variant["kernel"] == kernel and variant["op"] == "fprop"

    cubin = (cubin_dir / f"{kernel}.cubin").read_bytes()
    assert cubin[:4] == b"\x7fELF"
    assert f"{kernel}:" in (cubin_dir / f"{kernel}.sass").read_text()
    # The registers are ptxas' -- and the cubin's own record, read back by cuobjdump when it is installed.
    assert variant["registers"] == loader.compile_variant(VARIANT, "float32", "sm_90").kernels[kernel].registers
    if loader.find_cuda_tool("cuobjdump"):
        assert loader._resources_from_cuobjdump(cubin)[kernel].registers == variant["registers"]
    assert variant["static_smem"] == registry.get(VARIANT).static_shared_bytes("float32")

    occ = variant["occupancy"]
    assert occ["max_warps"] == 64 and 0 < occ["active_warps"] <= 64 and occ["limited_by"]
    loop = variant["main_loop"]
    assert loop["fma"] > 0 and loop["fma_share"] > 0
    assert loop["shared_load_count"] > 0 and sum(loop["shared_loads"].values()) == loop["shared_load_count"]
    assert loop["barriers"] >= 1 and loop["global_loads"] >= 1
    assert 0 <= loop["exposed_global_round_trips"] <= loop["global_loads"]
    assert loop["instructions"] == sum(loop["opcodes"].values())


def test_cuobjdump_fallback_finds_the_same_main_loop(real_report, monkeypatch):
    from gpuconv.cuda import registry

    if report.find_disassembler("cuobjdump") is None:
        pytest.skip("cuobjdump is not installed (pip install nvidia-cuda-cuobjdump; the test extra has it)")
    _, _, cubin_dir = real_report
    kernel = registry.get(VARIANT).kernel_name("float32")
    expected = report.main_loop_stats(parse_sass((cubin_dir / f"{kernel}.sass").read_text())[kernel])
    real = report.find_disassembler
    monkeypatch.setattr(report, "find_disassembler", lambda name: None if name == "nvdisasm" else real(name))
    sass, tool, why_not = report.disassemble((cubin_dir / f"{kernel}.cubin").read_bytes())
    assert why_not is None and tool.endswith("cuobjdump")
    stats = report.main_loop_stats(parse_sass(sass)[kernel])
    assert stats.opcodes == expected.opcodes
    assert (stats.start_offset, stats.end_offset) == (expected.start_offset, expected.end_offset)
    assert stats.exposed_global_round_trips == expected.exposed_global_round_trips
