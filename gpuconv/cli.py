"""The gpuconv command: train, eval, predict, info and tune.

Everything a user can get wrong (a flag, a file, the data) is refused before any work, with one line per
problem naming the flag, the file or the array, and exit status 2; no traceback reaches a user for anything a
user can cause. Ctrl-C during training saves a checkpoint and exits 130; a closed pipe ends quietly.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys

from . import __version__, amp
from ._backend import CUDAUnavailableError, normalize_device
from .distributed import DistributedUnavailableError

EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_PIPE = 2, 1, 130, 141
DEFAULT_INTERRUPT_DIR = "gpuconv-checkpoint"


class UsageError(ValueError):
    """A user's mistake: each line of the message is one problem."""


# ----------------------------------------------------------------- checks ---

def writable_file_problems(flag: str, path: str | None) -> list[str]:
    """Can ``path`` be written (checked before training, not found out after it)?"""
    if not path:
        return []
    if os.path.isdir(path):
        return [f"{flag} {path}: is a directory; give a file name, e.g. {os.path.join(path, 'weights.npz')}"]
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return [f"{flag} {path}: the directory {directory} does not exist"]
    if not os.access(directory, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return [f"{flag} {path}: not writable"]
    return []


def writable_dir_problems(flag: str, path: str | None) -> list[str]:
    if not path:
        return []
    if os.path.exists(path) and not os.path.isdir(path):
        return [f"{flag} {path}: exists and is not a directory"]
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        return [f"{flag} {path}: cannot create it ({exc.strerror})"]
    if not os.access(path, os.W_OK):
        return [f"{flag} {path}: not writable"]
    return []


def _raise_problems(problems: list[str]) -> None:
    if problems:
        raise UsageError("\n".join(problems))


def load_data(data_file: str | None, dataset: str | None, seed: int, data_dir: str | None):
    """(Dataset, a description to record) from --data FILE or --dataset NAME (default: digits)."""
    from . import data

    if data_file and dataset:
        raise UsageError("give --data FILE or --dataset NAME, not both")
    if data_file:
        return data.load_npz(data_file), {"file": os.path.abspath(data_file)}
    name = dataset or "digits"
    return data.load_dataset(name, cache_dir=data_dir, seed=seed), {"dataset": name, "seed": seed}


def checked_data(data_file, dataset, seed, data_dir, log=print):
    from .data import check_dataset

    ds, source = load_data(data_file, dataset, seed, data_dir)
    where = f"--data {data_file}" if data_file else f"--dataset {source['dataset']}"
    problems, notes = check_dataset(ds, where)
    _raise_problems(problems)
    for note in notes:
        log(f"note: {note}")
    return ds, source


# ---------------------------------------------------------------- commands ---

def launch_processes(args) -> int:
    """``gpuconv train --nproc N``: the same command under ``mpiexec -n N`` (without --nproc)."""
    from . import distributed

    if args.nproc < 1:
        raise UsageError(f"--nproc must be at least 1, got {args.nproc}")
    if importlib.util.find_spec("mpi4py") is None:
        raise UsageError(f"--nproc needs MPI: {distributed.INSTALL_HINT}")
    mpiexec = shutil.which("mpiexec") or os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not os.path.isfile(mpiexec):
        raise UsageError(f"--nproc needs an mpiexec on PATH: {distributed.INSTALL_HINT}")
    argv, skip = [], False
    for arg in args.argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            argv.append(arg)
    # One BLAS thread per core and process (unless set): N processes each starting a thread per core would
    # oversubscribe the cores (measured: 7x slower per epoch with 2 processes on 2 cores).
    env = dict(os.environ)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, str(max(1, (os.cpu_count() or 1) // args.nproc)))
    return subprocess.call([mpiexec, "-n", str(args.nproc), sys.executable, "-m", "gpuconv", *argv], env=env)


class _OtherRankFailed(Exception):
    """Another process of this run refused its input: it reported why; this one exits quietly."""


def collectively(comm, check):
    """Run ``check()`` on every process; if it fails on any, all stop: rank 0 reports each failing rank's
    message (one rank's missing file must end the run, not leave the others waiting in a collective)."""
    try:
        result, problem = check(), None
    except Exception as exc:  # noqa: BLE001 -- any failure must reach the allgather, or the others wait forever
        if comm.size == 1:
            raise
        user_error = isinstance(exc, (ValueError, OSError, CUDAUnavailableError, ImportError))
        result, problem = None, str(exc) if user_error else f"{type(exc).__name__}: {exc}"
    if comm.size == 1:
        if problem is not None:
            raise UsageError(problem)
        return result
    failed = [(rank, p) for rank, p in enumerate(comm.allgather(problem)) if p is not None]
    if failed:
        if comm.rank != 0:
            raise _OtherRankFailed()
        same = len({p for _, p in failed}) == 1 and len(failed) == comm.size
        raise UsageError(failed[0][1] if same else "\n".join(f"rank {r}: {line}" for r, p in failed
                                                              for line in p.splitlines()))
    return result


def _train(args) -> int:
    from . import distributed
    from . import train as training

    if args.nproc is not None and not distributed.launched_by_mpi():
        return launch_processes(args)
    device = normalize_device(args.device)  # fail before loading anything when CUDA is asked for and absent
    comm = distributed.world(device)
    if comm.size > 1 and device.startswith("cuda"):
        device = comm.device  # one GPU per process
    say = print if comm.rank == 0 else (lambda *a, **k: None)

    def prepare():
        config = training.TrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                      optimizer=args.optimizer, momentum=args.momentum,
                                      weight_decay=args.weight_decay, scheduler=args.scheduler, augment=args.augment,
                                      seed=args.seed, precision=args.precision)
        state = None
        if args.resume:
            state = training.read_checkpoint(args.resume)
            config = training.resumable_config(state, args.epochs)
        problems = config.problems()
        if config.batch_size < comm.size:
            problems.append(f"--batch-size {config.batch_size} is smaller than the {comm.size} processes: each "
                            f"takes a slice of every batch")
        if args.plot and importlib.util.find_spec("matplotlib") is None:
            problems.append("--plot needs matplotlib: pip install 'gpuconv[train]'")
        if comm.rank == 0:  # only rank 0 writes
            problems += writable_file_problems("--save", args.save) + writable_file_problems("--plot", args.plot)
            problems += writable_file_problems("--log", args.log)
            problems += writable_dir_problems("--checkpoint-dir", args.checkpoint_dir)
            problems += writable_dir_problems("--resume", args.resume)  # its checkpoints are rewritten
        _raise_problems(problems)
        source = state.get("metadata", {}).get("data") if state else None
        if source and not (args.data or args.dataset):  # resume on the data the run started with
            data_file, dataset, seed = source.get("file"), source.get("dataset"), source.get("seed", config.seed)
        else:
            data_file, dataset, seed = args.data, args.dataset, config.seed
        data, source = checked_data(data_file, dataset, seed, args.data_dir, log=say)
        return config, state, data, source

    try:
        config, state, data, source = collectively(comm, prepare)
    except _OtherRankFailed:
        return EXIT_USAGE
    say(f"data: {data.name}: {len(data.x_train)} train / {len(data.x_test)} test images of "
        f"{'x'.join(map(str, data.image_shape))}, {data.num_classes} classes")
    if comm.size > 1:
        say(f"data-parallel: {comm.size} processes ({type(comm).__name__}), each {config.batch_size // comm.size}"
            f"-{-(-config.batch_size // comm.size)} images of every batch of {config.batch_size}")
    if state is not None:
        say(f"resuming from {args.resume} after epoch {state['epoch']} of {config.epochs}")
    # A bar in a log file is thousands of updates; without tqdm, the lines per epoch are progress enough.
    progress = not args.no_progress and sys.stderr.isatty() and importlib.util.find_spec("tqdm") is not None
    try:
        training.train(data, config, device=device, save=args.save, checkpoint_dir=args.checkpoint_dir or args.resume,
                       resume=state, log_file=args.log, plot=args.plot, progress=progress, source=source,
                       interrupt_dir=DEFAULT_INTERRUPT_DIR, comm=comm)
    except training.Interrupted as exc:
        where = (f"the last completed epoch is saved in {os.path.dirname(exc.saved)}: continue with gpuconv train "
                 f"--resume {os.path.dirname(exc.saved)} --epochs {config.epochs}") if exc.saved else "nothing saved"
        if comm.rank == 0:
            print(f"gpuconv train: interrupted in epoch {exc.epoch}; {where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except training.NonFiniteLossError as exc:  # every process sees the same summed loss: all stop here
        if comm.rank == 0:
            print(f"gpuconv train: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BaseException as exc:
        if comm.size > 1:  # the others would wait for this process in their next collective: end them all
            print(f"gpuconv train (rank {comm.rank}): {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            comm.abort(EXIT_FAILED)
        raise
    return 0


def _eval(args) -> int:
    from .evaluate import as_model_input, format_evaluation, load_trained, probabilities

    device = normalize_device(args.device)
    model, metadata = load_trained(args.weights, device)
    source = metadata.get("data", {})
    if args.data or args.dataset:
        data, _ = checked_data(args.data, args.dataset, source.get("seed", 0), args.data_dir)
        where = args.data or args.dataset
    else:
        data, _ = checked_data(source.get("file"), source.get("dataset"), source.get("seed", 0), args.data_dir)
        where = f"the test split of {source.get('file') or source.get('dataset')}, the data it was trained on"
    x = as_model_input(data.x_test, metadata, "x_test")
    classes = metadata["classes"]
    if int(data.y_test.max(initial=0)) >= len(classes):
        raise UsageError(f"y_test holds class {int(data.y_test.max())}, but the model knows {len(classes)} classes")
    predicted = probabilities(model, x, device).argmax(axis=1)
    print(f"{args.weights}: {metadata['model']['name']} on {where}")
    print(format_evaluation(data.y_test, predicted, classes))
    return 0


def _predict(args) -> int:
    from .evaluate import as_model_input, load_trained, probabilities
    from .nn.module import load_arrays

    device = normalize_device(args.device)
    problems = writable_file_problems("--output", args.output)
    _raise_problems(problems)
    if not os.path.isfile(args.images):
        raise FileNotFoundError(f"--images {args.images}: no such file")
    model, metadata = load_trained(args.weights, device)
    if args.images.endswith(".npz"):
        arrays = load_arrays(args.images, what="images file")
        if len(arrays) != 1 and "images" not in arrays and "x_test" not in arrays:
            raise UsageError(f"--images {args.images}: holds {list(arrays)}; give one array, or one named images")
        images = arrays.get("images", arrays.get("x_test", next(iter(arrays.values()))))
    else:
        import numpy as np
        try:
            images = np.load(args.images, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise UsageError(f"--images {args.images}: not a readable .npy or .npz file ({exc})") from None
    x = as_model_input(images, metadata, f"--images {args.images}")
    if len(x) == 0:
        raise UsageError(f"--images {args.images}: holds no images (shape {images.shape})")
    p = probabilities(model, x, device)
    classes = metadata["classes"]
    lines = [f"{i}\t{classes[k]}\t{p[i, k]:.4f}" for i, k in enumerate(p.argmax(axis=1))]
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write("index\tclass\tprobability\n" + "".join(line + "\n" for line in lines))
        print(f"{len(lines)} predictions written to {args.output}")
    else:
        for line in lines:
            print(line)
    return 0


def _info(args) -> int:
    from .cuda.info import collect_info, format_info

    def progress(file, index, count):  # files answered from a cache are not reported
        print(f"gpuconv info: compiling kernels/{file} ({index}/{count})...", file=sys.stderr, flush=True)

    print(format_info(collect_info(progress=progress)))
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


# ------------------------------------------------------------------ parser ---

class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Each help text ends with its default (where there is one); descriptions keep their line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text and \
                action.option_strings:
            text += " (default: %(default)s)"
        return text


def _data_arguments(p) -> None:
    from .data import DATASETS

    p.add_argument("--dataset", choices=DATASETS, help="a dataset by name (downloaded once into --data-dir); "
                                                       "default: digits, bundled with scikit-learn")
    p.add_argument("--data", metavar="FILE.npz", help="your own arrays x_train, y_train, x_test, y_test: images "
                                                      "(N, H, W) or (N, C, H, W), integer labels 0..classes-1")
    p.add_argument("--data-dir", metavar="DIR", help="where datasets are cached (default: $GPUCONV_DATA_DIR, "
                                                     "else ~/.cache/gpuconv/data)")


def build_parser() -> argparse.ArgumentParser:
    from . import models
    from .train import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LR, OPTIMIZERS, SCHEDULERS

    parser = argparse.ArgumentParser(prog="gpuconv", formatter_class=_Formatter, description=(
        "gpuconv: convolutions on NVIDIA GPUs through gpuconv's own CUDA kernels, and on the CPU through NumPy.\n"
        "Train a small CNN, evaluate it, predict with it, and check the GPU side."))
    parser.add_argument("--version", action="version", version=f"gpuconv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", formatter_class=_Formatter, help="train a small CNN and report its test accuracy",
                       description="Train a CNN (on digits by default) with a line per epoch, a JSON line per epoch "
                                   "in --log, checkpoints in --checkpoint-dir and the weights in --save.")
    t.add_argument("--model", choices=tuple(models.MODELS), default="small_cnn", help="the architecture")
    _data_arguments(t)
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto picks CUDA when usable")
    t.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="epochs in all (with --resume: in all, too)")
    t.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per step")
    t.add_argument("--lr", type=float, default=DEFAULT_LR, help="learning rate (the peak one for onecycle)")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="the optimizer")
    t.add_argument("--momentum", type=float, default=0.9, help="SGD's momentum")
    t.add_argument("--weight-decay", type=float, default=0.0, help="L2 (adam, sgd) or decoupled (adamw) decay")
    t.add_argument("--scheduler", choices=SCHEDULERS, default="none",
                   help="learning rate per step: step (x0.1 at 50%% and 75%% of the run), cosine, onecycle")
    t.add_argument("--augment", action="store_true", help="random crops (4 pixels of padding) and horizontal flips")
    t.add_argument("--seed", type=int, default=0, help="initial weights, batch order, augmentation, digits' split")
    t.add_argument("--precision", choices=tuple(amp.PRECISIONS), default="fp32",
                   help="fp32, or mixed precision: bf16 / fp16 convolutions and linear layers on float32 master "
                        "weights (fp16 with dynamic loss scaling; overflowed steps skipped and counted)")
    t.add_argument("--save", metavar="FILE.npz", help="write the trained weights (with their architecture) here")
    t.add_argument("--checkpoint-dir", metavar="DIR", help="write a checkpoint after every epoch here")
    t.add_argument("--resume", metavar="DIR", help="continue the run checkpointed in DIR up to --epochs")
    t.add_argument("--log", metavar="FILE.jsonl", help="a JSON line per epoch (default: DIR/log.jsonl with "
                                                       "--checkpoint-dir)")
    t.add_argument("--plot", metavar="FILE.png", help="plot the loss and accuracy curves here")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (it is off anyway when stderr "
                                                              "is not a terminal)")
    t.add_argument("--nproc", type=int, metavar="N", help="data-parallel over N processes: runs this command under "
                                                          "mpiexec -n N (needs gpuconv[mpi]), as starting it with "
                                                          "mpiexec yourself does; each process takes a slice of "
                                                          "every batch. BatchNorm normalises with each process's "
                                                          "slice; its running statistics are averaged over the "
                                                          "processes after every epoch")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", formatter_class=_Formatter, help="accuracy of saved weights, per class, and the "
                                                               "confusion matrix",
                       description="Evaluate weights written by gpuconv train --save on the test split of the data "
                                   "they were trained on, or of --data / --dataset.")
    e.add_argument("--weights", required=True, metavar="FILE.npz")
    _data_arguments(e)
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    e.set_defaults(func=_eval)

    p = sub.add_parser("predict", formatter_class=_Formatter, help="classify images with saved weights",
                       description="One line per image: its index, class and probability (tab-separated). Images "
                                   "as in --data files: integers are scaled by their dtype's maximum, floats taken "
                                   "as they are.")
    p.add_argument("--weights", required=True, metavar="FILE.npz")
    p.add_argument("--images", required=True, metavar="FILE", help=".npy, or .npz with one array (or 'images')")
    p.add_argument("--output", metavar="FILE.tsv", help="write the predictions here instead of stdout")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.set_defaults(func=_predict)

    i = sub.add_parser("info", formatter_class=_Formatter,
                       help="backend, CUDA and driver versions, GPUs, and whether each kernel compiles")
    i.set_defaults(func=_info)

    u = sub.add_parser("tune", formatter_class=_Formatter,
                       help="autotune every layer of a suite on this GPU and fill the autotuner's cache",
                       description="Times every candidate kernel (im2col + cuBLAS and each implicit-GEMM variant) "
                                   "for each layer and pass of a suite, stores the fastest in the autotuner's cache "
                                   "($GPUCONV_CACHE_DIR, else $XDG_CACHE_HOME/gpuconv, else ~/.cache/gpuconv) and "
                                   "prints what it chose. Needs a GPU.")
    u.add_argument("--suite", default="resnet50", help="suite name(s), comma-separated, or a suite JSON file")
    u.add_argument("--batch", type=int, default=32, help="batch size")
    u.add_argument("--dtype", choices=("float16", "float32", "float64"), default="float32")
    u.add_argument("--passes", default="fprop,dgrad,wgrad")
    u.set_defaults(func=_tune)
    return parser


def run_command(parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse argv and call the chosen subcommand's ``func``; a user's mistake (bad input, no CUDA, a
    missing file) is one line per problem on stderr and exit code 2, not a traceback. Shared with
    ``python -m bench``."""
    try:
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else map(str, argv))
        return args.func(args)
    except CUDAUnavailableError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (DistributedUnavailableError, ImportError) as exc:  # something to install: the message says what
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError) as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        message = str(exc) if not isinstance(exc, OSError) or exc.filename is None or str(exc.filename) in str(exc) \
            else f"{exc.filename}: {exc.strerror}"
        for line in message.splitlines():
            print(f"{parser.prog}: error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def main(argv=None) -> int:
    try:
        return run_command(build_parser(), argv)
    except BrokenPipeError:
        # The reader went away (| head): stop quietly; stdout is pointed at /dev/null so that the interpreter's
        # final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE


if __name__ == "__main__":
    sys.exit(main())
