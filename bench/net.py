"""python -m bench net: the training step of a whole network (forward + backward + optimizer step), with gpuconv's
kernels (the model after ``gpuconv.torch.convert``) against the same model on PyTorch's own convolutions
(cuDNN on a GPU, PyTorch's CPU convolution on the CPU).

Both copies start from the same weights and take the same steps on the same batch: the first step apart
(``first_step_ms``: NVRTC compilation, autotuning, cuDNN's benchmark mode and allocator growth land there),
its gradients checked against the same step of the model in float64 (``grad_max_rel_err``; PyTorch's own
float32 error is the yardstick), then warm-up steps, then timed steps taken in
turn (one of each, so that a machine slowing down or speeding up affects both alike). A step's time is its
wall time, synchronized; its phases (forward with the loss, backward, optimizer) come from CUDA events on the
stream, or ``time.perf_counter`` on the CPU. The figure is the median. Results go out as the other commands'
do: ``<out>.json``, ``<out>.md`` and ``<out>.png``.
"""
from __future__ import annotations

import copy
import datetime as _dt
import importlib.util
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import report, telemetry
from .report import _telemetry_line, _versions, fmt, md_table
from .run import RESULTS_DIR, _blas_threads, environment, resolve_device
from .timing import summarize

SCHEMA_VERSION = 1
DEFAULT_BATCH = {"cuda": 32, "cpu": 8}
DEFAULT_STEPS = {"cuda": 20, "cpu": 5}
DEFAULT_WARMUP = {"cuda": 3, "cpu": 1}
BASELINE = {"cuda": "cudnn", "cpu": "torch-cpu"}
NUM_CLASSES = 1000
#: A result is wrong when its first step's gradients are further from float64's than this many times PyTorch's
#: own float32 ones (network-level: max|g - g64| / max|g64| over all parameters). These networks' float32
#: gradients are themselves that far off: PyTorch's ResNet-18 at batch 8, 224x224, by 4.5e-3 (measured).
TOLERANCE_FACTOR = 10
#: ... and the tolerance when PyTorch's own result is missing (its step failed).
FALLBACK_TOLERANCE = 1e-2
PHASES = ("forward", "backward", "optimizer")


@dataclass
class NetConfig:
    model: str = "resnet18"
    device: str = "auto"          # "cuda", "cpu" or "auto"
    batch: int | None = None      # default: DEFAULT_BATCH[device]
    size: int = 224               # input height and width
    steps: int | None = None      # timed steps per implementation (default: DEFAULT_STEPS[device])
    warmup: int | None = None     # untimed steps after the first (default: DEFAULT_WARMUP[device])
    algo: str = "auto"            # gpuconv's algo for every convolution
    lr: float = 0.01              # SGD, momentum 0.9
    threads: int | None = None    # CPU: PyTorch's threads and NumPy's BLAS threads (default: the usable cores)
    check: bool = True            # check the first step's gradients against float64
    torchvision: bool = True      # torchvision's model where it imports
    seed: int = 0


# ------------------------------------------------------------------ timing ---

class _Clock:
    """One step's wall time (synchronized) and its phases: CUDA events on the current stream, else
    perf_counter."""

    def __init__(self, torch, device: str):
        self.torch, self.cuda = torch, device == "cuda"

    def start(self):
        if self.cuda:
            self.torch.cuda.synchronize()
        self._wall = time.perf_counter()
        self._marks = [self._mark()]

    def _mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = self.torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def mark(self):
        self._marks.append(self._mark())

    def stop(self) -> tuple:
        """(wall ms, [ms per phase])."""
        if self.cuda:
            self.torch.cuda.synchronize()
        wall = (time.perf_counter() - self._wall) * 1e3
        pairs = zip(self._marks, self._marks[1:])
        if self.cuda:
            return wall, [a.elapsed_time(b) for a, b in pairs]
        return wall, [(b - a) * 1e3 for a, b in pairs]


def _step(torch, model, opt, x, y, clock) -> tuple:
    """One training step; (loss, wall ms, [ms per phase])."""
    clock.start()
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    clock.mark()
    loss.backward()
    clock.mark()
    opt.step()
    clock.mark()
    wall, phases = clock.stop()
    return float(loss.detach()), wall, phases


# ------------------------------------------------------------------- model ---

def conv_flops_per_step(torch, model, batch: int, size: int) -> int:
    """FLOPs of the convolutions in one training step: each one's fprop, dgrad and wgrad (3 x 2 x MACs),
    found by a forward on PyTorch's meta device (nothing computed)."""
    from gpuconv import ConvGeometry

    total = [0]

    def hook(m, args, out):
        g = ConvGeometry.create(tuple(args[0].shape), tuple(m.weight.shape), m.stride, m.padding, m.dilation,
                                m.groups)
        total[0] += 3 * g.flops()
    meta = copy.deepcopy(model).to("meta").eval()  # eval: BatchNorm needs no batch statistics
    for m in meta.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(hook)
    meta(torch.empty(batch, 3, size, size, device="meta"))
    return total[0]


def _impls(device: str, algo: str) -> list:
    """(name, role, settings) of what is timed: gpuconv after convert, and the baseline."""
    baseline = {"cudnn_benchmark": True} if device == "cuda" else {}
    return [("gpuconv", "gpuconv", {"algo": algo}), (BASELINE[device], "baseline", baseline)]


def _prepare_torch(torch, device: str, threads) -> dict:
    """Settings that apply to both copies alike: cuDNN's benchmark mode and no TF32 anywhere (gpuconv has none)
    on a GPU; one thread count for PyTorch and NumPy's BLAS on the CPU."""
    if device == "cuda":
        from .impls import set_cudnn_tf32

        torch.backends.cudnn.enabled = True
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # the classifier's GEMM, in both copies
        return {"cudnn_benchmark": True, "precision": set_cudnn_tf32(torch, False), "matmul_tf32": False}
    torch.set_num_threads(threads)
    return {"threads": threads}


# --------------------------------------------------------------------- run ---

def run_net(config: NetConfig) -> dict:
    import torch

    import gpuconv.torch as gt
    from . import networks

    if config.model not in networks.MODEL_NAMES:
        raise ValueError(f"unknown model {config.model!r}; choose one of {networks.MODEL_NAMES}")
    device = resolve_device(config.device)
    batch = config.batch or DEFAULT_BATCH[device]
    steps = DEFAULT_STEPS[device] if config.steps is None else config.steps
    warmup = DEFAULT_WARMUP[device] if config.warmup is None else config.warmup
    if batch < 1 or steps < 1 or warmup < 0 or config.size < 32:
        raise ValueError(f"need batch >= 1, steps >= 1, warmup >= 0 and size >= 32; got batch {batch}, steps "
                         f"{steps}, warmup {warmup}, size {config.size}")
    threads = (config.threads or telemetry.usable_cores()) if device == "cpu" else None
    shared_settings = _prepare_torch(torch, device, threads)
    blas_limit = _blas_threads(threads)
    before = telemetry.snapshot(device)
    warnings = telemetry.busy_warnings(before)
    for warning in warnings:
        print(f"bench: warning: {warning}", file=sys.stderr)

    torch.manual_seed(config.seed)
    base, source = networks.build(config.model, NUM_CLASSES, prefer_torchvision=config.torchvision)
    generator = torch.Generator().manual_seed(config.seed + 1)
    x = torch.randn(batch, 3, config.size, config.size, generator=generator).to(device)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=generator).to(device)
    result = {
        "schema_version": SCHEMA_VERSION, "kind": "net",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": before.get("name"), "device_kind": device, "model": config.model, "model_source": source,
        "parameters": sum(p.numel() for p in base.parameters()), "batch": batch, "input_size": config.size,
        "dtype": "float32", "optimizer": f"SGD(lr={config.lr}, momentum=0.9)",
        "conv_flops_per_step": conv_flops_per_step(torch, base, batch, config.size),
        "config": asdict(config),
        "timing": {"steps": steps, "warmup_steps": warmup, "interleaved": True,
                   "time": "wall, synchronized", "phases": "CUDA events" if device == "cuda" else "perf_counter",
                   "cpu_threads": threads},
        "settings": shared_settings, "command": sys.argv, "environment": environment(device),
        "telemetry": {"before": before, "after": None}, "warnings": warnings, "interrupted": False, "records": [],
    }
    clock = _Clock(torch, device)
    runs = []  # [record, model, optimizer, wall times, phase times]
    try:
        for name, role, settings in _impls(device, config.algo):
            rec = {"model": config.model, "impl": name, "role": role, "batch": batch, "input_size": config.size,
                   "dtype": "float32", "settings": settings, "time_ms": None, "min_ms": None, "iqr_ms": None,
                   "runs": 0, **{f"{p}_ms": None for p in PHASES}, "images_per_s": None, "conv_tflops": None,
                   "first_step_ms": None, "loss": None, "grad_max_rel_err": None, "tolerance": None,
                   "correct": None, "ratio_vs_baseline": None, "baseline": None, "error": None}
            result["records"].append(rec)
            try:
                model = copy.deepcopy(base).to(device)
                if role == "gpuconv":
                    gt.convert(model, algo=config.algo)
                opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9)
                rec["loss"], rec["first_step_ms"], _ = _step(torch, model, opt, x, y, clock)
                rec["_grads"] = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
                runs.append([rec, model, opt, [], []])
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # recorded; the other implementation still runs
                rec["error"] = f"{type(exc).__name__}: {exc}".strip()[:500]
        if config.check and runs:
            try:
                _check_gradients(result["records"], _float64_gradients(torch, base, x, y))
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # the timings still mean something
                result["check_error"] = f"{type(exc).__name__}: {exc}".strip()[:500]
        for i in range(warmup + steps):
            for run in list(runs):
                rec, model, opt, walls, phases = run
                try:
                    _, wall, phase = _step(torch, model, opt, x, y, clock)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as exc:
                    rec["error"] = f"{type(exc).__name__}: {exc}".strip()[:500]
                    runs.remove(run)
                    continue
                if i >= warmup:
                    walls.append(wall)
                    phases.append(phase)
    except KeyboardInterrupt:
        result["interrupted"] = True
        print("bench: interrupted; keeping the steps measured so far", file=sys.stderr)
    finally:
        if blas_limit is not None:
            blas_limit.restore_original_limits()
        for rec in result["records"]:
            rec.pop("_grads", None)
    for rec, _, _, walls, phases in runs:
        if walls:
            rec.update(summarize(walls))
            for k, name in enumerate(PHASES):
                rec[f"{name}_ms"] = summarize([p[k] for p in phases])["time_ms"]
            rec["images_per_s"] = batch / (rec["time_ms"] * 1e-3)
            rec["conv_tflops"] = result["conv_flops_per_step"] / (rec["time_ms"] * 1e-3) / 1e12
    _ratios(result["records"], BASELINE[device])
    result["telemetry"]["after"] = telemetry.snapshot(device)
    return result


def _float64_gradients(torch, base, x, y) -> dict:
    """The parameter gradients of the first step in float64, PyTorch's convolutions, on x's device."""
    model = copy.deepcopy(base).double().to(x.device)
    torch.nn.functional.cross_entropy(model(x.double()), y).backward()
    return {k: p.grad for k, p in model.named_parameters()}


def _check_gradients(records, reference: dict) -> None:
    """grad_max_rel_err (max|g - g64| / max|g64| over all parameters) of every first step; a gpuconv record is
    correct within TOLERANCE_FACTOR times PyTorch's own float32 error."""
    scale = max(float(g.abs().max()) for g in reference.values())
    for rec in records:
        grads = rec.get("_grads")
        if grads is not None:
            rec["grad_max_rel_err"] = max(float((grads[k].double() - reference[k]).abs().max())
                                          for k in reference) / scale
    own = next((r["grad_max_rel_err"] for r in records if r["role"] == "baseline"), None)
    tolerance = FALLBACK_TOLERANCE if own is None else TOLERANCE_FACTOR * own
    for rec in records:
        if rec["role"] == "gpuconv" and rec["grad_max_rel_err"] is not None:
            rec.update(tolerance=tolerance, correct=rec["grad_max_rel_err"] <= tolerance)


def _ratios(records, baseline: str) -> None:
    base = next((r["time_ms"] for r in records if r["impl"] == baseline and r.get("time_ms")), None)
    for rec in records:
        if base and rec.get("time_ms") and rec["impl"] != baseline:
            rec.update(ratio_vs_baseline=base / rec["time_ms"], baseline=baseline)


def default_out_prefix(result: dict) -> Path:
    """bench/results/<device>_net-<model>_b<batch>[_<size>px]_<date>."""
    slug = re.sub(r"[^a-z0-9]+", "-", (result.get("device") or result["device_kind"]).lower()).strip("-")
    stamp = _dt.datetime.fromisoformat(result["created"]).strftime("%Y%m%d-%H%M%S")
    size = "" if result["input_size"] == 224 else f"_{result['input_size']}px"
    return RESULTS_DIR / f"{slug}_net-{result['model']}_b{result['batch']}{size}_{stamp}"


# ----------------------------------------------------------------- outputs ---

def render_markdown(result: dict) -> str:
    baseline = BASELINE.get(result.get("device_kind"), "cudnn")
    env, tel, timing = result.get("environment", {}), result.get("telemetry", {}), result.get("timing", {})
    gflop = result["conv_flops_per_step"] / 1e9
    out = [f"# gpuconv benchmark: {result['model']} training step on {result.get('device')}", ""]
    out.append(md_table(["", ""], [
        ("date (UTC)", result.get("created")),
        ("device", result.get("device")),
        ("model", f"{result['model']} ({result.get('model_source')}), {result.get('parameters'):,} parameters"),
        ("input", f"{result['batch']} x 3 x {result['input_size']} x {result['input_size']}, {result['dtype']}, "
                  f"random labels of {NUM_CLASSES} classes"),
        ("step", f"forward + cross-entropy, backward, {result.get('optimizer')}; the convolutions are {gflop:.4g} "
                 f"GFLOP of it (fprop + dgrad + wgrad)"),
        ("versions", _versions(env)),
        ("OPENBLAS_CORETYPE", env.get("openblas_coretype") or "(unset: OpenBLAS detects the CPU)"),
        ("settings", ", ".join(f"{k}={v}" for k, v in result.get("settings", {}).items())),
        ("timing", f"median of {timing.get('steps')} steps per implementation, taken in turn, after the first "
                   f"and {timing.get('warmup_steps')} warm-up step(s); step: {timing.get('time')}; phases: "
                   f"{timing.get('phases')}"),
        ("telemetry before", _telemetry_line(tel.get("before"))),
        ("telemetry after", _telemetry_line(tel.get("after"))),
    ]))
    for warning in result.get("warnings", []):
        out += ["", f"**Warning: {warning}.**"]
    if result.get("check_error"):
        out += ["", f"**The float64 check failed: {result['check_error']}.**"]
    if result.get("interrupted"):
        out += ["", "**The run was interrupted: the table holds only the steps measured before.**"]
    out += ["", "## Training step", "",
            f"ms: median step time (min, IQR); phases: medians; vs {baseline}: {baseline} time / this time (> 1: "
            f"faster); grad err: the first step's max|grad - float64 grad| / max|float64 grad| over all parameters "
            f"(the same step of the model in float64 on PyTorch's convolutions; a gpuconv result is wrong beyond "
            f"{TOLERANCE_FACTOR}x {baseline}'s own).", ""]
    rows = []
    for r in result["records"]:
        status = "error" if r.get("error") else "**WRONG**" if r.get("correct") is False else ""
        rows.append((r["impl"], fmt(r.get("time_ms"), ".4g"), fmt(r.get("min_ms"), ".4g"), fmt(r.get("iqr_ms"), ".3g"),
                     *(fmt(r.get(f"{p}_ms"), ".4g") for p in PHASES), fmt(r.get("images_per_s"), ".3g"),
                     fmt(r.get("conv_tflops"), ".3g"), fmt(r.get("ratio_vs_baseline"), ".2f"),
                     fmt(r.get("first_step_ms"), ".4g"), r.get("runs") or "—", fmt(r.get("loss"), ".4f"),
                     fmt(r.get("grad_max_rel_err"), ".1e"), status))
    out.append(md_table(["impl", "ms", "min ms", "IQR ms", "forward ms", "backward ms", "optimizer ms", "images/s",
                         "conv TFLOP/s", f"vs {baseline}", "first step ms", "steps", "first loss", "grad err", ""],
                        rows))
    problems = [r for r in result["records"] if r.get("error") or r.get("correct") is False]
    if problems:
        out += ["", "## Errors and wrong results", ""]
        for r in problems:
            out.append(f"- {r['impl']}: " + (r.get("error") or f"grad err {fmt(r.get('grad_max_rel_err'), '.2e')} > "
                                                                f"tolerance {r.get('tolerance')}"))
    return "\n".join(out) + "\n"


def write_plot(result: dict, path) -> Path | None:
    """Step time per implementation, split into its phases; None (nothing written) without matplotlib or
    timings."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    records = [r for r in result["records"] if r.get("time_ms")]
    if not records:
        return None
    fig = Figure(figsize=(9, 1.6 + 0.7 * len(records)), layout="constrained")
    ax = fig.add_subplot()
    names = [r["impl"] for r in records]
    left = [0.0] * len(records)
    for phase in PHASES:
        widths = [r.get(f"{phase}_ms") or 0.0 for r in records]
        ax.barh(names, widths, left=left, label=phase)
        left = [a + b for a, b in zip(left, widths)]
    for i, r in enumerate(records):
        ratio = f" ({r['ratio_vs_baseline']:.2f}x the speed of {r['baseline']})" if r.get("ratio_vs_baseline") else ""
        ax.text(max(left[i], r["time_ms"]), i, f"  {r['time_ms']:.4g} ms{ratio}", va="center", fontsize=8)
    ax.set_xlim(0, 1.35 * max(max(left), max(r["time_ms"] for r in records)))
    ax.invert_yaxis()
    ax.set_xlabel("ms per training step (median; bars: median of each phase)")
    ax.set_title(f"{result['model']}, batch {result['batch']}, {result['input_size']}x{result['input_size']} on "
                 f"{result.get('device')}")
    ax.legend(fontsize=8, loc="lower right")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def write_outputs(result: dict, prefix) -> list:
    """<prefix>.json, <prefix>.md and, with matplotlib, <prefix>.png (the kernel runs' writer); the paths."""
    return report.write_outputs(result, prefix, markdown=render_markdown, plot=write_plot)


def add_parser(sub) -> None:
    """The ``net`` subcommand of ``python -m bench`` (no PyTorch import until it runs)."""
    n = sub.add_parser("net", help="time a whole network's training step, gpuconv's kernels against PyTorch's; "
                                   "writes <out>.json, .md and .png")
    n.add_argument("--model", default="resnet18", help="resnet18, resnet50 or mobilenet (MobileNet v1) (default: "
                                                        "resnet18)")
    n.add_argument("--batch", type=int, help="batch size (default: 32 on cuda, 8 on cpu)")
    n.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto: CUDA when usable, else the CPU (default: auto)")
    n.add_argument("--size", type=int, default=224, help="input height and width (default: 224)")
    n.add_argument("--steps", type=int, help="timed steps per implementation (default: 20 on cuda, 5 on cpu)")
    n.add_argument("--warmup", type=int, help="untimed steps after the first (default: 3 on cuda, 1 on cpu)")
    n.add_argument("--algo", default="auto", help="gpuconv's algo for every convolution (default: auto)")
    n.add_argument("--lr", type=float, default=0.01, help="SGD learning rate, momentum 0.9 (default: 0.01)")
    n.add_argument("--threads", type=int, help="CPU: PyTorch's and NumPy's BLAS threads (default: the usable cores)")
    n.add_argument("--no-check", action="store_true", help="skip the float64 check of the first step's gradients")
    n.add_argument("--no-torchvision", action="store_true",
                   help="the torch.nn definitions of bench/networks.py even where torchvision imports")
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--out", help="output path prefix (default: bench/results/<device>_net-<model>_b<batch>_<date>)")
    n.set_defaults(func=main)


def quiet_openmp(device: str) -> str | None:
    """On the CPU, OMP_WAIT_POLICY=PASSIVE (unless set) before PyTorch loads its OpenMP runtime; the value in
    force, or None when PyTorch was loaded already (then the policy it started with holds).

    Otherwise PyTorch's OpenMP threads spin for a while after each of its operations and take the cores from
    NumPy's BLAS threads, which run gpuconv's CPU convolutions next: measured on 2 cores (mobilenet, batch 2,
    64x64) 403 ms per step for gpuconv and 75 ms for PyTorch, against 57 and 50 ms with the passive policy.
    """
    if "torch" in sys.modules:
        return os.environ.get("OMP_WAIT_POLICY")
    if device == "cpu":
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ.get("OMP_WAIT_POLICY")


def main(args) -> int:
    if importlib.util.find_spec("torch") is None:
        raise ValueError("bench net needs PyTorch: pip install 'gpuconv[torch]'")
    omp_wait_policy = quiet_openmp(resolve_device(args.device))
    config = NetConfig(model=args.model, device=args.device, batch=args.batch, size=args.size, steps=args.steps,
                       warmup=args.warmup, algo=args.algo, lr=args.lr, threads=args.threads,
                       check=not args.no_check, torchvision=not args.no_torchvision, seed=args.seed)
    result = run_net(config)
    result["settings"]["omp_wait_policy"] = omp_wait_policy
    prefix = Path(args.out) if args.out else default_out_prefix(result)
    for path in write_outputs(result, prefix):
        print(f"wrote {path}")
    for r in result["records"]:
        print(f"{r['impl']}: {fmt(r.get('time_ms'), '.4g')} ms per step, {fmt(r.get('images_per_s'), '.3g')} "
              f"images/s" + (f", {r['ratio_vs_baseline']:.2f}x the speed of {r['baseline']}"
                             if r.get("ratio_vs_baseline") else "")
              + (f"; error: {r['error']}" if r.get("error") else ""))
    failed = any(r.get("error") for r in result["records"])
    return 1 if result.get("interrupted") or failed else 0


__all__ = ["NetConfig", "run_net", "conv_flops_per_step", "render_markdown", "write_plot", "write_outputs",
           "default_out_prefix", "add_parser", "main", "quiet_openmp", "TOLERANCE_FACTOR"]
