"""python -m bench run | net | compare | list   (run from the repository root; see bench/README.md)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpuconv.cli import run_command


def _csv(text: str) -> tuple:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _run(args) -> int:
    from .report import write_outputs
    from .run import RunConfig, default_out_prefix, run_benchmark
    from .timing import CPU_POLICY, GPU_POLICY, TimingPolicy

    config = RunConfig(suites=_csv(args.suite), device=args.device, batch=args.batch,
                       dtypes=_csv(args.dtypes) if args.dtypes else None, passes=_csv(args.passes),
                       impls=_csv(args.impls) if args.impls else None,
                       layers=_csv(args.layers) if args.layers else None, check=not args.no_check, seed=args.seed,
                       threads=args.threads, progress=not args.no_progress)
    # Timing overrides apply to the device's own defaults, which are only known once the device is.
    from .run import resolve_device
    device = resolve_device(args.device)
    config.device = device
    base = GPU_POLICY if device == "cuda" else CPU_POLICY
    overrides = {k: v for k, v in (("min_runs", args.min_runs), ("min_time_s", args.min_time),
                                   ("max_time_s", args.max_time), ("warmup_runs", args.warmup)) if v is not None}
    if args.no_flush_l2:
        overrides["flush_l2"] = False
    if args.gpu_warmup is not None:
        overrides["device_warmup_s"] = args.gpu_warmup
    config.policy = TimingPolicy(**{**base.as_dict(), **overrides})

    result = run_benchmark(config)
    prefix = Path(args.out) if args.out else default_out_prefix(result)
    for path in write_outputs(result, prefix):
        print(f"wrote {path}")
    errors = sum(1 for r in result["records"] if r.get("error"))
    wrong = sum(1 for r in result["records"] if r.get("correct") is False)
    print(f"{len(result['records'])} measurements on {result['device']}: {errors} error(s), {wrong} wrong result(s)")
    return 1 if result.get("interrupted") else 0


def _compare(args) -> int:
    from .compare import compare_files

    text = compare_files(args.a, args.b)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def _list(args) -> int:
    from gpuconv.suites import load_suite, suite_names

    for name in ([args.suite] if args.suite else suite_names()):
        suite = load_suite(name)
        print(f"{suite.name}: {len(suite.layers)} distinct layers, {suite.total_count} in the network")
        if suite.description:
            print(f"  {suite.description}")
        for layer in suite.layers:
            mflop = layer.geometry(args.batch).flops() / 1e6
            print(f"  {layer.name:22s} {layer.describe():48s} x{layer.count:<2d} {mflop:10.1f} MFLOP at batch "
                  f"{args.batch}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description="gpuconv's convolution benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="time the layers of suites; writes <out>.json, .md and .png")
    r.add_argument("--suite", default="resnet50", help="suite name(s), comma-separated (see 'list'); "
                                                       "or a path to a suite .json (default: resnet50)")
    r.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto: CUDA when usable, else the CPU (default: auto)")
    r.add_argument("--batch", type=int, help="batch size (default: 32 on cuda, 8 on cpu)")
    r.add_argument("--dtypes", help="comma-separated: float32,float16,bfloat16 (default: all three on cuda, "
                                    "float32 on cpu)")
    r.add_argument("--passes", default="fprop,dgrad,wgrad", help="default: fprop,dgrad,wgrad")
    r.add_argument("--impls", help="comma-separated (default on cuda: gpuconv:im2col,gpuconv:implicit_gemm,"
                                   "cudnn,cudnn-tf32,cublas-gemm; on cpu: numpy,torch-cpu; "
                                   "also numpy-reference)")
    r.add_argument("--layers", help="only these layer names, comma-separated")
    r.add_argument("--out", help="output path prefix (default: bench/results/<device>_<suite>_b<batch>_<date>)")
    r.add_argument("--min-runs", type=int, help="timed runs at least (default: 20 on cuda, 5 on cpu)")
    r.add_argument("--min-time", type=float, help="seconds of timed runs at least (default: 0.2)")
    r.add_argument("--max-time", type=float, help="stop adding runs after this many seconds (default: 5 on "
                                                  "cuda, 2 on cpu)")
    r.add_argument("--warmup", type=int, help="warm-up calls after the first one (default: 3 on cuda, 1 on cpu)")
    r.add_argument("--no-flush-l2", action="store_true", help="do not flush the L2 cache before each run")
    r.add_argument("--gpu-warmup", type=float, help="seconds of matrix products before the first measurement, "
                                                     "to bring the GPU's clocks up (default: 1)")
    r.add_argument("--no-check", action="store_true", help="skip the float64 correctness check")
    r.add_argument("--threads", type=int, help="torch-cpu threads (default: the usable cores)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=_run)

    from .net import add_parser as add_net_parser
    add_net_parser(sub)

    c = sub.add_parser("compare", help="compare two result .json files as a markdown table")
    c.add_argument("a", help="result A (e.g. before, or card A)")
    c.add_argument("b", help="result B; speedup = time A / time B")
    c.add_argument("--out", help="write the markdown here instead of printing it")
    c.set_defaults(func=_compare)

    li = sub.add_parser("list", help="list the suites and their layers")
    li.add_argument("--suite", help="only this suite")
    li.add_argument("--batch", type=int, default=1, help="batch size for the MFLOP column (default: 1)")
    li.set_defaults(func=_list)
    return parser


def main(argv=None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
