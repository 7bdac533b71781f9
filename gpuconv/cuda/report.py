"""The kernel report: what the machine code of each kernel variant looks like, without a GPU.

``python -m gpuconv.cuda.report [--arch sm_90] [--variant NAME ...] [--dtype float32] [--json FILE]
[--emit-cubin DIR]`` compiles every registered variant (registry.VARIANTS, or the named ones) with NVRTC
for the architecture, disassembles the cubin (``nvdisasm``; ``cuobjdump -sass`` as a fallback) and prints
one row per variant:

* resources: registers, spill bytes, static shared memory (ptxas) and dynamic shared memory (registry),
  threads per block;
* theoretical occupancy on that architecture and the resource that limits it (``ARCHS`` below, the same
  rules as CUDA's occupancy calculator);
* the instruction mix of the main loop -- the loop of the SASS with the most FMA-type instructions:
  FMA and tensor-core shares, shared-memory loads by width, FMAs per shared load, integer/address and
  uniform-datapath shares, barriers per FMA, global loads and the global-load round trips per iteration
  whose latency no math covers;
* for the tensor-core variants: tensor-core instructions (HMMA) per 16-byte fragment load (ldmatrix.x4,
  LDSM ... .4, or LDS.128 where ldmatrix cannot serve: TF32 wgrad), the scalar shared loads (narrower LDS) of
  the main loop, the widths of its cp.async copies (LDGSTS ... .128) and
  the pipeline's stages (registry).

Those figures are what we judge a kernel's speed by before a GPU is at hand: a SIMT GEMM loop that is
not mostly FFMA, or that waits on global memory every K-slice, will not be fast whatever the GPU.

The analysis is pure functions on text (``parse_sass``, ``find_loops``, ``main_loop_stats``,
``occupancy``) so that it is testable on handwritten SASS; only ``variant_report`` and ``main`` compile.
All counts are *static*: each instruction of the loop body counts once, whichever branch of an ``if``
inside the loop it is on.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .._shapes import ceil_div

# --------------------------------------------------------------------------------- architectures ---


@dataclass(frozen=True)
class ArchLimits:
    """Per-SM limits of one architecture, as CUDA's occupancy calculator uses them."""
    name: str
    max_threads_per_sm: int
    max_blocks_per_sm: int
    smem_per_sm: int                   # bytes, at the largest shared-memory carveout
    smem_per_block: int                # bytes, the most one block may use (opt-in above 48 KiB)
    smem_reserved_per_block: int       # bytes the CUDA runtime reserves in every block
    smem_granularity: int = 128        # a block's shared memory is allocated in these units
    registers_per_sm: int = 65536
    register_granularity: int = 256    # registers are allocated per warp, in units of 256
    max_registers_per_thread: int = 255
    max_threads_per_block: int = 1024
    sub_partitions: int = 4            # the register file is split between 4 warp schedulers
    warp_size: int = 32

    @property
    def max_warps_per_sm(self) -> int:
        return self.max_threads_per_sm // self.warp_size


KIB = 1024
# Sources: CUDA C++ Programming Guide, "Compute Capabilities" -> "Technical Specifications per Compute
# Capability" (resident threads / blocks per SM, registers per SM and per thread, shared memory per SM and
# per block; the per-arch tuning guides say the 1 KiB difference between the two is reserved for system
# use) and the allocation rules of CUDA's occupancy calculator, cuda_occupancy.h
# (cudaOccRegAllocationGranularity: 256 registers per warp; cudaOccSubPartitionsPerMultiprocessor: 4;
# cudaOccSMemAllocationGranularity: 256 B on 7.x, 128 B from 8.0; reservedSharedMemPerBlock: 0 on 7.x,
# 1 KiB from 8.0). sm_120 (consumer Blackwell) has Ada's limits: 48 warps and 24 blocks per SM, 100 KiB of
# shared memory (some third-party tables give 32 blocks; at 256-thread blocks the difference never shows).
ARCHS: dict[str, ArchLimits] = {a.name: a for a in (
    ArchLimits("sm_75", 1024, 16, 64 * KIB, 64 * KIB, 0, smem_granularity=256),
    ArchLimits("sm_80", 2048, 32, 164 * KIB, 163 * KIB, 1 * KIB),
    ArchLimits("sm_86", 1536, 16, 100 * KIB, 99 * KIB, 1 * KIB),
    ArchLimits("sm_89", 1536, 24, 100 * KIB, 99 * KIB, 1 * KIB),
    ArchLimits("sm_90", 2048, 32, 228 * KIB, 227 * KIB, 1 * KIB),
    ArchLimits("sm_100", 2048, 32, 228 * KIB, 227 * KIB, 1 * KIB),
    ArchLimits("sm_120", 1536, 24, 100 * KIB, 99 * KIB, 1 * KIB),
)}


def arch_limits(arch: str) -> ArchLimits:
    """The limits of "sm_90" (also "sm_90a", "90", "compute_90")."""
    match = re.fullmatch(r"(?:sm_|compute_)?(\d+)[af]?", arch.strip().lower())
    name = f"sm_{match.group(1)}" if match else arch
    try:
        return ARCHS[name]
    except KeyError:
        raise ValueError(f"no occupancy table for {arch!r}; known: {', '.join(ARCHS)}") from None


def compute_capability(arch: str) -> int:
    """"sm_90" -> 90."""
    match = re.search(r"(\d+)", arch)
    if not match:
        raise ValueError(f"not an architecture: {arch!r}")
    return int(match.group(1))


# ------------------------------------------------------------------------------------- occupancy ---

#: The resources that can limit the number of resident blocks, in the order the table names ties.
LIMITS = ("registers", "shared memory", "threads", "blocks")


@dataclass(frozen=True)
class Occupancy:
    arch: str
    blocks_per_sm: int
    active_warps: int          # per SM
    max_warps: int             # per SM
    occupancy: float           # active_warps / max_warps
    limited_by: tuple          # the resource(s) giving the fewest blocks (several on a tie)
    blocks_by: dict            # resource -> how many blocks it alone would allow (None: no limit)
    smem_per_block: int        # bytes allocated per block: static + dynamic + reserved, rounded up
    registers_per_warp: int    # allocated, after rounding to the granularity


def _round_up(value: int, unit: int) -> int:
    return ceil_div(value, unit) * unit


def occupancy(arch: str, registers: int, threads: int, static_smem: int = 0, dynamic_smem: int = 0) -> Occupancy:
    """Theoretical occupancy of a kernel on ``arch``, computed like CUDA's occupancy calculator.

    * threads: ``max_threads_per_sm / 32`` warps, whole blocks of ``ceil(threads / 32)`` warps;
    * registers: each warp gets ``registers * 32`` rounded up to 256; the register file is split evenly
      between 4 sub-partitions and a warp lives in one, so an SM holds
      ``4 * floor(65536 / 4 / registers_per_warp)`` warps (and a block must fit the 65536 registers a
      block may have with its warps rounded up to a multiple of 4);
    * shared memory: static + dynamic + the runtime's reserved bytes, rounded up to the allocation
      unit, against the shared memory of an SM at the largest carveout (dynamic shared memory counts
      like static);
    * blocks: the per-SM cap on resident blocks.

    A kernel that cannot launch at all (too many registers, threads or shared memory for one block)
    gets 0 blocks, limited by that resource.
    """
    limits = arch_limits(arch)
    warps_per_block = ceil_div(threads, limits.warp_size)
    registers_per_warp = _round_up(registers * limits.warp_size, limits.register_granularity)
    smem = static_smem + dynamic_smem
    smem_allocated = _round_up(smem + limits.smem_reserved_per_block, limits.smem_granularity) if smem else 0

    blocks_by = {"blocks": limits.max_blocks_per_sm}
    if threads <= 0 or threads > limits.max_threads_per_block:
        blocks_by["threads"] = 0
    else:
        blocks_by["threads"] = limits.max_warps_per_sm // warps_per_block
    if registers > limits.max_registers_per_thread or (
            registers_per_warp * _round_up(warps_per_block, limits.sub_partitions) > limits.registers_per_sm):
        blocks_by["registers"] = 0
    elif registers_per_warp == 0 or warps_per_block == 0:
        blocks_by["registers"] = None       # no limit
    else:
        per_partition = limits.registers_per_sm // limits.sub_partitions // registers_per_warp
        blocks_by["registers"] = per_partition * limits.sub_partitions // warps_per_block
    if smem > limits.smem_per_block:
        blocks_by["shared memory"] = 0
    elif smem_allocated == 0:
        blocks_by["shared memory"] = None   # no limit
    else:
        blocks_by["shared memory"] = limits.smem_per_sm // smem_allocated

    blocks = min(n for n in blocks_by.values() if n is not None)
    limited_by = tuple(name for name in LIMITS if blocks_by[name] == blocks)
    warps = blocks * warps_per_block
    return Occupancy(limits.name, blocks, warps, limits.max_warps_per_sm, warps / limits.max_warps_per_sm,
                     limited_by, {name: blocks_by[name] for name in LIMITS}, smem_allocated, registers_per_warp)


# ------------------------------------------------------------------------------------- SASS text ---


@dataclass(frozen=True)
class Instruction:
    """One SASS instruction as nvdisasm (or cuobjdump -sass) prints it:
    ``/*0cc0*/  @!P0 LDS.64 R4, [R53+UR11+0x40] ;``."""
    offset: int                # byte offset in the function
    opcode: str                # with its modifiers: "LDS.64", "FFMA.FTZ", "BAR.SYNC.DEFER_BLOCKING"
    operands: tuple            # as printed: ("R4", "[R53+UR11+0x40]")
    predicate: str | None = None   # "P0", "!P0", "!PT", ... (without the @)
    labels: tuple = ()             # labels on this instruction: (".L_x_37",)

    @property
    def base(self) -> str:
        """The opcode without modifiers: "LDS" for "LDS.64"."""
        return self.opcode.split(".", 1)[0]

    @property
    def modifiers(self) -> tuple:
        return tuple(self.opcode.split(".")[1:])

    @property
    def never_executes(self) -> bool:
        """``@!PT`` (and ``@!UPT``) instructions never execute: ptxas places such placeholders (``@!PT LDS``
        before cp.async groups, for instance); they are left out of every count."""
        return self.predicate in ("!PT", "!UPT")

    @property
    def target(self) -> str | None:
        """The branch target of BRA: a label (nvdisasm) or an address "0x4510" (cuobjdump)."""
        if self.base not in BRANCH_OPCODES or not self.operands:
            return None
        match = re.search(r"`\(([^)]+)\)|(0x[0-9a-fA-F]+)", self.operands[-1])
        return (match.group(1) or match.group(2)) if match else None


BRANCH_OPCODES = frozenset({"BRA"})

_FUNCTION_TYPE = re.compile(r"^\s*\.type\s+([^,\s]+)\s*,\s*@function")
_CUOBJDUMP_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")
_LABEL = re.compile(r"^\s*([.$A-Za-z_][\w.$]*):\s*$")
_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-fA-F]+)\*/\s*(.*)$")
_PREDICATE = re.compile(r"^@(!?U?P(?:T|\d+))\s+")
_OPCODE = re.compile(r"^([A-Z][A-Z0-9_]*(?:\.[A-Za-z0-9_]+)*)\s*(.*)$")


def _split_operands(text: str) -> tuple:
    """Split at the commas outside brackets: "R4, desc[UR4][R2.64], `(.L_x_1)"."""
    operands, depth, current = [], 0, []
    for char in text:
        if char in "[({":
            depth += 1
        elif char in "])}":
            depth -= 1
        if char == "," and depth == 0:
            operands.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if "".join(current).strip():
        operands.append("".join(current).strip())
    return tuple(operands)


def parse_instruction(body: str, offset: int = 0, labels: tuple = ()) -> Instruction | None:
    """One instruction from the text after its ``/*offset*/``; None for data or an empty line."""
    body = re.sub(r"/\*.*?\*/", "", body).strip()       # cuobjdump's encoding comments
    body = body.strip("{} \t").rstrip(";").strip()       # VLIW braces, the closing ;
    predicate = None
    match = _PREDICATE.match(body)
    if match:
        predicate, body = match.group(1), body[match.end():]
    match = _OPCODE.match(body)
    if not match:
        return None
    return Instruction(offset, match.group(1), _split_operands(match.group(2).strip().rstrip(";").strip()),
                       predicate, labels)


def parse_sass(text: str) -> dict:
    """Function name -> [Instruction] from nvdisasm's or cuobjdump's output.

    nvdisasm names a function with ``.type NAME,@function`` then the label ``NAME:``; cuobjdump with
    ``Function : NAME``. Labels (``.L_x_37:``) attach to the next instruction. Instructions before any
    function header (a snippet) go to the function "".
    """
    functions: dict[str, list] = {}
    declared: set[str] = set()
    current, pending = None, []
    for line in text.splitlines():
        if m := _FUNCTION_TYPE.match(line):
            declared.add(m.group(1))
            continue
        if m := _CUOBJDUMP_FUNCTION.match(line):
            current, pending = m.group(1), []
            functions.setdefault(current, [])
            continue
        if m := _LABEL.match(line):
            if m.group(1) in declared:
                current, pending = m.group(1), []
                functions.setdefault(current, [])
            elif not m.group(1).startswith(".text."):
                pending.append(m.group(1))
            continue
        m = _INSTRUCTION.match(line)
        if not m or m.group(2).lstrip().startswith("."):   # "/*0000*/ .byte 0x..." is data
            continue
        instruction = parse_instruction(m.group(2), int(m.group(1), 16), tuple(pending))
        if instruction is None:
            continue
        pending = []
        functions.setdefault("" if current is None else current, []).append(instruction)
    return functions


# --------------------------------------------------------------------------- instruction classes ---

#: Floating-point FMA instructions on the SIMT datapath.
FMA_OPCODES = frozenset({"FFMA", "FFMA2", "DFMA", "HFMA2", "FFMA32I", "HFMA2_32I"})
#: Tensor-core instructions (mma.sync, wgmma, tcgen05).
TENSOR_OPCODES = frozenset({"HMMA", "IMMA", "DMMA", "BMMA", "HGMMA", "IGMMA", "QGMMA", "BGMMA",
                            "UTCHMMA", "UTCIMMA", "UTCQMMA", "UTCOMMA", "UTCBMMA"})
#: Integer and address arithmetic: index computation, compares, conversions, selects and moves. These
#: are what a GEMM loop spends on anything but math; they share the issue slots with the FMAs (and
#: I2F/F2I run at quarter rate). Uniform-datapath opcodes (U...) are counted apart, whatever they do.
INTEGER_OPCODES = frozenset({
    "IMAD", "IMUL", "IADD", "IADD3", "IADD32I", "VIADD", "IABS", "IMNMX", "VIMNMX", "VIMNMX3", "VIADDMNMX",
    "ISCADD", "LEA", "SHF", "SHL", "SHR", "LOP", "LOP3", "LOP32I", "ISETP", "ICMP", "PLOP3",
    "I2F", "I2FP", "F2I", "F2IP", "I2I", "I2IP", "SEL", "PRMT", "POPC", "FLO", "BREV", "BMSK", "SGXT",
    "MOV", "MOV32I", "CS2R", "P2R", "R2P"})
SHARED_LOAD_OPCODES = frozenset({"LDS", "LDSM"})
GLOBAL_LOAD_OPCODES = frozenset({"LDG", "LD"})     # LD: a generic load, global memory in our kernels
BARRIER_OPCODES = frozenset({"BAR"})
#: Instructions that write no register through their first operand (stores, control flow, fences).
_NO_REGISTER_DESTINATION = frozenset({
    "ST", "STS", "STG", "STL", "STAS", "RED", "REDG", "BRA", "BRX", "JMP", "JMX", "CALL", "RET", "EXIT",
    "BAR", "BSSY", "BSYNC", "WARPSYNC", "NOP", "DEPBAR", "LDGSTS", "LDGDEPBAR", "MEMBAR", "FENCE", "ERRBAR",
    "CCTL", "CCTLL", "YIELD", "BPT", "KILL", "BREAK", "SYNCS", "UTMALDG", "UTMASTG", "UBLKCP"})
#: Memory instructions whose register operands are all read: an address and the data stored.
_STORE_OPCODES = frozenset({"ST", "STS", "STG", "STL", "STAS", "RED", "REDG"})
_ATOMIC_OPCODES = frozenset({"ATOM", "ATOMS", "ATOMG"})    # write the old value, read address and data


def is_move_idiom(ins: Instruction) -> bool:
    """``HFMA2.MMA R4, -RZ, RZ, 0, 0`` is how ptxas writes a constant into a register on the FMA pipe's
    spare slot: a move, not arithmetic."""
    return ins.base == "HFMA2" and len(ins.operands) >= 3 and all(
        op.lstrip("-|").rstrip("|").split(".")[0] == "RZ" for op in ins.operands[1:3])


def instruction_class(ins: Instruction) -> str:
    """"fma", "tensor", "shared_load", "global_load", "barrier", "uniform", "integer" or "other"."""
    base = ins.base
    if base in TENSOR_OPCODES:
        return "tensor"
    if base in FMA_OPCODES and not is_move_idiom(ins):
        return "fma"
    if base in SHARED_LOAD_OPCODES:
        return "shared_load"
    if base in GLOBAL_LOAD_OPCODES:
        return "global_load"
    if base in BARRIER_OPCODES:
        return "barrier"
    if base.startswith("U"):
        return "uniform"
    if base in INTEGER_OPCODES or is_move_idiom(ins):
        return "integer"
    return "other"


def counted(instructions) -> list:
    """What executes: without ``@!PT`` placeholders and NOPs."""
    return [ins for ins in instructions if not ins.never_executes and ins.base != "NOP"]


# ---------------------------------------------------------------------------------- registers ---

_REGISTER = re.compile(r"(?<![\w.])R(\d+)((?:\.[A-Za-z0-9_]+)*)")


def _access_width(ins: Instruction) -> int:
    """Registers per value a memory instruction moves: 2 for .64, 4 for .128, else 1."""
    return 4 if "128" in ins.modifiers else 2 if "64" in ins.modifiers else 1


def _operand_registers(operand: str, width: int = 1) -> set:
    """The registers an operand names: "R4" -> {4}; "R4.64", "[R4.64+0x10]" -> {4, 5}; "-|R4|",
    "R4.reuse", "R4.H1" -> {4}; "RZ" -> {}. ``width`` applies to a bare register (a pair for DFMA)."""
    registers = set()
    for match in _REGISTER.finditer(operand):
        first, suffixes = int(match.group(1)), match.group(2).split(".")
        inside_brackets = operand[:match.start()].count("[") > operand[:match.start()].count("]")
        n = 2 if "64" in suffixes else 4 if "128" in suffixes else (1 if inside_brackets else width)
        registers.update(range(first, first + n))
    return registers


def _value_width(ins: Instruction) -> int:
    """Registers per (non-address) register operand of an instruction."""
    if ins.base in ("DFMA", "DADD", "DMUL", "DSETP", "DMNMX"):
        return 2
    if ins.base in TENSOR_OPCODES:
        return 4    # a fragment spans several registers; 4 over-approximates the smaller ones
    return 1


def written_registers(ins: Instruction) -> set:
    """The general registers an instruction writes: its first operand, when that is a register and the
    opcode has a destination (LDG.E.128 R4 writes R4..R7, IMAD.WIDE R4 writes R4..R5)."""
    if (ins.base in _NO_REGISTER_DESTINATION or ins.base in _STORE_OPCODES or not ins.operands
            or not re.match(r"^R\d+", ins.operands[0])):
        return set()
    if ins.base.startswith("LD") or ins.base in _ATOMIC_OPCODES:
        width = _access_width(ins)
    elif "WIDE" in ins.modifiers or (ins.base in ("I2F", "F2F") and "F64" in ins.modifiers):
        width = 2
    else:
        width = _value_width(ins)
    return _operand_registers(ins.operands[0], width)


def read_registers(ins: Instruction) -> set:
    """The general registers an instruction reads: every register operand but the destination, with
    register pairs and quads where the opcode implies them (STG.E.128 data, DFMA sources, [R2.64])."""
    operands = ins.operands[1:] if written_registers(ins) else ins.operands
    if ins.base in _STORE_OPCODES or ins.base in _ATOMIC_OPCODES:
        width = _access_width(ins)
    else:
        width = _value_width(ins)
    registers = set()
    for operand in operands:
        registers |= _operand_registers(operand, width)
    return registers


# -------------------------------------------------------------------------------------- loops ---


@dataclass(frozen=True)
class Loop:
    start: int        # index of the first instruction of the body (the branch target)
    end: int          # index of the last backward branch to it
    label: str        # the label or address of the loop head

    def body(self, instructions) -> list:
        return list(instructions[self.start:self.end + 1])


def find_loops(instructions) -> list:
    """Loops of one function: a backward ``BRA`` to an earlier instruction closes a loop from its target
    to the branch (the last such branch when several jump back to one head). The ``BRA``-to-itself that
    ends every function is padding, not a loop."""
    by_label, by_offset = {}, {}
    for index, ins in enumerate(instructions):
        by_offset[ins.offset] = index
        for label in ins.labels:
            by_label[label] = index
    heads: dict[int, tuple] = {}
    for index, ins in enumerate(instructions):
        target = ins.target
        if target is None or ins.never_executes:
            continue
        head = by_label.get(target, by_offset.get(int(target, 16)) if target.startswith("0x") else None)
        if head is None or head >= index:
            continue
        end = max(index, heads.get(head, (index, target))[0])
        heads[head] = (end, target)
    return sorted((Loop(head, end, label) for head, (end, label) in heads.items()), key=lambda loop: loop.start)


# ------------------------------------------------------------------------------ the main loop ---


@dataclass
class LoopStats:
    """The instruction mix of one loop body (one iteration, static counts, ``@!PT`` and NOP left out)."""
    label: str
    start_offset: int
    end_offset: int
    instructions: int
    fma: int                       # FFMA / DFMA / HFMA2 (not the HFMA2.MMA move idiom)
    tensor: int                    # HMMA / IMMA / ... (tensor cores)
    shared_loads: dict             # opcode with width modifiers -> count: {"LDS": 8, "LDS.128": 4}
    shared_stores: int
    integer: int                   # INTEGER_OPCODES
    uniform: int                   # U... opcodes
    barriers: int
    global_loads: int              # LDG / LD
    async_copies: int              # LDGSTS (cp.async): global -> shared without registers
    async_copy_widths: dict        # bits per LDGSTS -> count: {128: 8} (LDGSTS.E.BYPASS.128: 16 bytes)
    ldmatrix_x4: int               # LDSM ... .4 (ldmatrix .x4: four 8x8 matrices of 16-bit elements)
    wide_shared_loads: int         # LDS.128: 16 bytes per lane, as ldmatrix.x4 (TF32 fragments across rows)
    scalar_shared_loads: int       # LDS narrower than 128 bits
    local_accesses: int            # LDL / STL: spills or stack arrays
    calls: int                     # CALL: a subroutine (64-bit division, say) inside the loop
    exposed_global_round_trips: int
    hidden_global_loads: int
    opcodes: dict = field(default_factory=dict)   # full opcode -> count

    @property
    def shared_load_count(self) -> int:
        return sum(self.shared_loads.values())

    def _share(self, count: int) -> float:
        return count / self.instructions if self.instructions else 0.0

    @property
    def fma_share(self) -> float:
        return self._share(self.fma)

    @property
    def tensor_share(self) -> float:
        return self._share(self.tensor)

    @property
    def integer_share(self) -> float:
        return self._share(self.integer)

    @property
    def uniform_share(self) -> float:
        return self._share(self.uniform)

    @property
    def fma_per_shared_load(self) -> float | None:
        loads = self.shared_load_count
        return (self.fma + self.tensor) / loads if loads else None

    @property
    def barriers_per_fma(self) -> float | None:
        math = self.fma + self.tensor
        return self.barriers / math if math else None

    @property
    def tensor_per_ldmatrix(self) -> float | None:
        """Tensor-core instructions per 16-byte-per-lane fragment load, ldmatrix.x4 or LDS.128 (which TF32 wgrad
        uses: ldmatrix.trans moves 16-bit elements): what a fragment load buys (4 for a 64x64 warp tile)."""
        loads = self.ldmatrix_x4 + self.wide_shared_loads
        return self.tensor / loads if loads else None

    def to_dict(self) -> dict:
        data = asdict(self)
        for name in ("shared_load_count", "fma_share", "tensor_share", "integer_share", "uniform_share",
                     "fma_per_shared_load", "barriers_per_fma", "tensor_per_ldmatrix"):
            data[name] = getattr(self, name)
        return data


def global_round_trips(body) -> tuple:
    """(exposed round trips, hidden loads) of one iteration of a loop body.

    Walks the body in order, tracking the destination registers of global loads in flight. The first
    instruction that reads one is where the warp waits for memory:

    * if no FMA-type instruction issued between the load and that use, nothing covered the latency: an
      *exposed* round trip. Every other load in flight at that point was issued earlier and arrives
      during the same wait, so they are retired with it (LDG; LDG; use; use is one round trip);
    * otherwise the load is *hidden* (its latency overlapped math).

    Loads still in flight at the backward branch (prefetches for the next iteration) are followed into
    the next iteration, from the top of the body.
    """
    in_flight: dict[int, int] = {}     # register -> load id
    covered: dict[int, bool] = {}      # load id -> an FMA issued since it
    exposed = hidden = 0

    def step(ins, issue_loads: bool):
        nonlocal exposed, hidden
        waiting = {in_flight[r] for r in read_registers(ins) if r in in_flight}
        if waiting:
            if not all(covered[load] for load in waiting):
                exposed += 1
                hidden += sum(1 for load in set(in_flight.values()) - waiting if covered[load])
                in_flight.clear()
            else:
                hidden += len(waiting)
                for register in [r for r, load in in_flight.items() if load in waiting]:
                    del in_flight[register]
        if instruction_class(ins) in ("fma", "tensor"):
            for load in covered:
                covered[load] = True
        if issue_loads and ins.base in GLOBAL_LOAD_OPCODES:
            load = len(covered)
            covered[load] = False
            for register in written_registers(ins):
                in_flight[register] = load

    for ins in body:
        step(ins, True)
    for ins in body:                   # the next iteration, for loads still in flight
        if not in_flight:
            break
        step(ins, False)
    return exposed, hidden


def _copy_bits(ins: Instruction) -> int:
    """The width of one LDGSTS in bits: its .32/.64/.128 modifier (LDGSTS.E.BYPASS.LTC128B.128: 128 -- the
    last width modifier, not the L2 sector hint)."""
    widths = [int(m) for m in ins.modifiers if m in ("32", "64", "128")]
    return widths[-1] if widths else 32


def loop_stats(body, label: str = "") -> LoopStats:
    """The instruction mix of one loop body (a list of Instruction)."""
    body = counted(body)
    classes = Counter(instruction_class(ins) for ins in body)
    shared_loads = Counter(ins.opcode for ins in body if ins.base in SHARED_LOAD_OPCODES)
    exposed, hidden = global_round_trips(body)
    return LoopStats(
        label=label,
        start_offset=body[0].offset if body else 0,
        end_offset=body[-1].offset if body else 0,
        instructions=len(body),
        fma=classes["fma"],
        tensor=classes["tensor"],
        shared_loads=dict(sorted(shared_loads.items())),
        shared_stores=sum(1 for ins in body if ins.base == "STS"),
        integer=classes["integer"],
        uniform=classes["uniform"],
        barriers=classes["barrier"],
        global_loads=classes["global_load"],
        async_copies=sum(1 for ins in body if ins.base == "LDGSTS"),
        async_copy_widths=dict(sorted(Counter(_copy_bits(ins) for ins in body if ins.base == "LDGSTS").items())),
        ldmatrix_x4=sum(1 for ins in body if ins.base == "LDSM" and "4" in ins.modifiers),
        wide_shared_loads=sum(1 for ins in body if ins.base == "LDS" and "128" in ins.modifiers),
        scalar_shared_loads=sum(1 for ins in body if ins.base == "LDS" and "128" not in ins.modifiers),
        local_accesses=sum(1 for ins in body if ins.base in ("LDL", "STL")),
        calls=sum(1 for ins in body if ins.base == "CALL"),
        exposed_global_round_trips=exposed,
        hidden_global_loads=hidden,
        opcodes=dict(Counter(ins.opcode for ins in body).most_common()),
    )


def main_loop_stats(instructions) -> LoopStats | None:
    """The stats of the main loop of one function: the loop with the most FMA-type instructions (the
    innermost of equals; with no FMA anywhere, the largest loop). None when the function has no loop."""
    candidates = []
    for loop in find_loops(instructions):
        stats = loop_stats(loop.body(instructions), loop.label)
        math = stats.fma + stats.tensor
        candidates.append(((math, -stats.instructions if math else stats.instructions), stats))
    return max(candidates, key=lambda c: c[0])[1] if candidates else None


# ------------------------------------------------------------------------------- disassembly ---

PIP_DISASSEMBLER = "pip install nvidia-cuda-nvdisasm"


def find_disassembler(name: str) -> str | None:
    """Path of nvdisasm / cuobjdump: on PATH, from the PyPI wheels (site-packages/nvidia/cu13/bin for
    nvidia-cuda-nvdisasm / nvidia-cuda-cuobjdump 13.x) or a CUDA toolkit."""
    from . import loader
    return loader.find_cuda_tool(name)


def disassemble(cubin: bytes) -> tuple:
    """(SASS text, path of the tool that produced it, None), or (None, None, why not): nvdisasm first,
    ``cuobjdump -sass`` when nvdisasm is missing or fails (an older one may not know the architecture)."""
    tools = [(find_disassembler("nvdisasm"), ["-c"]), (find_disassembler("cuobjdump"), ["-sass"])]
    if not any(tool for tool, _ in tools):
        return None, None, f"nvdisasm not found ({PIP_DISASSEMBLER})"
    failures = []
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "kernel.cubin"
        path.write_bytes(cubin)
        for tool, options in tools:
            if tool is None:
                continue
            run = subprocess.run([tool, *options, str(path)], capture_output=True, text=True)
            if run.returncode == 0 and "/*0000*/" in run.stdout:
                return run.stdout, tool, None
            message = (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[0]
            failures.append(f"{Path(tool).name}: {message}")
    return None, None, "; ".join(failures)


# -------------------------------------------------------------------------------- the report ---


@dataclass
class VariantReport:
    variant: str
    op: str                        # fprop / dgrad / wgrad, or the elementwise kernel's name
    kernel: str
    dtype: str
    arch: str
    threads: int
    stages: int | None = None          # the pipeline's shared-memory stages (registry), for tiled kernels
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    stack_bytes: int | None = None
    static_smem: int | None = None     # ptxas
    dynamic_smem: int = 0              # registry
    occupancy: Occupancy | None = None
    main_loop: LoopStats | None = None
    disassembler: str | None = None
    note: str = ""                     # why something is missing
    error: str = ""                    # a compile error
    cubin: bytes = field(default=b"", repr=False)
    sass: str = field(default="", repr=False)

    @property
    def spill_bytes(self) -> int | None:
        if self.spill_stores is None and self.spill_loads is None:
            return None
        return (self.spill_stores or 0) + (self.spill_loads or 0)

    def to_dict(self) -> dict:
        data = {name: getattr(self, name) for name in (
            "variant", "op", "kernel", "dtype", "arch", "threads", "stages", "registers", "spill_stores",
            "spill_loads",
            "spill_bytes", "stack_bytes", "static_smem", "dynamic_smem", "disassembler", "note", "error")}
        data["occupancy"] = asdict(self.occupancy) if self.occupancy else None
        data["main_loop"] = self.main_loop.to_dict() if self.main_loop else None
        return data


def variant_report(variant, dtype="float32", arch: str = "sm_90") -> VariantReport:
    """Compile one variant for ``dtype`` and ``arch`` with NVRTC, disassemble it and analyse it.
    A compile error is reported in ``.error``, not raised (a report over every variant goes on)."""
    from . import loader, registry

    variant = registry.get(variant) if isinstance(variant, str) else variant
    dtype = np.dtype(dtype)
    report = VariantReport(variant.name, variant.op, variant.kernel_name(dtype), str(dtype), arch,
                           variant.threads, stages=variant.tile.stages if variant.tile else None,
                           dynamic_smem=variant.dynamic_shared_bytes)
    try:
        compiled = loader.compile_variant(variant, dtype, arch)
    except loader.KernelCompileError as exc:
        report.error = str(exc)
        return report
    report.cubin = compiled.cubin
    resources = compiled.kernels.get(report.kernel)
    if resources is not None:
        report.registers, report.stack_bytes = resources.registers, resources.stack_bytes
        report.spill_stores, report.spill_loads = resources.spill_stores, resources.spill_loads
        report.static_smem = resources.shared_bytes
    if report.static_smem is None:
        report.static_smem = variant.static_shared_bytes(dtype)
    if report.registers is not None:
        report.occupancy = occupancy(arch, report.registers, variant.threads, report.static_smem,
                                     variant.dynamic_shared_bytes)
    else:
        report.note = "ptxas reported no register count"

    sass, tool, why_not = disassemble(compiled.cubin)
    if sass is None:
        report.note = f"no instruction mix: {why_not}"
        return report
    report.sass, report.disassembler = sass, Path(tool).name
    instructions = parse_sass(sass).get(report.kernel)
    if not instructions:
        report.note = f"{report.kernel} not found in the {report.disassembler} output"
        return report
    report.main_loop = main_loop_stats(instructions)
    if report.main_loop is None:
        report.note = "no loop"
    return report


# --------------------------------------------------------------------------------- the table ---

_LIMIT_NAMES = {"registers": "regs", "shared memory": "smem", "threads": "threads", "blocks": "blocks"}

LEGEND = """\
regs     registers per thread (ptxas)                  spill    spill stores + loads, bytes (ptxas)
smem     static shared memory per block, B (ptxas)     dyn      dynamic shared memory per block, B (registry)
thr      threads per block
occ      theoretical occupancy: active warps / max warps per SM (blocks per SM); limit: the resource that
         caps it (regs, smem -- static + dynamic + 1 KiB reserved from sm_80 --, threads, blocks per SM)
The rest describes one iteration of the MAIN LOOP (the loop with the most FMA-type instructions), static
counts over its body, @!PT placeholders and NOPs left out:
instr    instructions in the loop body                 FMA%     FFMA/DFMA/HFMA2 share of them
MMA%     tensor-core (HMMA/IMMA/...) share             FMA/LDS  FMA-type instructions per shared-memory load
int%     integer/address share (IMAD, IADD3, LEA, SHF, LOP3, ISETP, I2F/F2I, SEL, MOV, ...: INTEGER_OPCODES)
uni%     uniform-datapath share (UMOV, UIADD3, ULDC, ...): they take issue slots too
BAR/FMA  barriers per FMA-type instruction             LDG      global loads
expRT    exposed global-load round trips per iteration: waits on a global load with no FMA issued
         between the load and its first use (its latency is not covered by math)
CALL     subroutine calls in the loop (ptxas' 64-bit integer division, float division slow path, ...)
MMA/LDSM tensor-core instructions per 16-byte fragment load: ldmatrix.x4 (LDSM ... .4), or LDS.128 (TF32 wgrad)
LDGSTS   cp.async copies (global -> shared) by width in bits: 128b:8 is eight 16-byte copies
stg      shared-memory pipeline stages of the variant's tile (registry)
LDS      shared-memory loads by width (LDS = 32-bit, LDS.64, LDS.128, LDS.U16, LDSM = ldmatrix;
         sm_75 prints the 32-bit load as LDS.U); an ldmatrix kernel should show LDSM only (TF32 wgrad:
         LDS.128 only)"""


def _percent(value: float) -> str:
    return f"{100 * value:.0f}%"


def _row(report: VariantReport) -> list:
    cells = [report.variant]
    if report.error:
        return cells + ["compile error: " + report.error.splitlines()[0]]
    occ = report.occupancy
    cells += [
        "?" if report.registers is None else str(report.registers),
        "?" if report.spill_bytes is None else str(report.spill_bytes),
        "?" if report.static_smem is None else str(report.static_smem),
        str(report.dynamic_smem),
        str(report.threads),
        f"{occ.active_warps}/{occ.max_warps} {_percent(occ.occupancy)} ({occ.blocks_per_sm})" if occ else "?",
        "+".join(_LIMIT_NAMES[name] for name in occ.limited_by) if occ else "?",
    ]
    loop = report.main_loop
    if loop is None:
        return cells + [report.note or "-"]
    ratio = loop.fma_per_shared_load
    barriers = loop.barriers_per_fma
    per_ldsm = loop.tensor_per_ldmatrix
    cells += [
        str(loop.instructions), _percent(loop.fma_share), _percent(loop.tensor_share),
        "-" if ratio is None else f"{ratio:.1f}",
        "-" if per_ldsm is None else f"{per_ldsm:.1f}",
        _percent(loop.integer_share), _percent(loop.uniform_share),
        "-" if barriers is None else f"{barriers:.3f}",
        str(loop.global_loads), str(loop.exposed_global_round_trips), str(loop.calls),
        " ".join(f"{bits}b:{n}" for bits, n in loop.async_copy_widths.items()) or "-",
        "-" if report.stages is None else str(report.stages),
        " ".join(f"{op}:{n}" for op, n in loop.shared_loads.items()) or "-",
    ]
    return cells


HEADER = ["variant", "regs", "spill", "smem", "dyn", "thr", "occ (blocks)", "limit",
          "instr", "FMA%", "MMA%", "FMA/LDS", "MMA/LDSM", "int%", "uni%", "BAR/FMA", "LDG", "expRT", "CALL",
          "LDGSTS", "stg", "LDS"]


def format_table(rows) -> str:
    """An aligned text table of VariantReports (one row each); numbers right-aligned."""
    table = [HEADER] + [_row(r) for r in rows]
    widths = [0] * len(HEADER)
    for row in table:
        for i, cell in enumerate(row):
            if len(row) == len(HEADER) or i < len(row) - 1:   # a short row's last cell is a note
                widths[i] = max(widths[i], len(cell))
    lines = []
    for row in table:
        cells = []
        for i, cell in enumerate(row):
            last = i == len(row) - 1
            if last and len(row) < len(HEADER):   # a note that runs over the remaining columns
                cells.append(cell)
            elif i == 0 or i == len(HEADER) - 1:
                cells.append(cell if last else cell.ljust(widths[i]))
            else:
                cells.append(cell.rjust(widths[i]))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def describe_arch(arch: str) -> str:
    a = arch_limits(arch)
    reserved = f"{a.smem_reserved_per_block // KIB} KiB reserved per block" if a.smem_reserved_per_block else \
        "none reserved"
    return (f"{a.name}: {a.max_warps_per_sm} warps ({a.max_threads_per_sm} threads) and {a.max_blocks_per_sm} blocks "
            f"per SM; {a.registers_per_sm} registers per SM, allocated per warp in units of "
            f"{a.register_granularity}, at most {a.max_registers_per_thread} per thread; shared memory "
            f"{a.smem_per_sm // KIB} KiB per SM, at most {a.smem_per_block // KIB} KiB per block, {reserved}")


# ----------------------------------------------------------------------------------------- CLI ---


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m gpuconv.cuda.report",
        description="Compile gpuconv's kernel variants with NVRTC (no GPU needed) and report their registers, "
                    "shared memory, occupancy and the instruction mix of their main loop.")
    parser.add_argument("--arch", default="sm_90", help=f"target architecture ({', '.join(ARCHS)}; default sm_90)")
    parser.add_argument("--variant", action="extend", nargs="+", metavar="NAME",
                        help="report only these variants (default: every registered variant)")
    parser.add_argument("--dtype", default="float32",
                        help="float16, bfloat16, float32 or float64 (default float32; TF32 variants: float32)")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--emit-cubin", metavar="DIR", help="write <kernel>.cubin and <kernel>.sass per variant")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    from . import loader, registry

    try:
        arch_limits(args.arch)
        variants = [registry.get(name) for name in args.variant] if args.variant else list(registry.VARIANTS)
        dtype = np.dtype(args.dtype)
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        version = "%d.%d" % loader.nvrtc_version()
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    started = time.perf_counter()
    reports, skipped = [], []
    for variant in variants:
        if dtype not in variant.dtypes:
            skipped.append(f"{variant.name}: no {dtype} instantiation")
        elif compute_capability(args.arch) < variant.min_compute_capability:
            skipped.append(f"{variant.name}: needs compute capability {variant.min_compute_capability}")
        else:
            reports.append(variant_report(variant, dtype, args.arch))
    elapsed = time.perf_counter() - started

    tool = next((r.disassembler for r in reports if r.disassembler), None)
    print(f"gpuconv kernel report: {args.arch}, {dtype}, NVRTC {version}, "
          f"disassembler: {tool or 'none'} ({len(reports)} variants in {elapsed:.1f} s)")
    print(describe_arch(args.arch))
    print()
    print(format_table(reports))
    print()
    print(LEGEND)
    if (reports and tool is None and not all(r.error for r in reports)
            and find_disassembler("nvdisasm") is None and find_disassembler("cuobjdump") is None):
        print(f"\nThe instruction mix needs nvdisasm (or cuobjdump), which was not found: {PIP_DISASSEMBLER}")
    for line in skipped:
        print(f"skipped {line}")

    if args.json:
        document = {"arch": args.arch, "arch_limits": asdict(arch_limits(args.arch)), "dtype": str(dtype),
                    "nvrtc_version": version, "disassembler": tool,
                    "variants": [r.to_dict() for r in reports], "skipped": skipped}
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if args.emit_cubin:
        directory = Path(args.emit_cubin)
        directory.mkdir(parents=True, exist_ok=True)
        for r in reports:
            if r.cubin:
                (directory / f"{r.kernel}.cubin").write_bytes(r.cubin)
            if r.sass:
                (directory / f"{r.kernel}.sass").write_text(r.sass, encoding="utf-8")
    return 1 if any(r.error for r in reports) else 0


__all__ = ["ArchLimits", "ARCHS", "arch_limits", "Occupancy", "occupancy", "Instruction", "parse_instruction",
           "parse_sass", "instruction_class", "read_registers", "written_registers", "Loop", "find_loops",
           "LoopStats", "loop_stats", "global_round_trips", "main_loop_stats", "disassemble", "VariantReport",
           "variant_report", "format_table", "LEGEND", "main"]


if __name__ == "__main__":
    sys.exit(main())
