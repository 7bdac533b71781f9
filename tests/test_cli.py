"""The gpuconv command as a user meets it: every mistake found before training with one line, runs that are
never lost (checkpoints, resume, Ctrl-C), self-describing weights for eval and predict, logs and plots."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpuconv import cli, nn
from gpuconv import train as training

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *args):
    rc = cli.main([*map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def train(capsys, *args):
    return run(capsys, "train", "--device", "cpu", *args)


def npz(path, **overrides):
    """A small valid training file (uint8 images of bars), with some arrays overridden."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 255, (40, 8, 8)).astype(np.uint8), "y_train": np.arange(40) % 2,
              "x_test": rng.integers(0, 255, (10, 8, 8)).astype(np.uint8), "y_test": np.arange(10) % 2}
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path


def one_error(rc, out, err, pattern):
    """Exit 2, no traceback, nothing trained, and exactly the expected problem line(s) on stderr."""
    assert rc == 2, (out, err)
    assert "Traceback" not in err and "epoch " not in out, (out, err)
    assert re.search(pattern, err), err


# ---------------------------------------------------------- runs never lost ---

def test_save_into_a_missing_directory_is_refused_before_training(capsys):
    one_error(*train(capsys, "--save", "/nonexistent/dir/w.npz"),
              r"^gpuconv: error: --save /nonexistent/dir/w.npz: the directory /nonexistent/dir does not exist$")


def test_save_to_a_directory_is_refused_before_training(capsys, tmp_path):
    one_error(*train(capsys, "--save", tmp_path), rf"--save {tmp_path}: is a directory; give a file name, e\.g\. ")


def test_checkpoint_dir_that_is_a_file_is_refused(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    one_error(*train(capsys, "--checkpoint-dir", tmp_path / "f"), r"--checkpoint-dir .*/f: exists and is not a dir")


def test_flags_are_checked_before_the_data_is_loaded(capsys):
    rc, out, err = train(capsys, "--epochs", 0, "--seed", -5, "--lr", 0)
    one_error(rc, out, err, r"--epochs must be at least 1, got 0")
    assert err.splitlines() == ["gpuconv: error: --epochs must be at least 1, got 0",
                                "gpuconv: error: --lr must be a positive number, got 0.0",
                                "gpuconv: error: --seed must be in 0..4294967295, got -5"]
    assert "data:" not in out


def interrupt_in_epoch(monkeypatch, epoch):
    """Ctrl-C as the evaluation of ``epoch`` starts (the epoch's steps have run, its checkpoint not)."""
    original, calls = training.evaluate, []

    def evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate", evaluate)


def test_ctrl_c_saves_the_last_epoch_and_exits_130_with_one_line(capsys, tmp_path, monkeypatch):
    interrupt_in_epoch(monkeypatch, 3)
    rc, out, err = train(capsys, "--epochs", 5, "--checkpoint-dir", tmp_path / "ck")
    assert rc == 130 and "Traceback" not in err
    assert err.splitlines() == [f"gpuconv train: interrupted in epoch 3; the last completed epoch is saved in "
                                f"{tmp_path / 'ck'}: continue with gpuconv train --resume {tmp_path / 'ck'} "
                                f"--epochs 5"]
    state = training.read_checkpoint(tmp_path / "ck")
    assert state["epoch"] == 2 and len(state["history"]) == 2


def test_ctrl_c_without_a_checkpoint_dir_saves_into_the_default_one(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    interrupt_in_epoch(monkeypatch, 2)
    rc, out, err = train(capsys, "--epochs", 3)
    assert rc == 130 and f"saved in {cli.DEFAULT_INTERRUPT_DIR}" in err
    assert training.read_checkpoint(tmp_path / cli.DEFAULT_INTERRUPT_DIR)["epoch"] == 1


def test_resuming_with_other_epochs_is_refused_where_the_schedule_depends_on_them(capsys, tmp_path):
    assert train(capsys, "--epochs", 1, "--scheduler", "onecycle", "--checkpoint-dir", tmp_path / "ck")[0] == 0
    rc, out, err = train(capsys, "--resume", tmp_path / "ck", "--epochs", 3)
    one_error(rc, out, err, r"--epochs 3: this run's --scheduler onecycle was planned for 1 epochs; resume with "
                            r"--epochs 1$")


def test_resuming_mid_run_is_bitwise_equal(capsys, tmp_path, monkeypatch):
    args = ("--epochs", 4, "--scheduler", "cosine", "--augment", "--model", "small_cnn")
    assert train(capsys, *args, "--save", tmp_path / "whole.npz")[0] == 0
    with monkeypatch.context() as m:
        interrupt_in_epoch(m, 3)
        assert train(capsys, *args, "--checkpoint-dir", tmp_path / "ck")[0] == 130
    rc, out, err = train(capsys, "--resume", tmp_path / "ck", "--epochs", 4, "--save", tmp_path / "resumed.npz")
    assert rc == 0, err
    assert "resuming from" in out and len(re.findall(r"^epoch +\d+/4 ", out, re.M)) == 2
    whole, resumed = nn.load_arrays(tmp_path / "whole.npz"), nn.load_arrays(tmp_path / "resumed.npz")
    for name in whole:
        if name != nn.module.METADATA:
            assert whole[name].tobytes() == resumed[name].tobytes(), name
    log = [json.loads(line) for line in (tmp_path / "ck" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]


def test_a_non_finite_loss_stops_the_run(capsys):
    rc, out, err = train(capsys, "--epochs", 3, "--lr", 1e12, "--optimizer", "sgd", "--momentum", 0)
    assert rc == 1 and "Traceback" not in err and "Warning" not in err
    assert re.search(r"^gpuconv train: the loss became (nan|inf) in epoch \d+, step \d+: training stopped", err, re.M)


def test_a_closed_pipe_ends_quietly():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(f"{sys.executable} -m gpuconv train --device cpu --epochs 3 | head -1", shell=True,
                          capture_output=True, text=True, env=env, cwd=ROOT,
                          executable="/bin/bash")
    assert proc.stdout.startswith("data: ") and proc.stdout.count("\n") == 1
    assert proc.stderr == ""


# -------------------------------------------------------------- bad data ---

BAD_DATA = [
    ("huge-label", dict(y_train=np.where(np.arange(40) == 3, 10 ** 9, np.arange(40) % 2)), r"y_train"),
    ("negative-label", dict(y_train=np.where(np.arange(40) == 3, -1, np.arange(40) % 2)), r"y_train.*-1"),
    ("unseen-test-label", dict(y_test=np.arange(10) % 3), r"y_test.*2"),
    ("one-based", dict(y_train=np.arange(40) % 2 + 1, y_test=np.arange(10) % 2 + 1), r"1-based"),
    ("empty", dict(x_train=np.zeros((0, 8, 8), np.uint8), y_train=np.zeros(0, np.int64)), r"x_train"),
    ("channels-last", dict(x_train=np.zeros((40, 28, 28, 3), np.float32), x_test=np.zeros((10, 28, 28, 3), np.float32)),
     r"channels-last"),
    ("nan-pixels", dict(x_train=np.where(np.arange(40 * 64).reshape(40, 8, 8) == 5, np.nan, 0.5)), r"x_train.*finite"),
]


@pytest.mark.parametrize("overrides,pattern", [c[1:] for c in BAD_DATA], ids=[c[0] for c in BAD_DATA])
def test_bad_data_is_refused_before_training_naming_the_file_and_array(capsys, tmp_path, overrides, pattern):
    path = npz(tmp_path / "d.npz", **overrides)
    rc, out, err = train(capsys, "--data", path)
    one_error(rc, out, err, pattern)
    assert "d.npz" in err and len(err.splitlines()) <= 3


def test_a_text_file_named_npz_is_refused_without_pickle_advice(capsys, tmp_path):
    (tmp_path / "t.npz").write_text("hello\n")
    rc, out, err = train(capsys, "--data", tmp_path / "t.npz")
    one_error(rc, out, err, r"t\.npz")
    assert "pickle" not in err


def test_float_images_in_0_255_train_with_a_note(capsys, tmp_path):
    rng = np.random.default_rng(1)
    y = np.arange(60) % 2
    x = rng.uniform(0, 60, (60, 8, 8))
    x[y == 0, 3, :] = 255.0
    x[y == 1, :, 3] = 255.0
    path = npz(tmp_path / "f.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    rc, out, err = train(capsys, "--data", path, "--epochs", 5)
    assert rc == 0, err
    assert re.search(r"^note: .*normali[sz]", out, re.M)
    assert float(re.search(r"test accuracy ([\d.]+)%", out).group(1)) > 90


# ------------------------------------------------------- eval and predict ---

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    directory = tmp_path_factory.mktemp("trained")
    weights = directory / "w.npz"
    rc = cli.main(["train", "--device", "cpu", "--epochs", "3", "--save", str(weights), "--plot",
                   str(directory / "curves.png"), "--log", str(directory / "log.jsonl")])
    assert rc == 0
    return directory, weights


def test_weights_files_describe_themselves_and_get_normal_permissions(trained):
    directory, weights = trained
    meta = nn.read_metadata(weights)
    assert meta["model"]["name"] == "small_cnn" and meta["input_shape"] == [1, 8, 8]
    assert meta["classes"] == [str(i) for i in range(10)] and len(meta["normalization"]["mean"]) == 1
    assert meta["data"] == {"dataset": "digits", "seed": 0}
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(weights).st_mode) == 0o666 & ~mask


def test_eval_reports_the_trained_accuracy_per_class_and_the_confusion_matrix(capsys, trained):
    directory, weights = trained
    log = [json.loads(line) for line in (directory / "log.jsonl").read_text().splitlines()]
    rc, out, err = run(capsys, "eval", "--weights", weights, "--device", "cpu")
    assert rc == 0, err
    assert f"accuracy {log[-1]['test_accuracy']:.2%} on 360 images" in out
    assert "per class:" in out and "confusion matrix" in out
    rows = [line for line in out.splitlines() if re.match(r"^\s+\d(\s+\d+){10}$", line)]
    assert len(rows) == 10 and sum(sum(map(int, r.split()[1:])) for r in rows) == 360


def test_predict_prints_one_line_per_image_agreeing_with_eval(capsys, trained, tmp_path):
    directory, weights = trained
    from sklearn.datasets import load_digits
    images = load_digits().images[:7] / 16.0  # the scale the digits were trained in
    np.save(tmp_path / "img.npy", images)
    rc, out, err = run(capsys, "predict", "--weights", weights, "--images", tmp_path / "img.npy", "--device", "cpu")
    assert rc == 0, err
    lines = out.splitlines()
    assert len(lines) == 7 and all(re.match(r"^\d+\t\d\t[01]\.\d{4}$", line) for line in lines)
    assert sum(int(line.split("\t")[1]) == t for line, t in zip(lines, load_digits().target[:7])) >= 5
    rc, out, err = run(capsys, "predict", "--weights", weights, "--images", tmp_path / "img.npy", "--output",
                       tmp_path / "p.tsv", "--device", "cpu")
    assert rc == 0 and (tmp_path / "p.tsv").read_text().splitlines()[1:] == lines


def test_predict_refuses_images_of_another_shape(capsys, trained, tmp_path):
    _, weights = trained
    np.save(tmp_path / "img.npy", np.zeros((3, 28, 28, 3), np.uint8))
    rc, out, err = run(capsys, "predict", "--weights", weights, "--images", tmp_path / "img.npy")
    assert rc == 2 and "the model takes images of 1x8x8" in err and "Traceback" not in err


def test_the_plot_and_the_log(trained):
    directory, _ = trained
    assert (directory / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (directory / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert set(records[0]) == {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr",
                               "seconds", "images_per_second", "precision"}
    assert records[0]["precision"] == "fp32"


# ----------------------------------------------------------------- the rest ---

def test_version_help_and_python_m_gpuconv(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert re.fullmatch(r"gpuconv \d+\.\d+\.\d+\n", capsys.readouterr().out)
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 25)" in text and "(default: None)" not in text and "(default: small_cnn)" in text and "``" not in text
    proc = subprocess.run([sys.executable, "-m", "gpuconv", "--version"], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0 and proc.stdout.startswith("gpuconv ")


def test_no_progress_bar_when_stderr_is_not_a_terminal(capsys):
    rc, out, err = train(capsys, "--epochs", 1)
    assert rc == 0 and err == ""


def test_resuming_a_finished_run_only_writes_its_weights(capsys, tmp_path):
    assert train(capsys, "--epochs", 1, "--checkpoint-dir", tmp_path / "ck")[0] == 0
    rc, out, err = train(capsys, "--resume", tmp_path / "ck", "--epochs", 1, "--save", tmp_path / "w.npz")
    assert rc == 0, err
    assert not re.search(r"^epoch +\d", out, re.M)  # nothing left to train
    assert nn.read_metadata(tmp_path / "w.npz")["result"]["epochs"] == 1


def test_predict_refuses_an_empty_file(capsys, trained, tmp_path):
    _, weights = trained
    np.save(tmp_path / "none.npy", np.zeros((0, 8, 8), np.float32))
    rc, out, err = run(capsys, "predict", "--weights", weights, "--images", tmp_path / "none.npy")
    assert rc == 2 and "holds no images" in err
