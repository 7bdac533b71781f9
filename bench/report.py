"""Writing a result: the JSON file (everything), a markdown table (for people), a PNG plot (if matplotlib)."""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from .impls import BASELINE, baseline_of


def _finite(obj):
    """JSON has no NaN/inf: turn them into null, recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(result: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(_finite(result), f, indent=1, allow_nan=False, default=str)
        f.write("\n")
    return path


def load_result(path) -> dict:
    with open(path) as f:
        result = json.load(f)
    if not isinstance(result, dict) or "records" not in result:
        raise ValueError(f"{path} is not a bench result file (no 'records')")
    return result


# ------------------------------------------------------------- markdown ---

def fmt(value, spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _versions(env: dict) -> str:
    parts = [f"gpuconv {env.get('gpuconv')}"]
    if env.get("git_commit"):
        parts[0] += f" ({env['git_commit'][:10]}{', uncommitted changes' if env.get('git_dirty') else ''})"
    for key, label in (("python", "Python"), ("numpy", "NumPy"), ("cupy", "CuPy"), ("torch", "PyTorch"),
                       ("cuda_runtime", "CUDA runtime"), ("cuda_driver", "CUDA driver"), ("cudnn", "cuDNN")):
        if env.get(key):
            parts.append(f"{label} {env[key]}")
    for blas in env.get("blas") or []:
        parts.append(f"{blas.get('internal_api')} {blas.get('version')} ({blas.get('architecture') or '?'} kernels, "
                     f"{blas.get('num_threads')} threads)")
    if env.get("openblas_coretype"):
        parts.append(f"OPENBLAS_CORETYPE={env['openblas_coretype']}")
    return ", ".join(parts)


def _telemetry_line(snap) -> str:
    if not snap:
        return "—"
    host = snap.get("host", {})
    load = f"host load {host.get('loadavg_1m')} on {host.get('cpu_count')} CPUs" if host else ""
    if snap.get("kind") == "cpu":
        return f"{snap.get('cpu_mhz')} MHz, {snap.get('usable_cores')} usable cores, {load}"
    if snap.get("nvml") != "ok":
        return f"NVML {snap.get('nvml')}; {load}"
    reasons = snap.get("throttle_reasons")
    return (f"SM {snap.get('sm_clock_mhz')}/{snap.get('sm_clock_max_mhz')} MHz, "
            f"memory {snap.get('mem_clock_mhz')}/{snap.get('mem_clock_max_mhz')} MHz, "
            f"{fmt(snap.get('power_w'), '.0f')}/{fmt(snap.get('power_limit_w'), '.0f')} W, "
            f"{snap.get('temperature_c')} C, {snap.get('pstate')}, "
            f"clock limits: {', '.join(reasons) if reasons else 'none'}, "
            f"{snap.get('compute_processes')} compute process(es); {load}")


def _peaks_line(peaks: dict) -> str:
    if not peaks or peaks.get("source") == "unknown":
        return "unknown (no peak model for this device)"
    where = f"table: {peaks.get('card')}" if peaks.get("source") == "table" else "estimated from SMs x clock"
    return (f"fp32 {fmt(peaks.get('fp32_tflops'), '.1f')}, tf32 {fmt(peaks.get('tf32_tflops'), '.1f')}, "
            f"fp16 {fmt(peaks.get('fp16_tflops'), '.1f')}, bf16 {fmt(peaks.get('bf16_tflops'), '.1f')} TFLOP/s; "
            f"{fmt(peaks.get('bandwidth_gbs'), '.0f')} GB/s ({where})")


def network_totals(result: dict) -> list:
    """Rows (pass, dtype, impl, total ms, layers timed, ratio to baseline) summing time x count over layers;
    the baseline is the device's, cudnn-tf32 for gpuconv's TF32 variants (``baseline_of``)."""
    device = result.get("device_kind") if result.get("device_kind") in BASELINE else "cuda"
    times = defaultdict(dict)  # (suite, pass, dtype, impl) -> {layer: (time, count)}
    layers = defaultdict(set)
    for r in result["records"]:
        layers[r["suite"]].add(r["layer"])
        if r.get("time_ms"):
            times[(r["suite"], r["pass"], r["dtype"], r["impl"])][r["layer"]] = (r["time_ms"], r["count"])
    rows = []
    for (suite, pass_name, dtype, impl), per_layer in times.items():
        total = sum(t * c for t, c in per_layer.values())
        baseline = baseline_of(impl, device)
        base = times.get((suite, pass_name, dtype, baseline), {})
        common = [name for name in per_layer if name in base]
        ratio = None
        if impl != baseline and len(common) == len(per_layer):  # only when the baseline ran every same layer
            ratio = sum(base[n][0] * base[n][1] for n in common) / total
        rows.append((suite, pass_name, dtype, impl, total, f"{len(per_layer)}/{len(layers[suite])}", ratio))
    order = {p: i for i, p in enumerate(("fprop", "dgrad", "wgrad"))}
    rows.sort(key=lambda r: (r[0], order.get(r[1], 9), r[2], r[4]))
    return rows


def ratio_summary(result: dict) -> list:
    """Rows (suite, pass, dtype, impl, geometric mean, worst ratio, worst layer, layers) of the per-layer
    ratio baseline-time / impl-time: the form the performance targets are stated in (every layer counts
    once, however often it occurs in the network)."""
    ratios = defaultdict(dict)  # (suite, pass, dtype, impl) -> {layer: ratio}
    for r in result["records"]:
        if r.get("ratio_vs_cudnn"):
            ratios[(r["suite"], r["pass"], r["dtype"], r["impl"])][r["layer"]] = r["ratio_vs_cudnn"]
    rows = []
    for (suite, pass_name, dtype, impl), per_layer in ratios.items():
        geomean = math.exp(sum(math.log(v) for v in per_layer.values()) / len(per_layer))
        worst = min(per_layer, key=per_layer.get)
        rows.append((suite, pass_name, dtype, impl, geomean, per_layer[worst], worst, len(per_layer)))
    order = {p: i for i, p in enumerate(("fprop", "dgrad", "wgrad"))}
    rows.sort(key=lambda r: (r[0], r[2], r[3], order.get(r[1], 9)))
    return rows


#: How a ratio's baseline differs for gpuconv's TF32 variants (``impls.baseline_of``).
_TF32_NOTE = {"cudnn": " (gpuconv's TF32 variants: cudnn-tf32's time, TF32 on both sides)"}


def render_markdown(result: dict) -> str:
    records = result["records"]
    suites = result.get("suites", [])
    env = result.get("environment", {})
    tel = result.get("telemetry", {})
    before = tel.get("before") or {}
    timing = result.get("timing", {})
    baseline = BASELINE.get(result.get("device_kind"), "cudnn")
    how = ("CUDA events, L2 flushed before each run" if timing.get("device") == "cuda" and timing.get("flush_l2")
           else "CUDA events" if timing.get("device") == "cuda" else "time.perf_counter")
    out = [f"# gpuconv benchmark: {', '.join(suites)} on {result.get('device')}", ""]
    device = result.get("device") or "?"
    if before.get("compute_capability"):
        device += f" (compute capability {before['compute_capability']}, {before.get('sm_count')} SMs)"
    out.append(md_table(["", ""], [
        ("date (UTC)", result.get("created")),
        ("device", device),
        ("batch", result.get("batch")),
        ("versions", _versions(env)),
        ("peaks", _peaks_line(result.get("peaks"))),
        ("timing", f"median of >= {timing.get('min_runs')} runs and >= {timing.get('min_time_s')} s "
                   f"(wall cap {timing.get('max_time_s')} s) after {timing.get('warmup_runs')} warm-up(s); {how}"),
        ("telemetry before", _telemetry_line(before)),
        ("telemetry after", _telemetry_line(tel.get("after"))),
        ("skipped impls", "; ".join(f"{k}: {v}" for k, v in result.get("unavailable_impls", {}).items()) or "none"),
    ]))
    for warning in result.get("warnings", []):
        out += ["", f"**Warning: {warning}.**"]
    if result.get("interrupted"):
        out += ["", "**The run was interrupted: the tables hold only the measurements made before.**"]

    out += ["", "## Network totals", "",
            f"Time per pass summed over the layers, each weighted by how often it occurs; "
            f"'vs {baseline}' = {baseline} total / this total (> 1: faster){_TF32_NOTE.get(baseline, '')}.", ""]
    multi = len(suites) > 1
    rows = [((s,) if multi else ()) + (p, d, i, fmt(t, ".4g"), n, fmt(r, ".2f"))
            for s, p, d, i, t, n, r in network_totals(result)]
    out.append(md_table((["suite"] if multi else []) + ["pass", "dtype", "impl", "total ms", "layers",
                                                      f"vs {baseline}"], rows))

    summary = ratio_summary(result)
    if summary:
        out += ["", f"## Ratio to {baseline} per layer", "",
                f"{baseline} time / this time for each layer (> 1: faster){_TF32_NOTE.get(baseline, '')}, "
                f"summarised per pass: the geometric mean over the layers and the worst layer.", ""]
        rows = [((s,) if multi else ()) + (p, d, i, fmt(g, ".2f"), fmt(w, ".2f"), layer, n)
                for s, p, d, i, g, w, layer, n in summary]
        out.append(md_table((["suite"] if multi else []) + ["pass", "dtype", "impl", "geometric mean", "worst",
                                                          "worst layer", "layers"], rows))

    out += ["", "## Layers", "",
            f"ms: median time; % peak: of the card's peak for the dtype (fp16, bf16, tf32 = tensor cores); "
            f"vs {baseline}: {baseline} time / this time{_TF32_NOTE.get(baseline, '')}; err: max|out - ref| / "
            f"max|ref| against float64.", ""]
    rows = []
    for r in records:
        if r.get("error") and not r.get("time_ms"):
            status = "error"
        elif r.get("correct") is False:
            status = "**WRONG**"
        else:
            status = "flagged" if r.get("host_bound") else ""
        rows.append(((r["suite"],) if multi else ()) + (
            r["layer"], r["shape"], r["pass"], r["dtype"], r["impl"], fmt(r.get("time_ms"), ".4g"),
            fmt(r.get("tflops"), ".3g"), fmt(r.get("pct_of_peak"), ".1f"), fmt(r.get("ratio_vs_cudnn"), ".2f"),
            fmt(r.get("first_call_ms"), ".4g"), r.get("runs") or "—", fmt(r.get("max_rel_err"), ".1e"), status))
    out.append(md_table((["suite"] if multi else []) + [
        "layer", "shape", "pass", "dtype", "impl", "ms", "TFLOP/s", "% peak", f"vs {baseline}",
        "first call ms", "runs", "err", ""], rows))

    problems = [r for r in records if r.get("error") or r.get("correct") is False]
    if problems:
        out += ["", "## Errors and wrong results", ""]
        for r in problems:
            what = r.get("error") or (f"max_rel_err {fmt(r.get('max_rel_err'), '.2e')} > tolerance "
                                      f"{r.get('tolerance')}")
            out.append(f"- {r['layer']} {r['pass']} {r['dtype']} {r['impl']}: {what}")
    if any(r.get("host_bound") for r in records):
        out += ["", "'flagged': the host took longer to enqueue the call than the GPU was held, so the time "
                    "includes launch overhead."]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------- plot ---

def write_plot(result: dict, path) -> Path | None:
    """Ratio to the baseline per layer (one panel per dtype) and measured TFLOP/s against the roofline.

    Returns None (and writes nothing) when matplotlib is missing or nothing was timed.
    """
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend, Agg renders the PNG
    except ImportError:
        return None
    records = [r for r in result["records"] if r.get("time_ms")]
    if not records:
        return None
    baseline = BASELINE.get(result.get("device_kind"), "cudnn")
    dtypes = list(dict.fromkeys(r["dtype"] for r in records))
    layer_names = list(dict.fromkeys(r["layer"] for r in result["records"]))
    fig = Figure(figsize=(max(10.0, 0.55 * len(layer_names) * len(dtypes)), 11), layout="constrained")
    grid = fig.add_gridspec(2, len(dtypes))

    for col, dtype in enumerate(dtypes):
        ax = fig.add_subplot(grid[0, col])
        series = defaultdict(dict)
        for r in records:
            if r["dtype"] == dtype and r.get("ratio_vs_cudnn"):
                series[(r["impl"], r["pass"])][r["layer"]] = r["ratio_vs_cudnn"]
        width = 0.8 / max(1, len(series))
        pass_order = {p: k for k, p in enumerate(("fprop", "dgrad", "wgrad"))}
        ordered = sorted(series.items(), key=lambda kv: (kv[0][0], pass_order.get(kv[0][1], 9)))
        for i, ((impl, pass_name), values) in enumerate(ordered):
            xs = [j + (i - (len(series) - 1) / 2) * width for j, name in enumerate(layer_names) if name in values]
            ax.bar(xs, [values[n] for n in layer_names if n in values], width, label=f"{impl} {pass_name}")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(layer_names)), layer_names, rotation=70, fontsize=7)
        ax.set_ylabel(f"{baseline} time / time  (> 1: faster)")
        ax.set_title(f"{dtype}: speed relative to {baseline}")
        if series:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, f"no ratios (needs {baseline} and gpuconv timings)", ha="center",
                    transform=ax.transAxes)

    ax = fig.add_subplot(grid[1, :])
    markers = "osD^vP*Xh<>"
    impls = list(dict.fromkeys(r["impl"] for r in records))
    for i, impl in enumerate(impls):
        for dtype in dtypes:
            pts = [(r["intensity"], r["tflops"]) for r in records if r["impl"] == impl and r["dtype"] == dtype]
            if pts:
                ax.scatter(*zip(*pts), marker=markers[i % len(markers)], s=22, alpha=0.75,
                           label=f"{impl} {dtype}")
    peaks = result.get("peaks") or {}
    bandwidth = peaks.get("bandwidth_gbs")
    if bandwidth:
        xs = [min(r["intensity"] for r in records) / 2, max(r["intensity"] for r in records) * 2]
        lo, hi = xs
        for kind in ("fp32", "tf32", "fp16"):
            peak = peaks.get(f"{kind}_tflops")
            if peak:
                ridge = peak * 1e3 / bandwidth
                line_x = [lo] + ([ridge] if lo < ridge < hi else []) + [hi]
                ax.plot(line_x, [min(peak, x * bandwidth / 1e3) for x in line_x], linestyle="--", linewidth=1,
                        label=f"roofline {kind} ({peak:.0f} TFLOP/s, {bandwidth:.0f} GB/s)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP per byte of minimum traffic)")
    ax.set_ylabel("TFLOP/s")
    ax.set_title(f"{', '.join(result.get('suites', []))} on {result.get('device')}, batch {result.get('batch')}")
    ax.legend(fontsize=7, ncol=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def write_outputs(result: dict, prefix, markdown=None, plot=None) -> list:
    """<prefix>.json, <prefix>.md and, with matplotlib, <prefix>.png; returns the paths written.

    ``markdown`` and ``plot`` render another kind of result (``bench net``'s); default: a kernel run's.
    """
    prefix = Path(prefix)
    if prefix.suffix in (".json", ".md", ".png"):
        prefix = prefix.with_suffix("")
    written = [write_json(result, prefix.with_name(prefix.name + ".json"))]
    md = prefix.with_name(prefix.name + ".md")
    md.write_text((markdown or render_markdown)(result))
    written.append(md)
    png = (plot or write_plot)(result, prefix.with_name(prefix.name + ".png"))
    if png is not None:
        written.append(png)
    return written
