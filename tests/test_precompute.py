"""Dataset-level precomputation over the result cache, on real FER+ and Stable Diffusion faces
with the small model trained on FER+: hits, misses, invalidation, kill -9 and resume, shards
(``--shard K/N`` and torchrun) equal to one process, and the ``embed | explain | gap`` commands."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from fer_core.backends import InferenceOptions
from fer_core.cache import ResultCache
from fer_core.cli import main
from fer_core.data import FerPlusDataset, open_dataset
from fer_core.errors import InvalidArgument
from fer_core.explain import default_layer, explain
from fer_core.faces import FacePipeline, create_detector
from fer_core.inference import FacePreparer
from fer_core.labels import EMOTIONS
from fer_core.models import load_model
from fer_core.precompute import (EXPLAIN_BATCH_SIZE, Shard, cached_projection, embed_datasets, explain_dataset,
                                 gap_report)

REPO = Path(__file__).resolve().parent.parent
#: The dataset passes without progress bars.
QUIET = InferenceOptions(progress=False)
#: Attribution passes without progress bars, at their default batch size.
QUIET_EXPLAIN = InferenceOptions(batch_size=EXPLAIN_BATCH_SIZE, progress=False)

KILLED_JOB = textwrap.dedent("""
    import sys, time
    import numpy as np
    from fer_core.backends import InferenceOptions
    from fer_core.cache import ResultCache
    from fer_core.data import FerPlusDataset
    from fer_core.models import load_model
    from fer_core.precompute import explain_dataset
    root, model_path, cache_path = sys.argv[1:]
    dataset = FerPlusDataset(root, "test").subset(np.arange(0, 3360, 70))
    def slowly(done):
        print(done, flush=True)
        time.sleep(1.0)
    with ResultCache(cache_path) as cache:
        explain_dataset(load_model(model_path), dataset, cache, "gradcam", map_size=24, on_batch=slowly,
                        options=InferenceOptions(batch_size=8, progress=False))
    print("finished", flush=True)
""")


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def model(tiny_model):
    return load_model(tiny_model)


@pytest.fixture(scope="module")
def faces(ferplus_root):
    """40 FER+ test faces spread over the file list (pre-cropped, 48 px)."""
    return FerPlusDataset(ferplus_root, "test").subset(np.arange(0, 3375, 84)[:40])


@pytest.fixture(scope="module")
def pipeline(face_model_path):
    return FacePipeline(create_detector("mediapipe", model_path=face_model_path), crop_size=48)


def entries(path: Path) -> dict[str, tuple[str, bytes]]:
    with sqlite3.connect(path) as db:
        return {digest: (kind, data) for digest, kind, data in db.execute("SELECT digest, kind, data FROM results")}


def direct_maps(model, dataset, pipeline, side, method="gradcam", target="predicted", **params):
    preparer = FacePreparer(model, pipeline)
    batch = torch.stack([preparer.prepare(dataset, dataset[i]).tensor for i in range(len(dataset))])
    attribution = explain(model, batch, method, target=target, **params)
    maps = F.interpolate(torch.from_numpy(attribution.maps)[:, None], size=(side, side), mode="area")[:, 0]
    return maps.numpy(), np.array(attribution.targets)


def assert_close_maps(stored, expected):
    scale = np.abs(expected).max(axis=(1, 2), keepdims=True)
    assert np.all(np.abs(stored - expected) <= 2e-3 * scale + 1e-12)


def test_explain_hit_miss_maps_and_keypoints(model, faces, pipeline, tmp_path):
    cache = ResultCache(tmp_path / "results.sqlite")
    first = explain_dataset(model, faces.subset(np.arange(24)), cache, "gradcam", map_size=24,
                            face_pipeline=pipeline, options=QUIET_EXPLAIN)
    assert first.computed == 24 and len(first.table) == 24 and first.maps.shape == (24, 24, 24)
    expected, targets = direct_maps(model, faces.subset(np.arange(24)), pipeline, 24)
    assert first.table["target"].tolist() == targets.tolist()
    assert_close_maps(first.maps, expected)
    assert first.maps.std() > 0 and not np.allclose(first.maps[0], first.maps[1])
    # keypoints placed on the pre-cropped faces by the detector: eyes level and above the mouth
    located = np.isfinite(first.keypoints).all(axis=(1, 2))
    assert located.mean() >= 0.9
    points = first.keypoints[located]
    assert np.all(points[:, 0, 0] < points[:, 1, 0])            # right eye is image-left of the left eye
    assert np.all(points[:, [0, 1], 1].max(axis=1) < points[:, 3, 1])  # both eyes above the mouth
    assert np.all((points > -0.1) & (points < 1.1))

    calls = []
    handle = model.module.register_forward_hook(lambda module, args, out: calls.append(len(out)))
    again = explain_dataset(model, faces.subset(np.arange(24)), cache, "gradcam", map_size=24,
                            face_pipeline=pipeline, options=QUIET_EXPLAIN)
    handle.remove()
    assert again.computed == 0 and calls == []
    assert np.array_equal(again.maps, first.maps) and np.array_equal(again.keypoints, first.keypoints, equal_nan=True)
    # the default layer named explicitly (the dashboard names it) is the same stored result
    named = explain_dataset(model, faces.subset(np.arange(24)), cache, "gradcam", map_size=24,
                            layer=default_layer(model), face_pipeline=pipeline, options=QUIET_EXPLAIN)
    assert named.computed == 0 and np.array_equal(named.maps, first.maps)
    more = explain_dataset(model, faces.subset(np.arange(32)), cache, "gradcam", map_size=24,
                           face_pipeline=pipeline, options=QUIET_EXPLAIN)
    assert more.computed == 8 and np.array_equal(more.maps[:24], first.maps)
    # maps are keyed by the class explained: the true class reuses the predicted one's map where they agree
    true = explain_dataset(model, faces.subset(np.arange(24)), cache, "gradcam", target="true", map_size=24,
                           face_pipeline=pipeline, options=QUIET_EXPLAIN)
    differ = (true.table["target"] != first.table["target"]).to_numpy()
    assert true.computed == int(differ.sum()) > 0
    assert np.array_equal(true.maps[~differ], first.maps[~differ])
    assert not np.allclose(true.maps[differ], first.maps[differ])
    with pytest.raises(InvalidArgument, match=r"explain_dataset\(\) argument 'method': expected one of \[.*'gradcam'.*"
                                              r"\], got 'nope'"):
        explain_dataset(model, faces, cache, "nope")
    with pytest.raises(InvalidArgument, match=r"explain_dataset\(\) argument 'map_size': expected an integer >= 4, "
                                              r"got 2"):
        explain_dataset(model, faces, cache, "gradcam", map_size=2)
    with pytest.raises(InvalidArgument, match="has no layer"):
        explain_dataset(model, faces, cache, "saliency", layer="blocks.5")
    with pytest.raises(InvalidArgument, match="emotion of the model"):
        explain_dataset(model, faces, cache, "gradcam", target="Joy")


def test_detected_faces_keep_their_keypoints_and_the_face_entry_is_unchanged(model, project, pipeline,
                                                                             tmp_path):
    dataset = open_dataset("sd_faces", project / "data").subset(np.arange(0, 476, 60))
    cache = ResultCache(tmp_path / "results.sqlite")
    result = explain_dataset(model, dataset, cache, "saliency", face_pipeline=pipeline, options=QUIET_EXPLAIN)
    assert result.computed == len(dataset) == 8
    assert np.isfinite(result.keypoints).all()
    assert np.all(result.keypoints[:, [0, 1], 1].max(axis=1) < result.keypoints[:, 3, 1])
    # aligned crops: the eyes are level
    assert np.abs(result.keypoints[:, 0, 1] - result.keypoints[:, 1, 1]).max() < 0.02
    kinds = cache.info()["kinds"]
    assert kinds["face"]["entries"] == 8 and kinds["face"]["bytes"] == 8 * 6 * 4   # [found, score, box] as before
    assert kinds["keypoints"]["bytes"] == 8 * 12 * 4


def test_other_model_preprocessing_or_settings_are_recomputed(model, tiny_model, faces, tmp_path):
    cache = ResultCache(tmp_path / "results.sqlite")
    subset = faces.subset(np.arange(16))
    base = explain_dataset(model, subset, cache, "integrated_gradients", target="Happiness", map_size=24,
                           options=QUIET_EXPLAIN, n_steps=8)
    other = load_model(tiny_model)
    with torch.no_grad():
        other.module.get_classifier().weight.mul_(-1.0)
    changed = explain_dataset(other, subset, cache, "integrated_gradients", target="Happiness", map_size=24,
                              options=QUIET_EXPLAIN, n_steps=8)
    assert changed.computed == 16
    assert_close_maps(changed.maps, direct_maps(other, subset, None, 24, "integrated_gradients", "Happiness",
                                                  n_steps=8)[0])
    assert np.corrcoef(changed.maps.ravel(), base.maps.ravel())[0, 1] < -0.9   # the flipped head flips the map
    shifted = load_model(tiny_model)
    shifted.mean = (0.5, 0.5, 0.5)
    assert explain_dataset(shifted, subset, cache, "integrated_gradients", target="Happiness", map_size=24,
                           options=QUIET_EXPLAIN, n_steps=8).computed == 16
    steps = explain_dataset(model, subset, cache, "integrated_gradients", target="Happiness", map_size=24,
                            options=QUIET_EXPLAIN, n_steps=16)
    assert steps.computed == 16 and steps.params["n_steps"] == 16
    assert explain_dataset(model, subset, cache, "integrated_gradients", target="Happiness", map_size=24,
                           options=QUIET_EXPLAIN, n_steps=8).computed == 0


@pytest.mark.slow
def test_killed_job_resumes_to_the_uninterrupted_result(model, tiny_model, ferplus_root, tmp_path):
    script = tmp_path / "job.py"
    script.write_text(KILLED_JOB)
    cache_path = tmp_path / "killed.sqlite"
    job = subprocess.Popen([sys.executable, str(script), str(ferplus_root), str(tiny_model), str(cache_path)],
                           stdout=subprocess.PIPE, text=True, env=environment())
    lines = []
    for line in job.stdout:
        lines.append(line.strip())
        if len(lines) == 2:
            job.send_signal(signal.SIGKILL)
            break
    job.wait(timeout=60)
    assert job.returncode == -signal.SIGKILL and "finished" not in lines
    with sqlite3.connect(cache_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    dataset = FerPlusDataset(ferplus_root, "test").subset(np.arange(0, 3360, 70))
    with ResultCache(cache_path) as cache:
        stored = cache.info()["kinds"]["attribution"]["entries"]
        assert 16 <= stored < len(dataset)          # whole batches of 8, the job did not finish
        resumed = explain_dataset(model, dataset, cache, "gradcam", map_size=24,
                                  options=InferenceOptions(batch_size=8, progress=False))
    assert resumed.computed == len(dataset) - stored
    with ResultCache(tmp_path / "whole.sqlite") as cache:
        whole = explain_dataset(model, dataset, cache, "gradcam", map_size=24,
                                options=InferenceOptions(batch_size=8, progress=False))
    assert whole.computed == len(dataset)
    assert_close_maps(resumed.maps, whole.maps)
    assert resumed.table.equals(whole.table)
    assert set(entries(cache_path)) == set(entries(tmp_path / "whole.sqlite"))


def cli(args, capsys):
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_shards_together_equal_one_process(project, tiny_model, face_model_path, tmp_path, capsys):
    settings = ["--config", str(project / "configs" / "config.yaml"), "--set", f"faces.mediapipe_model={face_model_path}"]
    sharded, single = tmp_path / "sharded", tmp_path / "single"
    job = ["--model", str(tiny_model), "--dataset", "ferplus:test", "--limit", "30"]
    processes = [subprocess.Popen([sys.executable, "-m", "fer_core", *settings, "--set", f"paths.cache_dir={sharded}",
                                   "explain", *job, "--method", "gradcam", "--map-size", "24", "--shard", f"{k}/2"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=environment(),
                                  cwd=project) for k in range(2)]
    outputs = [json.loads(p.communicate(timeout=120)[0]) for p in processes]
    assert [p.returncode for p in processes] == [0, 0]
    assert [o["faces"] for o in outputs] == [15, 15] and [o["shard"] for o in outputs] == ["0/2", "1/2"]
    whole = cli([*settings, "--set", f"paths.cache_dir={single}", "explain", *job, "--method", "gradcam",
                 "--map-size", "24"], capsys)
    assert whole["computed"] == 30
    split_entries, single_entries = entries(sharded / "results.sqlite"), entries(single / "results.sqlite")
    assert set(split_entries) == set(single_entries) and len(single_entries) == 30 * 6
    for digest, (kind, data) in single_entries.items():
        if kind in ("attribution", "logits", "embedding"):
            dtype = np.float16 if kind == "attribution" else np.float32
            assert np.allclose(np.frombuffer(split_entries[digest][1], dtype), np.frombuffer(data, dtype), atol=2e-3)
        elif kind == "diagnostics":   # the map's scale, equal up to float rounding across batchings
            assert json.loads(split_entries[digest][1]).keys() == json.loads(data).keys() == {"map_scale"}
            assert json.loads(split_entries[digest][1])["map_scale"] == pytest.approx(json.loads(data)["map_scale"],
                                                                                      rel=1e-4)
        else:
            assert split_entries[digest] == (kind, data)
    # predict: each shard writes its part; the last one merges them into the single-process table
    out = tmp_path / "predictions"
    for k in range(2):
        assert main([*settings, "predict", *job, "--out", str(out), "--shard", f"{k}/2"]) == 0
    assert main([*settings, "predict", *job, "--out", str(tmp_path / "one")]) == 0
    merged, one = pd.read_parquet(out / "predictions.parquet"), pd.read_parquet(tmp_path / "one" / "predictions.parquet")
    assert merged["key"].tolist() == one["key"].tolist() and merged["pred"].tolist() == one["pred"].tolist()
    assert np.allclose(merged["prob_Happiness"], one["prob_Happiness"], atol=1e-5)
    capsys.readouterr()


@pytest.mark.slow
def test_torchrun_embed_splits_the_data(project, tiny_model, tmp_path, capsys):
    settings = ["--config", str(project / "configs" / "config.yaml"), "--set", "faces.detector=none"]
    job = ["embed", "--model", str(tiny_model), "--dataset", "ferplus:test", "--limit", "40", "--projection", "pca"]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "fer_core", *settings, "--set", f"paths.cache_dir={tmp_path / 'ranks'}", *job],
                         capture_output=True, text=True, env=environment(), cwd=project, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    summaries = [json.loads(block) for block in run.stdout.replace("}\n{", "}\n\x00{").split("\x00")]
    assert sorted(s["shard"] for s in summaries) == ["0/2", "1/2"] and [s["faces"] for s in summaries] == [20, 20]
    assert ["pca"] in [s["projections_computed"] for s in summaries]   # rank 0 projects every face once all are in
    single = cli([*settings, "--set", f"paths.cache_dir={tmp_path / 'single'}", *job], capsys)
    assert single["computed"] == 40
    ranks, one = entries(tmp_path / "ranks" / "results.sqlite"), entries(tmp_path / "single" / "results.sqlite")
    assert set(ranks) == set(one) and len(one) == 40 * 3 + 1
    for digest, (kind, data) in one.items():
        assert np.allclose(np.frombuffer(ranks[digest][1], np.float32), np.frombuffer(data, np.float32), atol=1e-4)


def test_embeddings_and_projections_are_cached_by_the_set_of_faces(model, faces, project, pipeline, tmp_path):
    cache = ResultCache(tmp_path / "results.sqlite")
    synthetic = open_dataset("sd_faces", project / "data").subset(np.arange(0, 476, 40))
    first = embed_datasets(model, {"real": faces, "synthetic": synthetic}, cache, pipeline,
                           projections=("pca", "tsne"), options=QUIET)
    assert first.computed == len(faces) + len(synthetic) and first.projections_computed == ("pca", "tsne")
    assert first.table["domain"].tolist() == ["real"] * len(faces) + ["synthetic"] * len(synthetic)
    preparer = FacePreparer(model, None)
    batch = torch.stack([preparer.prepare(faces, faces[i]).tensor for i in range(len(faces))])
    with torch.no_grad():
        features, logits = model.features(batch).numpy(), model.logits(batch).numpy()
    assert np.allclose(first.features[:len(faces)], features, atol=1e-5)
    assert first.table["pred"][:len(faces)].tolist() == logits.argmax(1).tolist()
    assert first.table["emotion"][:len(faces)].tolist() == [EMOTIONS[faces[i].label] for i in range(len(faces))]
    swapped = embed_datasets(model, {"synthetic": synthetic, "real": faces}, cache, pipeline,
                             projections=("pca", "tsne"), options=QUIET)
    assert swapped.computed == 0 and swapped.projections_computed == ()
    merged = first.table.merge(swapped.table, on="content", suffixes=("", "_swapped"))
    assert len(merged) == len(first.table)
    for column in ("pca_x", "pca_y", "tsne_x", "tsne_y"):
        assert np.allclose(merged[column], merged[f"{column}_swapped"], atol=1e-5)
    # the PCA coordinates are the features' first two principal components
    centred = first.features - first.features.mean(0)
    components = np.linalg.svd(centred, full_matrices=False)[2][:2]
    assert np.allclose(np.abs(centred @ components.T), np.abs(first.table[["pca_x", "pca_y"]].to_numpy()), atol=1e-3)
    fewer = embed_datasets(model, {"real": faces}, cache, pipeline, projections=("pca",), options=QUIET)
    assert fewer.computed == 0 and fewer.projections_computed == ("pca",)   # another set of faces


def test_gap_report_separates_real_from_synthetic(model, ferplus_root, project, pipeline, tmp_path):
    real = FerPlusDataset(ferplus_root, "test").subset(np.arange(0, 3375, 28))
    synthetic = open_dataset("sd_faces", project / "data").subset(np.arange(0, 476, 4))
    cache = ResultCache(tmp_path / "results.sqlite")
    report = gap_report(model, real, synthetic, cache, pipeline, sample=100, out_dir=tmp_path / "gap", options=QUIET)
    assert report["domain_classifier"]["balanced_accuracy"] > 0.7   # chance: 0.5
    assert report["mmd_rbf"]["p_value"] < 0.05
    assert report["real"]["faces"] == 121 and report["synthetic"]["faces"] == 119
    assert report["n_real"] == report["n_synthetic"] == 100
    assert json.loads(Path(report["path"]).read_text())["mmd_rbf"] == report["mmd_rbf"]
    again = gap_report(model, real, synthetic, cache, pipeline, sample=100, options=QUIET)
    assert again["computed_features"] == 0 and again["mmd_rbf"] == report["mmd_rbf"]


def test_cli_embed_explain_gap(project, tiny_model, face_model_path, tmp_path, capsys):
    settings = ["--config", str(project / "configs" / "config.yaml"), "--set", f"paths.cache_dir={tmp_path}",
                "--set", f"paths.runs_dir={tmp_path / 'runs'}",
                "--set", f"faces.mediapipe_model={face_model_path}", "--set", "inference.batch_size=16"]
    model = ["--model", str(tiny_model)]
    embedded = cli([*settings, "embed", *model, "--dataset", "ferplus:test", "--dataset", "sd_faces", "--limit", "24",
                    "--projection", "pca,tsne"], capsys)
    assert sorted(embedded["datasets"].values()) == [24, 24] and embedded["computed"] == 48
    assert {k.split("[")[0] for k in embedded["datasets"]} == {"ferplus:test", "sd_faces"}  # sampled labels say so
    assert embedded["projections_computed"] == ["pca", "tsne"]
    explained = cli([*settings, "explain", *model, "--dataset", "sd_faces", "--limit", "24", "--method", "occlusion",
                     "--param", "window=8", "--param", "stride=8", "--target", "true"], capsys)
    assert explained["computed"] == 24 and explained["params"]["window"] == 8 and explained["keypoints_located"] == 24
    gap = cli([*settings, "gap", *model, "--real", "ferplus:test", "--synthetic", "sd_faces", "--limit", "24"], capsys)
    assert gap["computed_features"] == 0 and Path(gap["path"]).parent == tmp_path / "runs" / "gap"
    assert main([*settings, "explain", *model, "--dataset", "sd_faces", "--method", "nope"]) == 2
    assert "explain() argument 'method': expected one of" in capsys.readouterr().err
    assert main([*settings, "embed", *model, "--dataset", "nowhere"]) == 2
    assert "unknown dataset 'nowhere'" in capsys.readouterr().err
    assert main([*settings, "embed", *model, "--dataset", "sd_faces", "--shard", "2/2"]) == 2
    assert "K counts from 0" in capsys.readouterr().err


def test_shard_blocks_cover_the_data_once():
    blocks = [list(Shard(k, 3).block(10)) for k in range(3)]
    assert sum(blocks, []) == list(range(10)) and [len(b) for b in blocks] == [3, 3, 4]
    assert Shard.parse(" 1 / 4 ") == Shard(1, 4)
    for text in ("4/4", "a/b", "1", "-1/2"):
        with pytest.raises(InvalidArgument):
            Shard.parse(text)
    assert Shard(np.int64(1), 2).block(4) == range(2, 4)
    with pytest.raises(InvalidArgument, match=r"Shard\(\) argument 'count': expected an integer >= 1, got 0"):
        Shard(0, 0)
    with pytest.raises(InvalidArgument, match=r"Shard\(\) argument 'index': expected an integer >= 0, got True"):
        Shard(True, 2)
    with pytest.raises(InvalidArgument, match=r"index 2 is outside 0..1 \(K counts from 0"):
        Shard(2, 2)


def test_dataset_passes_check_their_arguments_before_any_work():
    # the checks run before the model, datasets or cache are touched: None stands in for them
    with pytest.raises(InvalidArgument, match=r"gap_report\(\) argument 'sample': expected an integer >= 5 or None, "
                                              r"got 4"):
        gap_report(None, None, None, None, sample=4)
    with pytest.raises(InvalidArgument, match=r"cached_projection\(\) argument 'method': expected one of \[.*'pca'"):
        cached_projection(None, None, None, None, "mds")
    with pytest.raises(InvalidArgument, match=r"'projections': unknown projection\(s\) \['mds', 'lle'\]"):
        embed_datasets(None, {}, None, projections=("pca", "mds", "lle"))
