"""Time a training step of the default model with autograd against the old per-layer backward, in one process.

The old code is the package as it was before autograd (``--baseline``, a git revision), extracted from git
into a temporary directory as the package ``gpuconv_legacy``; both train the same small CNN from the same
weights on the same batches of the default data, steps interleaved in rounds so that both see the same
machine state (each path first in turn). First both run a few steps and their weights are compared (validate, then time).

    python scripts/autograd_overhead.py [--baseline REV] [--rounds 15] [--steps 20]

Reports the median and the fastest time per step (forward, loss, backward, optimizer step), and the median
over rounds of each path's time relative to the old code's in the same round, of:
the old per-layer backward (which also computes the input gradient of the first layer), autograd, and
autograd asked for the input gradient too (the same work as the old code).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gpuconv  # noqa: E402
from gpuconv import nn, optim  # noqa: E402
from gpuconv.data import load_digits  # noqa: E402
from gpuconv.train import DEFAULT_BATCH_SIZE, DEFAULT_LR, small_cnn  # noqa: E402

BASELINE = "3a839ef"  # the last commit before autograd


def import_legacy(revision: str, directory: Path):
    """The gpuconv package at ``revision`` as the module ``gpuconv_legacy`` (its imports are relative)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", revision, "gpuconv"],
                             check=True, capture_output=True).stdout
    target = directory / "extract"
    target.mkdir()
    tar_path = directory / "legacy.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(target, filter="data")
    (target / "gpuconv").rename(directory / "gpuconv_legacy")
    sys.path.insert(0, str(directory))
    legacy = importlib.import_module("gpuconv_legacy")
    importlib.import_module("gpuconv_legacy.train")
    return legacy


def legacy_step(model, loss_fn, optimizer, x, y):
    logits = model.forward(x)
    loss_fn(logits, y)
    optimizer.zero_grad()
    model.backward(loss_fn.backward())
    optimizer.step()


def autograd_step(model, loss_fn, optimizer, x, y, input_grad=False):
    logits = model(gpuconv.Tensor(x, requires_grad=True) if input_grad else x)
    loss = loss_fn(logits, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def traced(fn, warm=lambda: None):
    """Bytes by tracemalloc (NumPy reports its arrays to it), from before ``warm`` (run first, traced):
    (held after warm, the peak during fn, held while fn's result is, held after its result is dropped)."""
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        warm()
        between = tracemalloc.get_traced_memory()[0] - start
        tracemalloc.reset_peak()
        kept = fn()
        now, peak = tracemalloc.get_traced_memory()
        del kept
        return between, peak - start, now - start, tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()


def memory_report(paths, x, y) -> None:
    """What a training step holds between steps and at its peak, counted from before a first step (so
    that the parameters, their gradients and the optimizer state count in both), and a forward pass with
    and without recording (what it keeps alive while its output is held)."""
    mib = 2 ** 20
    print("\n| memory (tracemalloc), default model, one batch | held between steps MiB | peak MiB |")
    print("| --- | --- | --- |")
    for name in ("old per-layer backward", "autograd"):
        step, m, loss_fn, opt = paths[name]

        def one_step():
            step(m, loss_fn, opt, x, y)
        between, peak, _, _ = traced(one_step, warm=one_step)  # the second step replaces the first's arrays
        print(f"| training step, {name} | {between / mib:.3f} | {peak / mib:.2f} |")
    model = paths["autograd"][1]
    print("\n| forward pass, autograd | peak MiB | held with its output MiB |")
    print("| --- | --- | --- |")
    for label, context in (("recording", contextlib.nullcontext), ("no_grad", gpuconv.no_grad)):
        def forward():
            with context():
                return model(x)
        _, peak, held, _ = traced(forward)
        print(f"| {label} | {peak / mib:.2f} | {held / mib:.3f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default=BASELINE, help=f"git revision of the old code (default {BASELINE})")
    parser.add_argument("--rounds", type=int, default=15, help="rounds; each times --steps steps of each path")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)

    data = load_digits(seed=0)
    c, h, w = data.image_shape
    with tempfile.TemporaryDirectory() as tmp:
        legacy = import_legacy(args.baseline, Path(tmp))
        nn.manual_seed(0)
        model = small_cnn(c, h, w, data.num_classes)
        old_model = legacy.train.small_cnn(c, h, w, data.num_classes)
        old_model.load_state_dict(model.state_dict())
        paths = {
            "old per-layer backward": (legacy_step, old_model, legacy.nn.CrossEntropyLoss(),
                                       legacy.optim.Adam(old_model.parameters(), lr=DEFAULT_LR)),
            "autograd": (autograd_step, model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=DEFAULT_LR)),
        }
        model_in = small_cnn(c, h, w, data.num_classes)
        model_in.load_state_dict(model.state_dict())
        paths["autograd, input gradient too"] = (
            lambda *a: autograd_step(*a, input_grad=True), model_in, nn.CrossEntropyLoss(),
            optim.Adam(model_in.parameters(), lr=DEFAULT_LR))

        rng = np.random.default_rng(0)
        batches = [rng.permutation(len(data.x_train))[:DEFAULT_BATCH_SIZE] for _ in range(args.steps)]

        # Validate: the same steps give the same weights (up to rounding: the loss gradients are computed
        # in a different order).
        for idx in batches[:5]:
            for step, m, loss_fn, opt in paths.values():
                step(m, loss_fn, opt, data.x_train[idx], data.y_train[idx])
        reference = model.state_dict()
        worst = max(float(np.abs(old_model.state_dict()[k] - v).max()) for k, v in reference.items())
        worst_in = max(float(np.abs(model_in.state_dict()[k] - v).max()) for k, v in reference.items())
        print(f"after 5 steps, largest weight difference: old vs autograd {worst:.2e}, "
              f"autograd with vs without the input gradient {worst_in:.2e}")
        if worst > 1e-4 or worst_in != 0.0:
            print("the paths disagree: not timing them", file=sys.stderr)
            return 1

        memory_report(paths, data.x_train[batches[0]], data.y_train[batches[0]])
        times = {name: [] for name in paths}
        names = list(paths)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:  # each path first in turn
                step, m, loss_fn, opt = paths[name]
                start = time.perf_counter()
                for idx in batches:
                    step(m, loss_fn, opt, data.x_train[idx], data.y_train[idx])
                times[name].append((time.perf_counter() - start) / len(batches))

    old = times["old per-layer backward"]
    print(f"\nCPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, NumPy {np.__version__}, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; baseline {args.baseline}; "
          f"batch {DEFAULT_BATCH_SIZE}, {args.rounds} rounds of {args.steps} steps each\n")
    # The ratio within each round, then its median: drifts of the machine's speed between rounds cancel.
    print("| path | median ms/step | min ms/step | vs old (median of per-round ratios) |")
    print("| --- | --- | --- | --- |")
    for name, samples in times.items():
        ratio = statistics.median(t / o for t, o in zip(samples, old))
        print(f"| {name} | {statistics.median(samples) * 1e3:.3f} | {min(samples) * 1e3:.3f} | {ratio - 1:+.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
