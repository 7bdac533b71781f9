"""Run a benchmark: every layer x pass x dtype x impl, checked once against float64, then timed.

``run_benchmark(RunConfig(...))`` returns the result as a plain dict (what the
JSON file holds); ``bench.report`` writes it out. A failing implementation
(unsupported dtype, out of memory, a kernel error) becomes a record with an
``error`` field, never a crash of the run.
"""
from __future__ import annotations

import datetime as _dt
import itertools
import math
import os
import platform
import re
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import gpuconv
from gpuconv._backend import cupy_module, normalize_device, require_cuda
from gpuconv.suites import load_suite

from . import telemetry
from .flops import PASSES, check_pass, pass_metrics, roofline_tflops
from .impls import (DTYPES as NUMPY_DTYPES, IMPLS, Case, baseline_of, conv_reference, make_host_inputs, max_rel_err,
                    resolve_impls, tolerance)
from .peaks import cpu_peaks, device_peaks, peak_kind
from .timing import make_timer

SCHEMA_VERSION = 1
DEFAULT_BATCH = {"cuda": 32, "cpu": 8}
DEFAULT_DTYPES = {"cuda": ("float32", "float16", "bfloat16"), "cpu": ("float32",)}
DTYPES = tuple(NUMPY_DTYPES)
RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RunConfig:
    suites: tuple = ("resnet50",)
    device: str = "auto"          # "cuda", "cpu" or "auto"
    batch: int | None = None      # default: DEFAULT_BATCH[device]
    dtypes: tuple | None = None   # default: DEFAULT_DTYPES[device]
    passes: tuple = PASSES
    impls: tuple | None = None    # default: impls.DEFAULT_IMPLS[device]
    layers: tuple | None = None   # keep only these layer names
    policy: object = None         # timing.TimingPolicy; default per device
    check: bool = True            # compare each impl's first result with the float64 reference
    seed: int = 0
    threads: int | None = None    # torch-cpu threads (default: the usable cores)
    progress: bool = True


# ----------------------------------------------------------- environment ---

def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def _git(*args):
    try:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def environment(device: str) -> dict:
    """Versions of everything that shapes the numbers."""
    env = {"gpuconv": gpuconv.__version__, "git_commit": _git("rev-parse", "HEAD"),
           "python": platform.python_version(), "platform": platform.platform(), "numpy": np.__version__,
           "cupy": None, "torch": None, "torch_cuda": None, "cudnn": None, "cuda_runtime": None,
           "cuda_driver": None, "nvrtc": None}
    # OpenBLAS runs the kernels this names instead of detecting the CPU's (an older, slower set, perhaps).
    env["openblas_coretype"] = os.environ.get("OPENBLAS_CORETYPE")
    status = _git("status", "--porcelain", "--untracked-files=no")  # earlier results do not change the code
    env["git_dirty"] = None if status is None else bool(status)
    cupy = cupy_module()
    if cupy is not None:
        env["cupy"] = cupy.__version__
        if device == "cuda":
            env["cuda_runtime"] = _cuda_version(cupy.cuda.runtime.runtimeGetVersion())
            env["cuda_driver"] = _cuda_version(cupy.cuda.runtime.driverGetVersion())
            try:
                env["nvrtc"] = ".".join(map(str, cupy.cuda.nvrtc.getVersion()))
            except Exception:
                pass
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
        env["torch_threads"] = torch.get_num_threads()
        if device == "cuda" and torch.cuda.is_available():
            env["cudnn"] = torch.backends.cudnn.version()
    try:
        from threadpoolctl import threadpool_info
        # "architecture" is the kernel set OpenBLAS runs (OPENBLAS_CORETYPE can force an older one): it
        # decides most of the CPU path's speed, so it belongs beside the numbers.
        env["blas"] = [{k: info.get(k) for k in ("internal_api", "version", "num_threads", "threading_layer",
                                                 "architecture")}
                       for info in threadpool_info() if info.get("user_api") == "blas"]
    except ImportError:
        pass
    return env


# ------------------------------------------------------------------ run ---

def resolve_device(device: str) -> str:
    """'cpu' or 'cuda' (the benchmark's device kinds); 'cuda' raises gpuconv.CUDAUnavailableError with the
    reason when CUDA cannot be used."""
    if device == "cuda":
        require_cuda()
    return normalize_device(device).partition(":")[0]


def _check_dtypes(dtypes) -> tuple:
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise ValueError(f"unknown dtype(s) {bad}; choose from {DTYPES}")
    return tuple(dtypes)


def _plan(config: RunConfig, suites):
    """[(suite, layer)] in suite order, keeping only config.layers when given."""
    wanted = set(config.layers or ())
    plan = [(s, layer) for s in suites for layer in s.layers if not wanted or layer.name in wanted]
    missing = wanted - {layer.name for _, layer in plan}
    if missing:
        raise ValueError(f"no layer named {sorted(missing)} in suite(s) {[s.name for s in suites]}")
    return plan


def measurements(impls, dtypes, passes) -> list:
    """[(dtype, pass, impl)] that each layer runs, in run order: every impl in its own dtypes and passes only
    (cudnn-tf32 and gpuconv's TF32 variants in float32, a variant in its pass)."""
    return [(d, p, i) for d in dtypes for p in passes for i in impls if d in i.dtypes and p in i.passes]


def _layer_seed(base: int, suite: str, layer: str) -> int:
    return (zlib.crc32(f"{suite}/{layer}".encode()) + base) % 2**32


def _blas_threads(threads):
    """Limit NumPy's BLAS to `threads` (through threadpoolctl, when installed); the limiter, or None."""
    if threads is None:
        return None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("bench: threadpoolctl is not installed; NumPy's BLAS keeps its own thread count", file=sys.stderr)
        return None
    return threadpool_limits(limits=threads, user_api="blas")


def _free_device_memory(device: str):
    if device != "cuda":
        return
    cupy = cupy_module()
    cupy.get_default_memory_pool().free_all_blocks()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _base_record(suite, layer, g, pass_name, dtype, impl, batch) -> dict:
    rec = {"suite": suite, "layer": layer.name, "shape": layer.describe(), "count": layer.count,
           "pass": pass_name, "dtype": dtype, "impl": impl.name, "role": impl.role, "batch": batch}
    rec.update(pass_metrics(g, pass_name, NUMPY_DTYPES[dtype].itemsize))
    rec.update({"time_ms": None, "min_ms": None, "iqr_ms": None, "runs": 0, "capped": None, "first_call_ms": None,
                "tflops": None, "pct_of_peak": None, "peak_kind": None, "roofline_tflops": None,
                "pct_of_roofline": None, "ratio_vs_cudnn": None, "baseline": None, "max_rel_err": None,
                "tolerance": None, "correct": None, "settings": {}, "error": None})
    return rec


def _measure(rec, impl, case, timer, expected, check: bool):
    """Prepare, first call (timed apart), check, then time; fills rec in place."""
    prepared = impl.prepare(case)
    rec["settings"] = prepared.settings
    out, rec["first_call_ms"] = timer.first_call(prepared.run)
    if check:
        truth = prepared.reference() if prepared.reference is not None else expected()
        err = max_rel_err(out, truth)
        rec["tolerance"] = tolerance(impl, case.dtype)
        rec["correct"] = err <= rec["tolerance"]
        rec["max_rel_err"] = err if math.isfinite(err) else None
        if not math.isfinite(err):
            rec["error"] = "non-finite values (NaN or inf) in the result"
    del out
    rec.update(timer.measure(prepared.run, rec["first_call_ms"]))


def run_benchmark(config: RunConfig) -> dict:
    device = resolve_device(config.device)
    batch = config.batch or DEFAULT_BATCH[device]
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    dtypes = _check_dtypes(config.dtypes or DEFAULT_DTYPES[device])
    passes = tuple(check_pass(p) for p in config.passes)
    suites = [load_suite(name) for name in config.suites]
    plan = _plan(config, suites)
    impls, skipped = resolve_impls(config.impls, device)
    for name, reason in skipped.items():
        print(f"bench: skipping {name}: {reason}", file=sys.stderr)
    if not impls:
        raise ValueError(f"no usable implementation on {device}: {skipped}")
    threads = None
    if device == "cpu":  # one thread count for PyTorch and NumPy's BLAS alike: a fair comparison
        threads = config.threads or telemetry.usable_cores()
        if any(i.name == "torch-cpu" for i in impls):
            import torch
            torch.set_num_threads(threads)

    timer = make_timer(device, config.policy)
    if device == "cuda":
        timer.warm_up_device()
    blas_limit = _blas_threads(threads)  # before the environment is read, so that it shows the limit
    before = telemetry.snapshot(device)
    peaks = device_peaks(before) if device == "cuda" else cpu_peaks()
    warnings = telemetry.busy_warnings(before)
    for warning in warnings:
        print(f"bench: warning: {warning}", file=sys.stderr)
    xp = cupy_module() if device == "cuda" else np
    result = {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": before.get("name"), "device_kind": device, "suites": [s.name for s in suites],
        "batch": batch, "dtypes": list(dtypes), "passes": list(passes), "impls": [i.name for i in impls],
        "unavailable_impls": skipped, "layers_filter": list(config.layers or []), "check": config.check,
        "seed": config.seed, "timing": {"device": timer.device, **timer.policy.as_dict(),
                                        "flush_bytes": getattr(timer, "flush_bytes", 0), "cpu_threads": threads},
        "command": sys.argv, "environment": environment(device), "peaks": peaks,
        "telemetry": {"before": before, "after": None}, "warnings": warnings, "interrupted": False, "records": [],
    }
    records = result["records"]
    per_layer = measurements(impls, dtypes, passes)
    total = len(plan) * len(per_layer)
    from tqdm.auto import tqdm
    bar = tqdm(total=total, unit="meas", disable=not config.progress, dynamic_ncols=True, file=sys.stderr)
    try:
        for suite, layer in plan:
            g = layer.geometry(batch)
            seed = _layer_seed(config.seed, suite.name, layer.name)
            host = make_host_inputs(g, seed)
            references = {}

            def expected(pass_name, host=host, g=g, references=references):
                if pass_name not in references:  # once per layer and pass: the inputs are the same in every dtype
                    references[pass_name] = conv_reference(host, g, pass_name)
                return references[pass_name]

            for dtype, of_dtype in itertools.groupby(per_layer, key=lambda m: m[0]):
                inputs = {k: xp.asarray(v.astype(NUMPY_DTYPES[dtype])) for k, v in host.items()}
                for _, pass_name, impl in of_dtype:
                    bar.set_postfix_str(f"{layer.name} {pass_name} {dtype} {impl.name}", refresh=False)
                    rec = _base_record(suite.name, layer, g, pass_name, dtype, impl, batch)
                    case = Case(suite.name, layer, g, pass_name, dtype, device, xp, inputs, seed)
                    try:
                        _measure(rec, impl, case, timer, lambda p=pass_name: expected(p), config.check)
                    except (KeyboardInterrupt, SystemExit):
                        raise
                    except Exception as exc:  # recorded, and the run goes on with the next measurement
                        rec["error"] = f"{type(exc).__name__}: {exc}".strip()[:500]
                        _free_device_memory(device)
                    records.append(rec)
                    bar.update(1)
                del inputs
                _free_device_memory(device)
    except KeyboardInterrupt:
        result["interrupted"] = True
        print("bench: interrupted; keeping the records measured so far", file=sys.stderr)
    finally:
        bar.close()
        if blas_limit is not None:
            blas_limit.restore_original_limits()
    result["telemetry"]["after"] = telemetry.snapshot(device)
    derive_metrics(records, peaks, device)
    return result


# -------------------------------------------------------- derived fields ---

def record_key(rec) -> tuple:
    """What identifies a measurement across result files."""
    return (rec["suite"], rec["layer"], rec["pass"], rec["dtype"], rec["impl"], rec["batch"])


def derive_metrics(records, peaks: dict, device: str):
    """TFLOP/s, % of peak and of roofline, and the ratio to the baseline (``baseline_of``), for every timed
    record."""
    times = {record_key(r): r["time_ms"] for r in records if r.get("time_ms")}
    for rec in records:
        t = rec.get("time_ms")
        if not t:
            continue
        gemm = rec["gemm"]
        work = (2 * gemm["M"] * gemm["N"] * gemm["K"] * gemm["batch"]) if rec["impl"] == "cublas-gemm" \
            else rec["flops"]
        rec["tflops"] = work / (t * 1e-3) / 1e12
        impl = IMPLS.get(rec["impl"])
        kind = peak_kind(rec["impl"], rec["dtype"], impl.precision if impl is not None else None)
        rec["peak_kind"] = kind
        peak = peaks.get(f"{kind}_tflops")
        if peak:
            rec["pct_of_peak"] = 100.0 * rec["tflops"] / peak
            roof = roofline_tflops(rec["intensity"], peak, peaks.get("bandwidth_gbs"))
            rec["roofline_tflops"] = roof
            rec["pct_of_roofline"] = 100.0 * rec["tflops"] / roof if roof else None
        if impl is not None and impl.role == "gpuconv":
            baseline = baseline_of(rec["impl"], device)
            base = times.get(record_key({**rec, "impl": baseline}))
            if base:
                rec["baseline"] = baseline
                rec["ratio_vs_cudnn"] = base / t


def default_out_prefix(result: dict) -> Path:
    """bench/results/<device>_<suites>_b<batch>_<date>: what ran where, and when."""
    slug = re.sub(r"[^a-z0-9]+", "-", (result.get("device") or result["device_kind"]).lower()).strip("-")
    stamp = _dt.datetime.fromisoformat(result["created"]).strftime("%Y%m%d-%H%M%S")
    return RESULTS_DIR / f"{slug}_{'+'.join(result['suites'])}_b{result['batch']}_{stamp}"


__all__ = ["RunConfig", "run_benchmark", "derive_metrics", "record_key", "default_out_prefix", "environment",
           "resolve_device", "measurements", "DEFAULT_BATCH", "DEFAULT_DTYPES", "DTYPES"]
