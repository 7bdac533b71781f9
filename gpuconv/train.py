"""Training a small CNN end to end: the configuration, the loop, checkpoints and resume, logs, evaluation.

One run is a ``TrainConfig`` (what to train and how) applied to a ``Dataset``. Inputs are normalised per
channel with the training set's mean and standard deviation, recorded in the weights file with the
architecture and the classes, so that ``gpuconv eval`` and ``predict`` need nothing else. After each epoch
the run's whole state (model, optimizer, scheduler, the random generators, the epoch and the history) can be
written as a checkpoint; resuming from it continues bit for bit as if the run had not stopped (on the CPU).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from . import __version__, amp, checkpoint, distributed, models, nn, optim
from ._backend import to_device
from ._shapes import is_floating
from .autograd import no_grad
from .data import Dataset, normalization

#: Defaults of ``gpuconv train``: on digits they reach 98.3-99.4% test accuracy for seeds 0-4 (measured).
DEFAULT_EPOCHS, DEFAULT_BATCH_SIZE, DEFAULT_LR = 25, 32, 2e-3
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "step", "cosine", "onecycle")
CHECKPOINT_FILE, LOG_FILE = "checkpoint.npz", "log.jsonl"
CHECKPOINT_FORMAT = "gpuconv-checkpoint-1"


def small_cnn(in_channels: int, height: int, width: int, num_classes: int) -> nn.Module:
    """The default model (``gpuconv.models``' small_cnn)."""
    return models.build("small_cnn", in_channels, height, width, num_classes)


@dataclass
class TrainConfig:
    """What ``gpuconv train`` runs; every field is a command-line flag of the same name."""
    model: str = "small_cnn"
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    lr: float = DEFAULT_LR
    optimizer: str = "adam"
    momentum: float = 0.9  # SGD's
    weight_decay: float = 0.0
    scheduler: str = "none"
    augment: bool = False
    seed: int = 0
    #: fp32, or mixed precision: bf16 / fp16 convolutions and linear layers on float32 master weights
    #: (``gpuconv.amp``); fp16 with dynamic loss scaling.
    precision: str = "fp32"

    def problems(self) -> list[str]:
        """One line per bad value, naming its flag (checked before any data is loaded)."""
        out = []
        for flag, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size)):
            if value < 1:
                out.append(f"{flag} must be at least 1, got {value}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            out.append(f"--lr must be a positive number, got {self.lr}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            out.append(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            out.append(f"--momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.seed < 2 ** 32:
            out.append(f"--seed must be in 0..{2 ** 32 - 1}, got {self.seed}")
        if self.model not in models.MODELS:
            out.append(f"--model must be one of {', '.join(models.MODELS)}, got {self.model!r}")
        if self.optimizer not in OPTIMIZERS:
            out.append(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.scheduler not in SCHEDULERS:
            out.append(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.precision not in amp.PRECISIONS:
            out.append(f"--precision must be one of {', '.join(amp.PRECISIONS)}, got {self.precision!r}")
        return out


@dataclass
class TrainResult:
    test_accuracy: float
    seconds_per_epoch: float
    final_train_loss: float
    device: str
    epochs_run: int = 0


class NonFiniteLossError(ArithmeticError):
    """The loss became NaN or infinite: training stopped."""


class Interrupted(Exception):
    """Training was interrupted (Ctrl-C); ``saved`` is where the last completed epoch's checkpoint is."""

    def __init__(self, epoch: int, saved: str | None):
        super().__init__(f"interrupted in epoch {epoch}")
        self.epoch, self.saved = epoch, saved


# ------------------------------------------------------------------ pieces ---

def normalize(x: np.ndarray, mean, std) -> np.ndarray:
    shape = (1, -1, 1, 1)
    return ((x - np.asarray(mean, np.float32).reshape(shape)) / np.asarray(std, np.float32).reshape(shape)) \
        .astype(np.float32)


def make_optimizer(config: TrainConfig, params) -> optim.Optimizer:
    if config.optimizer == "sgd":
        return optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(config: TrainConfig, optimizer, steps_per_epoch: int):
    """Stepped once per batch: "step" divides the rate by 10 at 50% and 75% of the run, "cosine" anneals it to 0,
    "onecycle" warms up to --lr over 30% of the run, then anneals."""
    total = config.epochs * steps_per_epoch
    if config.scheduler == "step":
        return optim.MultiStepLR(optimizer, [total // 2, (3 * total) // 4], gamma=0.1)
    if config.scheduler == "cosine":
        return optim.CosineAnnealingLR(optimizer, T_max=total)
    if config.scheduler == "onecycle":
        return optim.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
    return None


AUGMENT_PAD = 4


def augmentation(rng: np.random.Generator, n: int, pad: int = AUGMENT_PAD):
    """For n images: (crop offsets y, x in 0..2*pad, horizontal flips), drawn for a whole global batch so that
    every process of a data-parallel run, taking its slice, augments as one process would."""
    return rng.integers(0, 2 * pad + 1, n), rng.integers(0, 2 * pad + 1, n), rng.random(n) < 0.5


def augment_batch(x: np.ndarray, params, pad: int = AUGMENT_PAD) -> np.ndarray:
    """Random crop of each image from its zero-padded copy, and a horizontal flip with probability 1/2."""
    n, _, h, w = x.shape
    dy, dx, flip = params
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.empty_like(x)
    for i in range(n):
        crop = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = crop[:, :, ::-1] if flip[i] else crop
    return out


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, device: str, batch_size: int = 512,
             loss_fn=None, comm=None):
    """Accuracy of ``model`` on (x, y) (inputs as the model takes them); with ``loss_fn`` also the mean loss.

    With a communicator of several processes each evaluates its slice and the counts are summed.
    """
    comm = comm or distributed.SingleProcess()
    part = np.array_split(np.arange(len(x)), comm.size)[comm.rank]
    x, y = x[part], y[part]
    model.eval()
    correct, total_loss = 0, 0.0
    with no_grad():
        for i in range(0, len(x), batch_size):
            logits = model(to_device(x[i:i + batch_size], device))
            yb = y[i:i + batch_size]
            correct += int((logits.numpy().argmax(axis=1) == yb).sum())
            if loss_fn is not None:
                total_loss += float(loss_fn(logits, to_device(yb, device))) * len(yb)
    model.train()
    sums = [np.array([correct, total_loss, len(x)], np.float64)]
    comm_cpu(comm).allreduce_sum(sums)
    correct, total_loss, count = (float(v) for v in sums[0])  # Python floats: they go into JSON
    accuracy = correct / max(count, 1)
    return (accuracy, total_loss / max(count, 1)) if loss_fn is not None else accuracy


def comm_cpu(comm):
    """The communicator for small host-side sums (NCCL's MPI bootstrap carries them)."""
    return getattr(comm, "mpi", comm)


def weights_metadata(config: TrainConfig, data: Dataset, mean, std, source: dict) -> dict:
    """What a weights file records, so that eval and predict can rebuild the model and its inputs."""
    c, h, w = data.image_shape
    return {"format": "gpuconv-weights-1", "gpuconv": __version__,
            "model": models.describe(config.model, c, h, w, data.num_classes),
            "input_shape": [int(c), int(h), int(w)],
            "classes": list(data.class_names) if data.class_names else [str(i) for i in range(data.num_classes)],
            "normalization": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
            "data": source, "train": dataclasses.asdict(config)}


# --------------------------------------------------------------------- run ---

class Run:
    """A run's whole state: what a checkpoint holds."""

    def __init__(self, config: TrainConfig, data: Dataset, device: str, steps_per_epoch: int, comm=None):
        self.config = config
        self.comm = comm or distributed.SingleProcess()
        nn.manual_seed(config.seed)
        c, h, w = data.image_shape
        self.model = models.build(config.model, c, h, w, data.num_classes).to(device)
        # Every process starts from rank 0's weights (the same seed gives the same ones; this makes sure).
        self.comm.broadcast([p.data for p in self.model.parameters()] + self.model.buffers())
        self.optimizer = make_optimizer(config, self.model.parameters())
        self.scheduler = make_scheduler(config, self.optimizer, steps_per_epoch)
        self.scaler = amp.GradScaler(enabled=config.precision == "fp16")
        self.order_rng = np.random.default_rng(config.seed)
        self.augment_rng = np.random.default_rng([config.seed, 1])
        self.epoch = 0
        self.history: list[dict] = []

    def average_buffers(self) -> None:
        """Running statistics (BatchNorm's) averaged over the processes, so that every rank evaluates, and
        rank 0 saves, one model: each rank's batches moved its own."""
        if self.comm.size == 1:
            return
        floating = [b for b in self.model.buffers() if is_floating(b.dtype)]
        self.comm.allreduce_sum(floating)
        for b in floating:
            b /= self.comm.size

    def state(self, metadata: dict) -> dict:
        return {"format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(self.config), "epoch": self.epoch,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": {"order": self.order_rng.bit_generator.state, "augment": self.augment_rng.bit_generator.state,
                        "init": nn.init.get_rng_state()},
                "history": list(self.history), "metadata": metadata}

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.order_rng.bit_generator.state = state["rng"]["order"]
        self.augment_rng.bit_generator.state = state["rng"]["augment"]
        nn.init.set_rng_state(state["rng"]["init"])
        self.epoch, self.history = int(state["epoch"]), list(state["history"])


def read_checkpoint(directory: str) -> dict:
    path = os.path.join(directory, CHECKPOINT_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume {directory}: no {CHECKPOINT_FILE} there (written by --checkpoint-dir)")
    state = checkpoint.load(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a gpuconv training checkpoint")
    return state


def resumable_config(state: dict, epochs: int) -> TrainConfig:
    """The checkpoint's configuration with the new total of epochs (refused where the schedule depends on it)."""
    config = TrainConfig(**state["config"])
    done = int(state["epoch"])
    if epochs < done:
        raise ValueError(f"--epochs {epochs}: the checkpoint has already run {done} epochs")
    if epochs != config.epochs and config.scheduler in ("cosine", "onecycle", "step"):
        raise ValueError(f"--epochs {epochs}: this run's --scheduler {config.scheduler} was planned for "
                         f"{config.epochs} epochs; resume with --epochs {config.epochs}")
    return dataclasses.replace(config, epochs=epochs)


def _write_jsonl(path, record) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _precision(config: TrainConfig):
    """The forward passes' context: autocast to bf16 / fp16, or nothing for fp32."""
    low = amp.PRECISIONS[config.precision]
    return amp.autocast(low) if low is not None else contextlib.nullcontext()


def _run_epoch(run: "Run", epoch: int, x_train, y_train, device, loss_fn, bar):
    """One pass over the training set in the run's order: (summed loss, correct, images seen, last loss).

    Data-parallel: each process takes its slice of every global batch, its loss weighted by its share of the
    batch, and one bucketed all-reduce sums the gradients (with the loss, for a check every rank agrees on);
    the result is the global batch's mean gradient, as one process would compute it (up to rounding).
    """
    config, n, comm = run.config, len(x_train), run.comm
    order = run.order_rng.permutation(n)
    seen = correct = 0
    running_loss, loss_value = 0.0, float("nan")
    params = run.model.parameters()
    scaler = run.scaler
    for step_index, i in enumerate(range(0, n, config.batch_size)):
        idx = order[i:i + config.batch_size]
        share = slice(None)
        if comm.size > 1:
            bounds = np.linspace(0, len(idx), comm.size + 1).astype(int)
            share = slice(bounds[comm.rank], bounds[comm.rank + 1])
        xb = x_train[idx[share]]
        if config.augment:
            xb = augment_batch(xb, [p[share] for p in augmentation(run.augment_rng, len(idx))])
        yb = y_train[idx[share]]
        run.optimizer.zero_grad()
        if comm.size > 1 and len(yb) == 0:
            # A last batch smaller than the processes leaves this one nothing: it adds zeros to the sums.
            for p in params:
                p.grad = p.data * 0
            total = params[0].data.reshape(-1)[:1] * 0
            comm.allreduce_sum([p.grad for p in params] + [total])
            loss_value = float(total[0])
            logits = None
        elif comm.size > 1:
            with _precision(config):
                logits = run.model(to_device(xb, device))
                loss = loss_fn(logits, to_device(yb, device)) * (len(yb) / len(idx))  # its part of the batch's mean
            scaler.scale(loss).backward()
            for p in params:
                if p.grad is None:  # a parameter this batch did not reach still takes part in the sum
                    p.grad = p.data * 0
            total = loss.data.astype(params[0].dtype).reshape(1)
            comm.allreduce_sum([p.grad for p in params] + [total])  # in place
            loss_value = float(total[0])
        else:
            with _precision(config):
                logits = run.model(to_device(xb, device))
                loss = loss_fn(logits, to_device(yb, device))
            scaler.scale(loss).backward()
            loss_value = float(loss)
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(f"the loss became {loss_value} in epoch {epoch}, step {step_index + 1}: "
                                     f"training stopped (try a lower --lr than {config.lr})")
        # fp16: gradients unscaled; a step whose gradients overflowed is skipped (and counted), the scale halved.
        scaler.step(run.optimizer)
        scaler.update()
        if run.scheduler is not None:
            run.scheduler.step()
        running_loss += loss_value * len(idx)
        if logits is not None:
            correct += int((logits.numpy().argmax(axis=1) == yb).sum())
        seen += len(idx)
        if bar is not None:
            bar.update()
            bar.set_postfix(loss=f"{running_loss / seen:.4f}", acc=f"{correct / seen:.2%}")
    if bar is not None:
        bar.close()
    counts = [np.array([correct], np.float64)]
    comm_cpu(comm).allreduce_sum(counts)
    return running_loss, int(counts[0][0]), seen, loss_value


def train(data: Dataset, config: TrainConfig | None = None, *, device: str = "cpu", save: str | None = None,
          checkpoint_dir: str | None = None, resume: dict | None = None, log_file: str | None = None,
          plot: str | None = None, progress: bool = True, source: dict | None = None, log=print,
          interrupt_dir: str | None = None, comm=None) -> TrainResult:
    """Train ``config.model`` on ``data`` (checked beforehand: ``gpuconv.data.check_dataset``).

    Prints a line per epoch (and a progress bar when ``progress``), writes a JSON line per epoch to
    ``log_file`` (``checkpoint_dir``/log.jsonl by default), a checkpoint per epoch to ``checkpoint_dir``, the
    weights with their metadata to ``save``, and the curves to ``plot``. ``resume`` is a checkpoint's state.
    Raises ``NonFiniteLossError`` when the loss is not finite, ``Interrupted`` on Ctrl-C (after saving the
    last completed epoch's checkpoint to ``checkpoint_dir``, else ``interrupt_dir``).

    ``comm`` (``gpuconv.distributed``) makes it one process of a data-parallel run: each process trains on
    its slice of every batch; rank 0 alone prints and writes logs, checkpoints, weights and plots.
    """
    config = config or TrainConfig()
    comm = comm or distributed.SingleProcess()
    if comm.rank != 0:
        log, save, checkpoint_dir, log_file, plot, interrupt_dir, progress = (
            lambda *a, **k: None), None, None, None, None, None, False
    mean, std = normalization(data.x_train)
    x_train, x_test = normalize(data.x_train, mean, std), normalize(data.x_test, mean, std)
    n = len(x_train)
    steps_per_epoch = -(-n // config.batch_size)
    run = Run(config, data, device, steps_per_epoch, comm)
    metadata = weights_metadata(config, data, mean, std, source or {"name": data.name})
    if resume is not None:
        run.restore(resume)
    if log_file is None and checkpoint_dir:
        log_file = os.path.join(checkpoint_dir, LOG_FILE)
    loss_fn = nn.CrossEntropyLoss()
    epoch_times = [h["seconds"] for h in run.history]
    last_state = run.state(metadata)  # what Ctrl-C saves: the last completed epoch
    bar_factory = _progress_bar if progress else None
    loss_value = run.history[-1]["train_loss"] if run.history else float("nan")
    try:
        for epoch in range(run.epoch + 1, config.epochs + 1):
            start = time.perf_counter()
            bar = bar_factory(range(steps_per_epoch), f"epoch {epoch}/{config.epochs}") if bar_factory else None
            # Overflow on the way to a non-finite loss is reported by the loss check, not as NumPy warnings.
            with np.errstate(over="ignore", invalid="ignore"):
                running_loss, correct, seen, loss_value = _run_epoch(run, epoch, x_train, data.y_train, device,
                                                                     loss_fn, bar)
            seconds = time.perf_counter() - start
            run.average_buffers()
            with _precision(config):  # evaluated as it trains
                test_accuracy, test_loss = evaluate(run.model, x_test, data.y_test, device, loss_fn=loss_fn,
                                                    comm=comm)
            epoch_times.append(seconds)
            record = {"epoch": epoch, "train_loss": running_loss / seen, "train_accuracy": correct / seen,
                      "test_loss": test_loss, "test_accuracy": test_accuracy,
                      "lr": run.optimizer.param_groups[0]["lr"], "seconds": seconds,
                      "images_per_second": seen / seconds, "precision": config.precision}
            if run.scaler.enabled:
                record.update(loss_scale=run.scaler.get_scale(), skipped_steps=run.scaler.skipped_steps)
            run.history.append(record)
            run.epoch = epoch
            log(f"epoch {epoch:3d}/{config.epochs}  loss {record['train_loss']:.4f}  train acc "
                f"{record['train_accuracy']:.2%}  test acc {test_accuracy:.2%}  {seconds:.2f} s  "
                f"({record['images_per_second']:.0f} images/s)")
            if log_file:
                _write_jsonl(log_file, record)
            last_state = run.state(metadata)
            if checkpoint_dir:
                checkpoint.save(last_state, os.path.join(checkpoint_dir, CHECKPOINT_FILE))
    except KeyboardInterrupt:
        target = checkpoint_dir or interrupt_dir
        saved = None
        if target:
            os.makedirs(target, exist_ok=True)
            saved = os.path.join(target, CHECKPOINT_FILE)
            checkpoint.save(last_state, saved)
        raise Interrupted(run.epoch + 1, saved) from None

    accuracy = run.history[-1]["test_accuracy"] if run.history else evaluate(run.model, x_test, data.y_test, device,
                                                                             comm=comm)
    # The first epoch includes one-off costs (kernel compilation on the GPU); report the steady state too.
    steady = epoch_times[1:] or epoch_times or [0.0]
    per_epoch = sum(steady) / len(steady)
    first = epoch_times[0] if epoch_times else 0.0
    where = device if comm.size == 1 else f"{comm.size} processes ({device})"
    log(f"test accuracy {accuracy:.2%} on {len(x_test)} images | {per_epoch:.3f} s/epoch on {where} "
        f"(first epoch {first:.3f} s){'' if config.precision == 'fp32' else ', precision ' + config.precision}")
    if run.scaler.enabled:
        log(f"fp16 loss scaling: {run.scaler.skipped_steps} of {run.epoch * steps_per_epoch} steps skipped "
            f"(gradients overflowed), final scale {run.scaler.get_scale():g}")
    if save:
        metadata["result"] = {"epochs": run.epoch, "test_accuracy": accuracy}
        run.model.save(save, metadata=metadata)
        log(f"weights saved to {save}")
    if plot:
        plot_history(run.history, plot, title=f"{config.model} on {data.name}")
        log(f"curves plotted to {plot}")
    return TrainResult(accuracy, per_epoch, loss_value, device, run.epoch)


def _progress_bar(steps, description):
    from tqdm.auto import tqdm
    return tqdm(total=len(steps), desc=description, unit="batch", leave=False, file=sys.stderr)


def plot_history(history: list[dict], path: str, title: str = "") -> None:
    """Loss and accuracy per epoch, train and test, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.plot(epochs, [100 * h["train_accuracy"] for h in history], label="train")
    ax_acc.plot(epochs, [100 * h["test_accuracy"] for h in history], label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
