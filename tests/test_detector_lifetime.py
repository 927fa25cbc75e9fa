"""MediaPipe task lifetime: one task per model file and settings per process, closed at known
points and never by the garbage collector (issue 17: a GC pass closing a task deadlocked CI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from fer_core.config import ENV_FACE_MODEL, config_from_dict
from fer_core.faces import FacePipeline, MediaPipeDetector, close_mediapipe_tasks, open_mediapipe_tasks
from fer_core.faces import detectors as detector_module
from fer_core.images import load_rgb
from fer_core.workflows import face_pipeline_for
from tests.conftest import REPO

#: Drops detectors that only the cyclic garbage collector can free, among cyclic garbage, with
#: gc.collect() between: under the old lifetime (MediaPipe's __del__ closing the task) the first
#: collection hung for ever (reproduced: timeout after 30 s), since the collector first stops the
#: task's worker thread (a cleared weak reference) and then runs the close that waits for it.
GC_STRESS = textwrap.dedent("""
    import gc, json, sys
    from fer_core.faces import MediaPipeDetector, open_mediapipe_tasks
    from fer_core.images import load_rgb

    face = load_rgb(sys.argv[1])
    found = []
    for i in range(200):
        detector = MediaPipeDetector(min_score=(0.5, 0.6)[i % 2])
        if i % 10 == 0:
            found.append(len(detector.detect(face)))
        cycle = {"detector": detector}
        cycle["self"] = cycle  # only the cyclic collector frees it
        garbage = [[n] for n in range(5000)]
        for item in garbage:
            item.append(item)
        del detector, cycle, garbage
        if i % 4 == 0:
            gc.collect()
    gc.collect()
    print(json.dumps({"tasks": open_mediapipe_tasks(), "found": found}))
""")


def run_script(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """``script`` in a fresh interpreter (this checkout importable, no face model in the env)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(ENV_FACE_MODEL, None)
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=env)


@pytest.fixture
def face(synthetic_root: Path) -> Path:
    """A real Stable Diffusion face MediaPipe finds exactly once."""
    return sorted(synthetic_root.glob("happy/*.jpg"))[0]


@pytest.fixture(autouse=True)
def no_face_model_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_FACE_MODEL, raising=False)


@pytest.mark.timeout(150)
def test_detectors_dropped_under_gc_pressure_never_hang_and_the_process_exits_cleanly(face):
    done = run_script(GC_STRESS, str(face), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["tasks"] == 2  # 200 detectors, two min_scores: two tasks
    assert result["found"] == [1] * 20  # every detection in between found the face
    for trouble in ("Traceback", "Exception ignored"):
        assert trouble not in done.stderr, done.stderr[-3000:]


def test_detectors_and_pipelines_of_one_model_and_score_share_one_task(face_model_path):
    close_mediapipe_tasks()
    detectors = [MediaPipeDetector() for _ in range(5)] + [MediaPipeDetector(face_model_path) for _ in range(5)]
    assert open_mediapipe_tasks() == 1  # the shipped short-range model is the shared file, by content
    MediaPipeDetector(min_score=0.7)
    assert open_mediapipe_tasks() == 2
    config = config_from_dict({"faces": {"min_score": 0.7}})
    pipelines = [FacePipeline.from_config(config, 64) for _ in range(3)]
    pipelines += [face_pipeline_for(config, SimpleNamespace(input_size=size)) for size in (48, 224)]  # CLI, dashboard
    assert open_mediapipe_tasks() == 2
    assert len({p.detector.fingerprint() for p in pipelines}) == 1 and len({d.fingerprint() for d in detectors}) == 1


def test_close_and_with_close_the_task_and_a_closed_detector_reopens(face):
    rgb = load_rgb(face)
    close_mediapipe_tasks()
    with MediaPipeDetector(min_score=0.55) as detector:
        assert len(detector.detect(rgb)) == 1
        other = MediaPipeDetector(min_score=0.55)
        assert open_mediapipe_tasks() == 1
    assert open_mediapipe_tasks() == 0  # closed at the end of the block, for every detector sharing it
    assert len(other.detect(rgb)) == 1 and open_mediapipe_tasks() == 1  # opened again when used
    other.close()
    detector.close()  # closing twice is harmless
    assert open_mediapipe_tasks() == 0
    assert close_mediapipe_tasks() == 0


def test_a_task_never_closes_itself_from_the_garbage_collector():
    close_mediapipe_tasks()
    MediaPipeDetector()
    task = next(iter(detector_module._TASKS.values())).task
    assert type(task).__del__ is detector_module._keep_open
    assert type(task).close is type(task).__mro__[1].close  # explicit close is MediaPipe's own
    close_mediapipe_tasks()
    assert not task._handle  # closed by the explicit call


@pytest.mark.timeout(90)
def test_a_forked_child_opens_its_own_task(face):
    """A child inherits the parent's tasks without their worker threads: using one would hang."""
    script = textwrap.dedent("""
        import os, sys
        from fer_core.faces import MediaPipeDetector, open_mediapipe_tasks
        from fer_core.images import load_rgb
        face = load_rgb(sys.argv[1])
        detector = MediaPipeDetector()
        assert len(detector.detect(face)) == 1
        pid = os.fork()
        if pid == 0:
            ok = open_mediapipe_tasks() == 0 and len(detector.detect(face)) == 1 and open_mediapipe_tasks() == 1
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert len(detector.detect(face)) == 1 and open_mediapipe_tasks() == 1
        print("ok")
    """)
    done = run_script(script, str(face), timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
