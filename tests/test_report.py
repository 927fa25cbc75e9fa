"""``fer-core report`` and ``fer-core regions`` on a small project: the tiny model scores, explains
and embeds ten real FER+ and ten Stable Diffusion faces, then every research question is
exported. Checked: every file the report lists exists and opens (PDF structure, PNG, SVG,
LaTeX booktabs), the numbers are the runs' own, each figure carries its protocol, report.md
names the commands and run ids, and a missing input is named with the command that makes it."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fer_core.cli import main
from fer_core.data.registry import open_dataset
from fer_core.report import export_zip
from fer_core.report.rq2 import level_table
from fer_core.runs import Run, trained_by, trained_on
from tests.conftest import REPO

#: Faces of each dataset every step uses (a stratified sample, seed 0).
FACES = "10"
#: Bootstrap / permutation sizes: small, the numbers are not what is checked here.
STATISTICS = ["--resamples", "100", "--permutations", "199"]


@pytest.fixture(scope="module")
def report_project(project, tiny_model) -> tuple[Path, list[str]]:
    """The shared project with its own runs and cache folders (``configs/report.yaml``), where the
    tiny model was evaluated on real and synthetic faces, embedded them, mapped them with
    Grad-CAM (``fer-core regions``), measured the gap and checked Grad-CAM's sanity, beside a
    sweep summary in ``fer-core sweep``'s format; and the ``--config`` arguments."""
    config = project / "configs" / "report.yaml"
    text = (project / "configs" / "config.yaml").read_text()
    config.write_text(text.replace("cache_dir: cache", "cache_dir: cache-report").replace("runs_dir: runs",
                                                                                          "runs_dir: runs-report"))
    cli = ["--config", str(config)]
    model = ["--model", str(tiny_model)]
    sample = ["--limit", FACES]
    for step in (["evaluate", *model, "--dataset", "ferplus:test", *sample, "--bootstrap", "100", "--name", "eval-real"],
                 ["evaluate", *model, "--dataset", "sd_faces", *sample, "--bootstrap", "100", "--name", "eval-synthetic"],
                 ["embed", *model, "--dataset", "ferplus:test", "--dataset", "sd_faces", *sample, "--projection", "pca"],
                 ["regions", *model, "--real", "ferplus:test", "--synthetic", "sd_faces", *sample, "--method", "gradcam",
                  *STATISTICS, "--out", str(project / "runs-report" / "regions")],
                 ["gap", *model, "--real", "ferplus:test", "--synthetic", "sd_faces", *sample],
                 ["sanity", *model, "--dataset", "ferplus:test", "--faces", "4", "--method", "gradcam", "--depth", "1",
                  "--steps", "4"]):
        assert main([*cli, *step]) == 0, step
    sweep = project / "runs-report" / "sweep"
    sweep.mkdir()
    (sweep / "summary.json").write_text(json.dumps(SWEEP_SUMMARY))
    return project, cli


#: A two-level, two-seed sweep summary as ``fer-core sweep`` writes it (numbers made up: this
#: checks how the report reads the format, not a sweep).
SWEEP_SUMMARY = {
    "experiment": "sweep", "design": "share", "level": "fraction", "levels": [0.0, 0.5], "seeds": [0, 1],
    "real_train": "ferplus:train", "synthetic_train": "sd_faces:train", "val": "ferplus:valid", "recipe": "hsemotion",
    "init": {"fingerprint": "abc123"}, "settings": {"architecture": "tiny", "input_size": 48, "seed": 0},
    "rows": [{"fraction": f, "seed": s, "test_set": "ferplus:test", "n": 40, "accuracy": a, "accuracy_ci_low": a - .1,
              "accuracy_ci_high": a + .1, "macro_f1": a / 2, "evaluation": f"eval-{f}-{s}"}
             for f, s, a in ((0.0, 0, 0.60), (0.0, 1, 0.64), (0.5, 0, 0.50), (0.5, 1, 0.52))],
    "by_level": [{"test_set": "ferplus:test", "fraction": f, "seeds": 2, "n": 40, "accuracy_mean": m,
                  "accuracy_sd": sd, "accuracy_ci_low": m - 0.2, "accuracy_ci_high": m + 0.2, "macro_f1_mean": m / 2}
                 for f, m, sd in ((0.0, 0.62, 0.028), (0.5, 0.51, 0.014))],
    "statistics": {"ferplus:test": {
        "protocol": "Cochran's Q over the mixes, paired by seed and test face", "faces": 40, "seeds": [0, 1],
        "cochran_q": {"q": 4.5, "df": 1, "p_value": 0.034, "blocks": 80, "informative_blocks": 22},
        "pairwise_mcnemar": [{"fraction_a": 0.0, "fraction_b": 0.5, "n": 80, "a_only_correct": 15, "b_only_correct": 6,
                              "accuracy_a": 0.62, "accuracy_b": 0.51, "p_value": 0.078, "p_holm": 0.078}],
        "control_between_seeds": [{"fraction": 0.0, "seed_a": 0, "seed_b": 1, "n": 40, "a_only_correct": 3,
                                   "b_only_correct": 4, "p_value": 1.0}]}},
    "provenance": {"command": {"via": "cli", "argv": ["fer-core", "sweep", "--seeds", "0,1"]}},
}


def pdf_pages(path: Path) -> int:
    """The pages of a PDF after checking its structure: the header, ``startxref`` pointing at the
    cross-reference table, every object it lists found at its offset, the trailer's /Root."""
    data = path.read_bytes()
    assert data.startswith(b"%PDF-1."), path
    start = int(re.search(rb"startxref\s+(\d+)\s+%%EOF\s*$", data).group(1))
    assert data[start:start + 4] == b"xref", path
    lines = data[start:].split(b"\n")
    first, count = map(int, lines[1].split())
    for number, entry in enumerate(lines[2:2 + count], first):
        offset, generation, kind = entry.split()
        if kind == b"n":
            assert data[int(offset):].startswith(b"%d %d obj" % (number, int(generation))), (path, number)
    assert re.search(rb"trailer\s*<<.*?/Root \d+ 0 R", data, re.S), path
    return len(re.findall(rb"/Type /Page\b(?!s)", data))


def check_latex(path: Path) -> None:
    """A LaTeX table: compiled with pdflatex when installed, else parsed as a table float holding a
    booktabs tabular whose every row has as many cells as its column spec, specials escaped."""
    text = path.read_text()
    if shutil.which("pdflatex"):
        document = path.with_suffix(".doc.tex")
        document.write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}"
                            f"\\input{{{path.name}}}\\end{{document}}\n")
        done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", document.name],
                              cwd=path.parent, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout[-2000:]
        return
    spec = re.search(r"\\begin\{tabular\}\{([lr]+)\}", text).group(1)
    lines = text.splitlines()
    order = [lines.index(mark) for mark in (r"\toprule", r"\midrule", r"\bottomrule", r"\end{tabular}")]
    assert lines[0] == r"\begin{table}[htbp]" and lines[-1] == r"\end{table}" and order == sorted(order), path
    rows = lines[order[0] + 1:order[1]] + lines[order[1] + 1:order[2]]
    for row in rows:
        assert row.endswith(r" \\"), (path, row)
        cells = re.split(r"(?<!\\)&", row[:-3])
        assert len(cells) == len(spec), (path, row)
        unescaped = re.sub(r"\\[&%$#_{}]|\\text\w+\{\}", "", row[:-3])
        assert not re.search(r"[%$#_{}]", unescaped), (path, row)


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.timeout(300)
def test_report_all_writes_every_listed_file_from_the_runs_and_cache(report_project, capsys):
    project, cli = report_project
    out = project / "runs-report" / "report-all"
    code = main([*cli, "report", "all", "--out", str(out), "--model", str(project / "runs" / "tiny" / "best.safetensors"),
                 "--real", "ferplus:test", "--limit", FACES, "--method", "gradcam", *STATISTICS])
    captured = capsys.readouterr()
    assert code == 0, captured.err  # every input is there: nothing missing
    record = json.loads((out / "report.json").read_text())
    artifacts = {(a["kind"], a["stem"]): a for s in record["sections"] for a in s["artifacts"]}
    listed = {name for a in artifacts.values() for name in a["files"]}
    assert sorted(p.name for p in out.iterdir()) == sorted(listed | {"report.md", "report.json"})
    expected = {  # every kind of table and figure of the four questions, and nothing skipped
        "figure": {"rq1-eval-real-confusion", "rq1-eval-synthetic-confusion", "rq1-transfer-matrix",
                   "rq2-sweep-by-level", "rq3-mean-maps", "rq3-region-shares",
                   "rq4-embedding-pca", "rq4-centroids"},
        "table": {"rq1-overview", "rq1-eval-real-scores", "rq1-eval-real-per-class", "rq1-eval-synthetic-scores",
                  "rq1-eval-synthetic-per-class", "rq1-transfer-matrix", "rq2-sweep-by-level", "rq2-sweep-cochran",
                  "rq2-sweep-pairwise", "rq2-sweep-control", "rq3-faces", "rq3-region-shares",
                  "rq3-region-tests", "rq3-sanity-randomisation", "rq3-sanity-faithfulness", "rq4-misclassifications",
                  "rq4-gap", "rq4-gap-per-class", "rq4-centroids"}}
    model = Run.load(project / "runs-report" / "eval-real").info["model"]["fingerprint"]
    expected["figure"].add(f"rq1-recall-{model}")
    for kind, stems in expected.items():
        assert {stem for (of, stem) in artifacts if of == kind} == stems, kind
    for stem, artifact in artifacts.items():
        suffixes = {Path(name).suffix for name in artifact["files"]}
        assert suffixes == ({".png", ".pdf", ".svg"} if artifact["kind"] == "figure" else {".csv", ".tex"}), stem
        assert len(artifact["protocol"]) > 40, stem  # the protocol beside every figure and table
    for path in out.glob("*.pdf"):
        assert pdf_pages(path) == 1, path
    for path in out.glob("*.png"):
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 200, path
    for path in out.glob("*.svg"):
        assert ElementTree.parse(path).getroot().tag.endswith("svg"), path
    for path in out.glob("*.tex"):
        check_latex(path)

    # the numbers are the runs' own
    metrics = Run.load(project / "runs-report" / "eval-real").metrics
    scores = pd.read_csv(out / "rq1-eval-real-scores.csv").set_index("metric")
    assert scores.loc["accuracy", "value"] == pytest.approx(metrics["accuracy"])
    assert tuple(scores.loc["accuracy", ["ci95_low", "ci95_high"]]) == pytest.approx(tuple(metrics["ci95"]["accuracy"]))
    per_class = pd.read_csv(out / "rq1-eval-real-per-class.csv").set_index("emotion")
    for emotion, values in metrics["per_class"].items():
        assert per_class.loc[emotion, "recall"] == pytest.approx(values["recall"])
        if values["support"]:  # Wilson's interval holds the recall
            assert per_class.loc[emotion, "recall_ci_low"] <= values["recall"] <= per_class.loc[emotion, "recall_ci_high"]
    by_level = pd.read_csv(out / "rq2-sweep-by-level.csv")
    assert list(by_level["accuracy"]) == [0.62, 0.51] and list(by_level["seeds"]) == [2, 2]
    assert pd.read_csv(out / "rq2-sweep-cochran.csv")["p_value"].tolist() == [0.034]
    faces = pd.read_csv(out / "rq3-faces.csv")
    assert faces["real faces"].sum() <= 10 and faces["synthetic faces"].sum() == 10  # SD's 5 classes, all shared
    tests = pd.read_csv(out / "rq3-region-tests.csv")
    assert set(tests["region"]) == {"background", "cheeks_jaw", "forehead", "brows", "nose", "eyes", "mouth"}
    tested = tests[tests["p_value"].notna()]  # a class with under 2 faces a side has no test (NaN)
    assert set(tests.loc[tests["emotion"] == "all", "p_value"].notna()) == {True}
    assert tested["p_holm"].between(0, 1).all() and (tested["p_holm"] >= tested["p_value"]).all()
    gap = pd.read_csv(out / "rq4-gap.csv").set_index("measure")
    stored = json.loads(next((project / "runs-report" / "gap").glob("*.json")).read_text())
    assert gap.loc["domain classifier, balanced accuracy", "value"] == pytest.approx(
        stored["domain_classifier"]["balanced_accuracy"])
    assert "chance 0.5" in gap.loc["domain classifier, balanced accuracy", "control"]

    # report.md: the protocol beside every figure, the commands and run ids behind them
    markdown = (out / "report.md").read_text()
    for (kind, stem), artifact in artifacts.items():
        if kind == "figure":
            assert f"![{artifact['title']}]({stem}.png)\n\n*Protocol:* {artifact['protocol']}" in markdown, stem
    real_run = Run.load(project / "runs-report" / "eval-real")
    assert f"| `eval-real` | `{' '.join(real_run.info['provenance']['command']['argv'])}` |" in markdown
    assert "--dataset ferplus:test --limit 10 --bootstrap 100 --name eval-real" in markdown
    assert "gradcam maps of the true class" in markdown and "--score-over model" in markdown
    assert "mediapipe:" in artifacts["figure", "rq3-mean-maps"]["protocol"]  # the detector that found the SD faces

    regions = json.loads((project / "runs-report" / "regions" / "report.json").read_text())
    assert {a["stem"] for a in regions["sections"][0]["artifacts"]} == {
        "regions-mean-maps", "regions-faces", "regions-region-shares", "regions-region-tests"}


@pytest.mark.shared_data
def test_a_missing_input_names_the_command_that_makes_it(report_project, capsys, tmp_path):
    project, cli = report_project
    code = main([*cli, "report", "rq2", "rq3", "rq4", "--out", str(tmp_path / "report"), "--runs-dir", str(tmp_path),
                 "--model", str(project / "runs" / "tiny" / "best.safetensors"), "--real", "ferplus:test",
                 "--limit", "12", "--method", "saliency"])
    err = capsys.readouterr().err
    assert code == 3  # the report is written, and says it is incomplete
    model = project / "runs" / "tiny" / "best.safetensors"
    for command in (f"sweep --init {model} --real ferplus:train --synthetic sd_faces:train",
                    f"explain --model {model} --dataset ferplus:test --method saliency --target true --limit 12",
                    f"explain --model {model} --dataset sd_faces --method saliency --target true --limit 12",
                    f"embed --model {model} --dataset ferplus:test --dataset sd_faces --limit 12 --projection pca",
                    f"gap --model {model} --real ferplus:test --synthetic sd_faces --limit 12"):
        assert f"make it with: fer-core --config {cli[1]} {command}" in err, command
    assert "12 of 12 faces have no stored saliency maps (target true)" in err
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "## Missing inputs" in markdown and f"`fer-core --config {cli[1]} explain --model {model}" in markdown
    assert main([*cli, "report", "rq9"]) == 2
    assert "expected some of ['rq1', 'rq2', 'rq3', 'rq4', 'all']" in capsys.readouterr().err
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "notes.txt").write_text("keep me")
    assert main([*cli, "report", "rq1", "--out", str(tmp_path / "elsewhere")]) == 2  # never writes into other files
    assert (tmp_path / "elsewhere" / "notes.txt").read_text() == "keep me"


def test_one_seed_sweeps_keep_each_runs_bootstrap_interval():
    rows = SWEEP_SUMMARY["rows"][::2]  # seed 0 only: no spread over seeds to show
    table, level, interval = level_table({"rows": rows})  # written before sweeps had seeds
    assert level == "fraction" and interval.startswith("faces")
    assert list(table["ci_low"]) == pytest.approx([r["accuracy_ci_low"] for r in rows])
    table, _, interval = level_table(SWEEP_SUMMARY)
    assert interval.startswith("seeds") and list(table["ci_high"]) == pytest.approx([0.82, 0.71])


def test_a_page_download_is_a_zip_of_its_tables_with_report_md():
    import io
    import zipfile
    frame = pd.DataFrame({"run": ["a_1", "b&2"], "accuracy": [0.5, np.nan]})
    data = export_zip("runs", "Runs", lambda section: section.table(frame, "table", "Every run", "as listed"))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert sorted(archive.namelist()) == ["report.json", "report.md", "runs-table.csv", "runs-table.tex"]
        assert "b\\&2 & -- \\\\" in archive.read("runs-table.tex").decode()
        assert pd.read_csv(io.BytesIO(archive.read("runs-table.csv")))["run"].tolist() == ["a_1", "b&2"]


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (the scripts folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.shared_data
def test_prior_shift_rereads_an_evaluation_at_each_strength(report_project, capsys):
    """``scripts/prior_shift.py`` (the model card's threshold-or-blind-spot table): its first row is the
    evaluation itself, and raising the strength never adds a Neutral face (FER+ train's most frequent
    class) nor takes away a Contempt one (its rarest), for any model: ``log p - tau * log(prior)``."""
    prior_shift = load_script("prior_shift")
    project, cli = report_project
    run = Run.load(project / "runs-report" / "eval-real")
    taus = [0.0, 0.5, 1.0, 2.0]
    train_labels = np.asarray(open_dataset("ferplus:train", project / "data").labels)
    table = prior_shift.shifted_tables(run, train_labels, taus)
    assert [row["tau"] for row in table] == taus
    assert table[0]["accuracy"] == pytest.approx(run.metrics["accuracy"])
    assert table[0]["recall"] == pytest.approx({c: v["recall"] for c, v in run.metrics["per_class"].items()})
    neutral, contempt = ([row["recall"][c] for row in table] for c in ("Neutral", "Contempt"))
    assert neutral == sorted(neutral, reverse=True) and contempt == sorted(contempt)
    assert neutral[-1] < neutral[0] or contempt[-1] > contempt[0], "a strength of 2 moved nothing"
    assert prior_shift.main([str(run.path), "--prior", "ferplus:train", "--taus", "0,0.5", *cli]) == 0
    printed = capsys.readouterr().out
    assert (f"eval-real: ferplus:test[stratified 10, seed 0], 10 faces, argmax over all of the model's classes, "
            f"prior ferplus:train; as evaluated: accuracy {run.metrics['accuracy']:.4f}\n") in printed
    assert f"\n 0.500 {table[1]['accuracy']:9.4f} {table[1]['macro_f1']:9.4f}  " in printed


@pytest.mark.shared_data
def test_lever_curve_plots_each_training_runs_whole_set_evaluations(report_project, capsys, tmp_path):
    """``scripts/lever_curve.py`` (the model card's figure) finds a step's points through the training
    run in each evaluation's model provenance, and takes whole sets only: the project's 10-face samples
    are refused, a whole evaluation of the 476 SD faces is plotted with its own accuracy."""
    project, cli = report_project
    lever_curve = load_script("lever_curve")
    runs, figure = project / "runs-report", tmp_path / "levers.png"
    with pytest.raises(SystemExit) as refused:
        lever_curve.main(["--runs", str(runs), "--step", "tiny=tiny", "--out", str(figure)])
    assert refused.value.code == 2 and not figure.exists()
    assert "tiny [tiny]: no whole-set evaluation found" in capsys.readouterr().out
    assert main([*cli, "evaluate", "--model", str(project / "runs" / "tiny" / "best.safetensors"),
                 "--dataset", "sd_faces", "--bootstrap", "100", "--name", "eval-whole-sd"]) == 0
    whole = Run.load(runs / "eval-whole-sd")
    assert whole.info["dataset"]["faces"] == 476
    capsys.readouterr()
    lever_curve.main(["--runs", str(runs), "--step", "tiny=tiny", "--step", "other=not-a-run", "--out", str(figure)])
    printed = capsys.readouterr().out
    assert f"tiny [tiny]: sd_faces {whole.metrics['accuracy']:.4f} (eval-whole-sd)\n" in printed
    assert "other [not-a-run]: no whole-set evaluation found" in printed
    with Image.open(figure) as image:
        assert image.size == (990, 825)
    # a weight average's step is its sources' runs, joined with +, calibrated or not
    soup = {"averaged_from": [{"fingerprint": "1", "provenance": {"run": "cycle-2"}},
                              {"fingerprint": "2", "provenance": {"run": "cycle-3", "logit_adjustment": {}}}],
            "logit_adjustment": {"tau": 0.0625}}
    assert trained_by(soup) == "cycle-2+cycle-3" and trained_by({"run": "tiny"}) == "tiny" and trained_by({}) is None
    # and its training data is its sources' when they name one dataset (the shipped soup: an average of an average)
    nested = {"averaged_from": [{"fingerprint": "1", "provenance": {"train_data": "ferplus:train"}},
                                {"fingerprint": "2", "provenance": soup}]}
    soup["averaged_from"][0]["provenance"]["train_data"] = "ferplus:train (FER+ vote distributions)"
    soup["averaged_from"][1]["provenance"]["train_data"] = "ferplus:train"
    assert trained_on(nested) == "ferplus:train" and trained_on({"train_data": "x", **nested}) == "x"
    soup["averaged_from"][1]["provenance"]["train_data"] = "sd_faces:train"
    assert trained_on(nested) == "ferplus:train + ferplus:train (FER+ vote distributions) + sd_faces:train"
    del soup["averaged_from"][1]["provenance"]["train_data"]
    assert trained_on(nested) is None and trained_on({}) is None
