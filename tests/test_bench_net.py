"""python -m bench net: a whole network's training step, gpuconv (after convert) against PyTorch's convolutions,
run tiny on the CPU; its result files and its refusals."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from bench import net  # noqa: E402
from bench.__main__ import main as bench_main  # noqa: E402


@pytest.mark.parametrize("model", ["resnet18", "mobilenet"])
def test_bench_net_times_both_implementations_and_writes_its_files(tmp_path, capsys, model):
    prefix = tmp_path / "out" / "net"
    code = bench_main(["net", "--model", model, "--batch", "2", "--size", "32", "--steps", "1", "--warmup", "0",
                       "--device", "cpu", "--threads", "1", "--out", str(prefix)])
    assert code == 0, capsys.readouterr().err
    result = json.loads(prefix.with_suffix(".json").read_text())
    assert result["kind"] == "net" and result["model"] == model and result["device_kind"] == "cpu"
    assert result["model_source"].startswith(("torchvision", "torch.nn"))
    assert result["conv_flops_per_step"] > 0 and result["parameters"] > 1_000_000
    assert "openblas_coretype" in result["environment"]
    records = {r["impl"]: r for r in result["records"]}
    assert set(records) == {"gpuconv", "torch-cpu"} and records["gpuconv"]["settings"] == {"algo": "auto"}
    for r in records.values():
        assert r["error"] is None and r["runs"] == 1 and r["time_ms"] > 0 and r["first_step_ms"] > 0
        assert r["forward_ms"] > 0 and r["backward_ms"] > 0 and r["optimizer_ms"] > 0 and r["images_per_s"] > 0
        assert r["grad_max_rel_err"] > 0  # against float64; not bounded: BatchNorm over 2 images is chaotic
    mine = records["gpuconv"]
    assert mine["ratio_vs_baseline"] > 0 and mine["tolerance"] == 10 * records["torch-cpu"]["grad_max_rel_err"]
    assert mine["correct"] == (mine["grad_max_rel_err"] <= mine["tolerance"])
    assert records["gpuconv"]["loss"] == pytest.approx(records["torch-cpu"]["loss"], rel=1e-2)  # the same step
    markdown = prefix.with_suffix(".md").read_text()
    assert f"# gpuconv benchmark: {model} training step" in markdown and "OPENBLAS_CORETYPE" in markdown
    assert "| gpuconv |" in markdown and "| torch-cpu |" in markdown
    assert prefix.with_suffix(".png").stat().st_size > 1000
    assert "gpuconv: " in capsys.readouterr().out


def test_a_failing_step_is_recorded_and_the_files_still_written(tmp_path, capsys):
    """BatchNorm refuses one value per channel (batch 1, 1x1 pixels in MobileNet's last stage at 32x32)."""
    prefix = tmp_path / "net"
    code = bench_main(["net", "--model", "mobilenet", "--batch", "1", "--size", "32", "--steps", "1",
                       "--device", "cpu", "--out", str(prefix)])
    assert code == 1
    result = json.loads(prefix.with_suffix(".json").read_text())
    assert all("more than 1 value per channel" in r["error"] for r in result["records"])
    assert "## Errors and wrong results" in prefix.with_suffix(".md").read_text()
    capsys.readouterr()


@pytest.mark.parametrize("argv, message", [
    (["--model", "vgg"], "unknown model 'vgg'; choose one of ('resnet18', 'resnet50', 'mobilenet')"),
    (["--steps", "0"], "steps >= 1"),
    (["--size", "16"], "size >= 32"),
])
def test_bad_arguments_exit_2_with_one_line(capsys, argv, message):
    assert bench_main(["net", "--device", "cpu", *argv]) == 2
    assert message in capsys.readouterr().err


def test_default_output_prefix_names_device_model_batch_and_size():
    result = {"device": "AMD EPYC", "device_kind": "cpu", "created": "2026-01-02T03:04:05+00:00",
              "model": "resnet18", "batch": 8, "input_size": 224}
    assert net.default_out_prefix(result).name == "amd-epyc_net-resnet18_b8_20260102-030405"
    assert net.default_out_prefix({**result, "input_size": 96}).name == "amd-epyc_net-resnet18_b8_96px_20260102-030405"


def test_compare_refuses_a_net_result(tmp_path, capsys):
    path = tmp_path / "net.json"
    path.write_text(json.dumps({"kind": "net", "records": []}))
    assert bench_main(["compare", str(path), str(path)]) == 2
    assert "is a 'bench net' result" in capsys.readouterr().err
