"""The ``gpuconv`` command: ``gpuconv train``, ``gpuconv info`` and ``gpuconv tune``."""
from __future__ import annotations

import argparse
import sys

from ._backend import CUDAUnavailableError, normalize_device


def _train(args) -> int:
    from .data import load_digits, load_npz
    from .train import train

    device = normalize_device(args.device)  # fail before loading anything when CUDA is asked for and absent
    data = load_npz(args.data) if args.data else load_digits(seed=args.seed)
    print(f"data: {data.name}: {len(data.x_train)} train / {len(data.x_test)} test images of "
          f"{'x'.join(map(str, data.image_shape))}, {data.num_classes} classes")
    train(data, device=device, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
          save=args.save, progress=not args.no_progress)
    return 0


def _info(args) -> int:
    from .cuda.info import collect_info, format_info

    print(format_info(collect_info()))
    return 0


def _tune(args) -> int:
    import numpy as np

    from .cuda import autotune
    from .suites import load_suite

    if args.batch < 1:
        raise ValueError(f"--batch must be at least 1, got {args.batch}")
    passes = tuple(p.strip() for p in args.passes.split(",") if p.strip())
    unknown = sorted(set(passes) - {"fprop", "dgrad", "wgrad"})
    if unknown or not passes:
        raise ValueError(f"--passes takes a comma-separated list of fprop, dgrad, wgrad; got {args.passes!r}")
    suites = [load_suite(name.strip()) for name in args.suite.split(",") if name.strip()]
    for suite in suites:
        autotune.tune_suite(suite, args.batch, np.dtype(args.dtype), passes)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpuconv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    from .train import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LR

    t = sub.add_parser("train", help="train a small CNN (digits by default) and report test accuracy")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto picks CUDA when it is usable (default: auto)")
    t.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    t.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    t.add_argument("--lr", type=float, default=DEFAULT_LR, help="Adam learning rate")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--data", metavar="FILE.npz", help="arrays x_train, y_train, x_test, y_test (default: digits)")
    t.add_argument("--save", metavar="FILE.npz", help="write the trained weights here")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    t.set_defaults(func=_train)

    i = sub.add_parser("info", help="backend, CUDA/driver versions, GPU, and whether each kernel compiles")
    i.set_defaults(func=_info)

    u = sub.add_parser("tune", help="autotune every layer of a suite on this GPU and fill the autotuner's cache",
                       description="Times every candidate kernel (im2col + cuBLAS and each implicit-GEMM variant) "
                                   "for each layer and pass of a suite, stores the fastest in the autotuner's cache "
                                   "($GPUCONV_CACHE_DIR, else $XDG_CACHE_HOME/gpuconv, else ~/.cache/gpuconv) and "
                                   "prints what it chose. Needs a GPU.")
    u.add_argument("--suite", default="resnet50", help="suite name(s), comma-separated, or a suite JSON file "
                                                      "(default: resnet50)")
    u.add_argument("--batch", type=int, default=32, help="batch size (default: 32)")
    u.add_argument("--dtype", choices=("float16", "float32", "float64"), default="float32",
                   help="(default: float32)")
    u.add_argument("--passes", default="fprop,dgrad,wgrad", help="(default: fprop,dgrad,wgrad)")
    u.set_defaults(func=_tune)
    return parser


def run_command(parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse argv and call the chosen subcommand's ``func``; a user's mistake (bad input, no CUDA, a
    missing file) is one line on stderr and exit code 2, not a traceback. Shared with ``python -m bench``."""
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CUDAUnavailableError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
