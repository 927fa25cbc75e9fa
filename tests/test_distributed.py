"""Data-parallel training under torchrun on the CPU (gloo): two ranks end with the same model,
only rank 0 writes the run, a 2-rank run follows a 1-rank run with the same global batch,
resume after a crash is exact, and ``fer-core train`` itself runs under torchrun.

Each launch runs a small worker script (written into the test's tmp dir) that builds the
Trainer inside ``distributed.process_group`` on 320 real FER+ faces (tiny model, 48 px).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fer_core.errors import ConfigError
from fer_core.models import TINY_ARCHITECTURE
from fer_core.training import Stage, Trainer, TrainSettings, distributed
from tests.conftest import torch_threads
from tests.test_training import ferplus_faces

REPO = Path(__file__).resolve().parent.parent
#: No augmentation and no dropout: ranks differ only in their share of each batch. SAM is on,
#: so its second backward pass must all-reduce too, or the ranks' weights would drift apart.
SETTINGS = TrainSettings(architecture=TINY_ARCHITECTURE, input_size=48, stages=(Stage(2, 3e-3, "all"),),
                         batch_size=32, max_steps_per_epoch=4, sam_rho=0.05, augment=None, drop_rate=0.0, seed=0)
#: With the same global batches, a 2-rank epoch loss differs from a 1-rank one only through
#: BatchNorm, which normalizes each rank's 16 faces instead of all 32 (per-rank statistics;
#: SyncBatchNorm needs an accelerator). Measured: 0.0010 and 0.0026 on the two epochs (single
#: steps differ by up to 0.034 late in epoch 2, in both directions); the bound is ~4x that.
LOSS_TOLERANCE = 0.01

WORKER = """
import os, sys
sys.path.insert(0, {repo!r})
from pathlib import Path
import torch
import fer_core.training.trainer as trainer_module
from fer_core.training import Trainer, distributed
from tests.test_distributed import SETTINGS
from tests.test_training import ferplus_faces

out, run_dir, crash_at_step = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
rank = os.environ["RANK"]
dump, writes = torch.save, []

def logged(write, path_at):  # record every file this rank writes through the trainer
    def wrapper(*args, **kwargs):
        writes.append(Path(args[path_at]).name)
        return write(*args, **kwargs)
    return wrapper

trainer_module.write_json_atomic = logged(trainer_module.write_json_atomic, 0)
trainer_module.save_model = logged(trainer_module.save_model, 1)
torch.save = logged(torch.save, 1)
train_step, step_losses = trainer_module.Trainer._train_step, []

def record_step(self, *args):  # this rank's loss on its share of each batch; os._exit is a crash
    if len(step_losses) == crash_at_step:
        os._exit(3)
    step_losses.append(train_step(self, *args))
    return step_losses[-1]

trainer_module.Trainer._train_step = record_step
collate, batches = trainer_module.collate_skip_bad, []

def record_batch(items):  # the faces of each training batch (validation runs in inference mode)
    batch = collate(items)
    if not torch.is_inference_mode_enabled():
        batches.append(batch["index"].tolist())
    return batch

trainer_module.collate_skip_bad = record_batch
with distributed.process_group("cpu"):
    train, val = ferplus_faces(Path({ferplus!r}))
    trainer = Trainer(run_dir, SETTINGS, train, val)
    result = trainer.fit(progress=False)
    dump({{"model": trainer.module.state_dict(), "history": result["history"], "writes": writes,
          "step_losses": step_losses, "batches": batches, "world_size": distributed.world_size()}},
         out / f"rank{{rank}}.pt")
"""


def torchrun(processes: int, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node processes args`` on the CPU, one thread per rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def launch(processes: int, out: Path, run_dir: Path, ferplus_root: Path, crash_at_step: int = -1) -> list[dict]:
    """Train ``SETTINGS`` on ``processes`` ranks; each rank's final model, history and writes."""
    out.mkdir(parents=True, exist_ok=True)
    script = out / "worker.py"
    script.write_text(WORKER.format(repo=str(REPO), ferplus=str(ferplus_root)))
    done = torchrun(processes, str(script), str(out), str(run_dir), str(crash_at_step))
    if crash_at_step >= 0:
        assert done.returncode != 0 and not list(out.glob("rank*.pt")), "the crash did not happen"
        return []
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(processes)]


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def two_ranks(ferplus_root, tmp_path_factory) -> tuple[list[dict], Path]:
    """An uninterrupted 2-rank run: each rank's result and the run directory."""
    root = tmp_path_factory.mktemp("two_ranks")
    return launch(2, root / "out", root / "run", ferplus_root), root / "run"


@pytest.mark.slow
def test_two_ranks_end_identical_and_only_rank_0_writes(two_ranks, ferplus_root, tmp_path):
    ranks, run_dir = two_ranks
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert same_state(ranks[0]["model"], ranks[1]["model"])  # parameters and BatchNorm statistics
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert same_state(checkpoint["model"], ranks[0]["model"])
    assert ranks[0]["history"] == ranks[1]["history"] == checkpoint["history"]
    assert len(checkpoint["history"]) == SETTINGS.epochs
    assert ranks[1]["writes"] == []
    per_epoch = [".checkpoint.pt.tmp", "history.json"]  # the checkpoint is written beside, then renamed
    assert sorted(set(ranks[0]["writes"])) == sorted(["best", "run.json", *per_epoch])
    assert ranks[0]["writes"].count("run.json") == 1
    assert [w for w in ranks[0]["writes"] if w in per_epoch] == per_epoch * SETTINGS.epochs
    run = json.loads((run_dir / "run.json").read_text())
    assert run["distributed"] == {"world_size": 2, "backend": "gloo", "global_batch": 32, "batch_per_rank": 16}
    # Rank 0 validated alone: the recorded figures are a single-process validation of the final model,
    # equal to the bit when this process also runs on the ranks' one thread (torchrun's OMP_NUM_THREADS=1).
    # On two threads the convolutions add up in another order: val_loss moved by 3e-8 (1.5e-8 relative).
    single = Trainer(tmp_path / "check", SETTINGS, *ferplus_faces(ferplus_root))
    single.module.load_state_dict(checkpoint["model"])
    with torch_threads(1):
        figures = single.validate()
    last = checkpoint["history"][-1]
    assert figures == {k: last[k] for k in ("val_loss", "val_accuracy", "val_macro_f1")}


@pytest.mark.slow
def test_two_ranks_follow_one_rank_with_the_same_global_batch(two_ranks, ferplus_root, tmp_path):
    ranks, _ = two_ranks
    one = launch(1, tmp_path / "out", tmp_path / "run", ferplus_root)[0]
    steps = SETTINGS.epochs * SETTINGS.max_steps_per_epoch
    assert len(one["batches"]) == steps and all(len(b) == 32 for b in one["batches"])
    for step in range(steps):  # each rank gets 16 of the very faces of the 1-rank batch
        shares = [r["batches"][step] for r in ranks]
        assert [len(s) for s in shares] == [16, 16] and sorted(shares[0] + shares[1]) == sorted(one["batches"][step])
    two = ranks[0]["history"]
    per_epoch = SETTINGS.max_steps_per_epoch
    assert one["batches"][:per_epoch] != one["batches"][per_epoch:]  # reshuffled each epoch
    for epoch, record in enumerate(two):  # the recorded loss is the mean over both ranks' shares
        shares = [r["step_losses"][epoch * per_epoch:(epoch + 1) * per_epoch] for r in ranks]
        assert record["train_loss"] == pytest.approx(sum(map(sum, shares)) / (2 * per_epoch), abs=1e-9)
    gaps = [abs(a["train_loss"] - b["train_loss"]) for a, b in zip(one["history"], two)]
    assert max(gaps) < LOSS_TOLERANCE, gaps
    assert [h["lr"] for h in one["history"]] == [h["lr"] for h in two]  # the same steps and schedule
    assert two[-1]["train_loss"] < two[0]["train_loss"] - 0.1  # it learned: equal losses are no accident


@pytest.mark.slow
def test_resume_after_a_crash_equals_the_uninterrupted_run(two_ranks, ferplus_root, tmp_path):
    ranks, reference_dir = two_ranks
    run_dir = tmp_path / "run"
    launch(2, tmp_path / "crashed", run_dir, ferplus_root, crash_at_step=SETTINGS.max_steps_per_epoch + 1)
    assert len(torch.load(run_dir / "checkpoint.pt", weights_only=True)["history"]) == 1  # died in epoch 2
    resumed = launch(2, tmp_path / "resumed", run_dir, ferplus_root)
    # Both ranks loaded the checkpoint: a rank starting from fresh optimizer moments would drift apart.
    for rank in resumed:
        assert same_state(rank["model"], ranks[0]["model"])
        assert rank["history"] == ranks[0]["history"]
    assert (run_dir / "best.safetensors").read_bytes() == (reference_dir / "best.safetensors").read_bytes()


@pytest.mark.slow
def test_fer_core_train_runs_under_torchrun(project, fer2013_root, tmp_path):
    val = tmp_path / "val"  # 8 real FER2013 test faces per class
    for class_dir in sorted((fer2013_root / "test").iterdir()):
        (val / class_dir.name).mkdir(parents=True)
        for file in sorted(class_dir.iterdir())[:8]:
            (val / class_dir.name / file.name).symlink_to(file)
    runs = tmp_path / "runs"
    done = torchrun(2, "-m", "fer_core", "--config", str(project / "configs" / "config.yaml"),
                    "--set", f"paths.runs_dir={runs}", "train", "--train", "ferplus:train", "--val", str(val),
                    "--architecture", TINY_ARCHITECTURE, "--input-size", "48", "--epochs", "1", "--batch-size", "16",
                    "--max-steps", "2", "--no-augment")
    assert done.returncode == 0, done.stderr[-3000:]
    [run_dir] = list(runs.iterdir())  # both ranks used rank 0's generated run name
    run = json.loads((run_dir / "run.json").read_text())
    assert run["command"] == "fer-core train" and run["data"]["val"]["size"] == 56
    assert run["distributed"] == {"world_size": 2, "backend": "gloo", "global_batch": 16, "batch_per_rank": 8}
    assert len(json.loads((run_dir / "history.json").read_text())["history"]) == 1
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["scheduler"]["last_epoch"] == 2  # 2 steps
    assert (run_dir / "best.safetensors").is_file()
    assert done.stdout.count("epoch 1: loss") == 1  # progress from rank 0 only


def test_helpers_are_single_process_identities_outside_torchrun(monkeypatch):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with distributed.process_group() as active:
        assert not active
        assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
        assert distributed.broadcast_object({"a": 1}) == {"a": 1} and distributed.mean_over_ranks(0.25) == 0.25
        module = torch.nn.Linear(2, 2)
        assert distributed.wrap(module, torch.device("cpu")) is module
        assert distributed.run_info(32) == {}
    monkeypatch.setenv("MASTER_PORT", "29500")  # set alone (e.g. by a cluster): still a single process
    with distributed.process_group() as active:
        assert not active
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"incomplete torchrun environment.*\['RANK', 'LOCAL_RANK', 'MASTER_ADDR'\]"):
        with distributed.process_group():
            pass
