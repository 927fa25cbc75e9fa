"""The HTTP grid backend and the credit ledger against a local server on 127.0.0.1 standing in
for a hosted text-to-image API: images as bytes or base64 JSON, errors, slow answers, garbage,
429 with Retry-After, overspending, interruption, and the API key kept secret."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_core.cli import main
from fer_core.errors import ConfigError, DataError, InvalidArgument
from fer_core.images import load_rgb
from fer_core.synthetic import (
    CreditBudgetError,
    CreditLedger,
    GenerationError,
    PromptSpec,
    build_prompt,
    create_backend,
    generate_grids,
)

SECRET = "sk-test-5ecret-do-not-store"
KEY_ENV = "FER_CORE_TEST_GRID_KEY"


@pytest.fixture(scope="module")
def grid_png(synthetic_root: Path) -> bytes:
    """A 2x2 grid of real Stable Diffusion faces, PNG-encoded (what a hosted API would answer)."""
    faces = [cv2.resize(load_rgb(p), (128, 128)) for p in sorted(synthetic_root.glob("happy/*.jpg"))[:4]]
    grid = np.vstack([np.hstack(faces[:2]), np.hstack(faces[2:])])
    return cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))[1].tobytes()


class FakeApi:
    """A scripted HTTP server: each POST pops the next answer ``(status, headers, body, delay)``
    (the last one repeats) and the request (headers, JSON body) is recorded."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict, bytes, float]] = []
        self.requests: list[dict] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                api.requests.append({"headers": dict(self.headers), "json": json.loads(body)})
                status, headers, payload, delay = api.answers.pop(0) if len(api.answers) > 1 else api.answers[0]
                time.sleep(delay)
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/images"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def script(self, *answers: tuple[int, dict, bytes, float]) -> None:
        self.answers = list(answers)
        self.requests.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api():
    server = FakeApi()
    yield server
    server.close()


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    return KEY_ENV


def png(data: bytes) -> tuple[int, dict, bytes, float]:
    return 200, {"Content-Type": "image/png"}, data, 0.0


class Sleeps(list):
    """A sleep function that records the delays instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def backend_for(api: FakeApi, sleeps=None, **kwargs):
    settings = dict(endpoint=api.url, api_key_env=KEY_ENV, model_name="flux-dev", backoff=1.0, max_retries=3,
                    timeout=5.0, payload={"model": "flux-dev", "input": {"prompt": "{prompt}", "seed": "{seed}",
                                                                         "width": "{size}", "height": "{size}"}})
    settings.update(kwargs)
    return create_backend("http", sleep=sleeps if sleeps is not None else Sleeps(), **settings)


PROMPT = build_prompt(PromptSpec("Happiness", "women", "extreme"), "plan-best")


def assert_secret_absent(tmp_path: Path, caplog) -> None:
    for file in tmp_path.rglob("*"):
        if file.is_file():
            assert SECRET.encode() not in file.read_bytes(), file
            assert SECRET not in file.name
    assert SECRET not in caplog.text


def test_image_bytes_answer_is_stored_and_committed(api, key, grid_png, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    api.script(png(grid_png))
    ledger = CreditLedger(tmp_path / "synthetic" / "ledger.json", budget=3)
    [entry] = generate_grids(backend_for(api), ledger, [(PROMPT, 42)], progress=False)
    request = api.requests[0]
    assert request["json"] == {"model": "flux-dev", "input": {"prompt": PROMPT.text, "seed": 42, "width": 1024,
                                                              "height": 1024}}
    assert request["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert entry["status"] == "committed" and entry["seed"] == 42 and entry["prompt_id"] == PROMPT.id
    assert (entry["backend"], entry["model"], entry["emotion"], entry["intensity"]) == ("http", "flux-dev",
                                                                                         "Happiness", "extreme")
    stored = ledger.path.parent / entry["file"]
    assert stored.read_bytes() == grid_png and entry["sha256"] == hashlib.sha256(grid_png).hexdigest()
    assert ledger.summary()["spent"] == 1 and ledger.remaining == 2
    assert_secret_absent(tmp_path, caplog)


def test_json_base64_answer_and_data_url(api, key, grid_png, tmp_path):
    encoded = base64.b64encode(grid_png).decode()
    api.script((200, {"Content-Type": "application/json"}, json.dumps({"data": [{"b64_json": encoded}]}).encode(), 0),
               (200, {"Content-Type": "application/json"},
                json.dumps({"output": {"image": f"data:image/png;base64,{encoded}"}}).encode(), 0))
    ledger = CreditLedger(tmp_path / "ledger.json", budget=2)
    generate_grids(backend_for(api), ledger, [(PROMPT, 1)], progress=False)
    generate_grids(backend_for(api, image_field="output.image"), ledger, [(PROMPT, 2)], progress=False)
    entries = ledger.entries("committed")
    assert [(tmp_path / e["file"]).read_bytes() == grid_png for e in entries] == [True, True]


def test_server_errors_are_retried_with_exponential_backoff(api, key, grid_png, tmp_path):
    api.script((503, {}, b"busy", 0), (502, {}, b"bad gateway", 0), (500, {}, b"oops", 0), png(grid_png))
    sleeps = Sleeps()
    ledger = CreditLedger(tmp_path / "ledger.json", budget=1)
    [entry] = generate_grids(backend_for(api, sleeps), ledger, [(PROMPT, 0)], progress=False)
    assert entry["status"] == "committed" and len(api.requests) == 4
    assert sleeps == [1.0, 2.0, 4.0]


def test_429_honours_retry_after(api, key, grid_png, tmp_path):
    api.script((429, {"Retry-After": "7"}, b"slow down", 0), png(grid_png))
    sleeps = Sleeps()
    ledger = CreditLedger(tmp_path / "ledger.json", budget=1)
    generate_grids(backend_for(api, sleeps), ledger, [(PROMPT, 0)], progress=False)
    assert sleeps == [7.0] and ledger.entries()[0]["status"] == "committed"


def test_slow_answers_time_out_and_the_credit_is_released(api, key, grid_png, tmp_path):
    api.script((200, {"Content-Type": "image/png"}, grid_png, 1.0))
    sleeps = Sleeps()
    ledger = CreditLedger(tmp_path / "ledger.json", budget=1)
    [entry] = generate_grids(backend_for(api, sleeps, timeout=0.2, max_retries=1), ledger, [(PROMPT, 0)],
                             progress=False)
    assert entry["status"] == "released" and "no answer within 0.2 s" in entry["note"]
    assert len(api.requests) == 2 and sleeps == [1.0]
    assert ledger.remaining == 1 and not list(tmp_path.glob("raw/*"))


@pytest.mark.parametrize("answer, message", [
    ((200, {"Content-Type": "image/png"}, b"\x89PNG\r\n\x1a\n garbage, not an image", 0), "did not return an image"),
    ((200, {"Content-Type": "application/json"}, b'{"data": [{"b64_json": "%%%not base64"}]}', 0), "not valid base64"),
    ((200, {"Content-Type": "application/json"}, b'{"error": "no image"}', 0), "has no field"),
    ((200, {"Content-Type": "application/json"}, b"{truncated", 0), "invalid JSON"),
    ((400, {}, b'{"error": "prompt rejected by safety filter"}', 0), "refused the request: HTTP 400"),
])
def test_bad_answers_fail_clearly_without_retrying_or_spending(answer, message, api, key, tmp_path):
    api.script(answer)
    sleeps = Sleeps()
    ledger = CreditLedger(tmp_path / "ledger.json", budget=1)
    with pytest.raises(GenerationError, match=message):
        backend_for(api, sleeps).generate(PROMPT, 0)
    assert len(api.requests) == 1 and sleeps == []
    [entry] = generate_grids(backend_for(api, sleeps), ledger, [(PROMPT, 0)], progress=False)
    assert entry["status"] == "released" and ledger.remaining == 1


def test_unreachable_endpoint_is_a_clear_error(key):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = create_backend("http", endpoint=f"http://127.0.0.1:{port}/x", api_key_env=KEY_ENV, sleep=Sleeps())
    with pytest.raises(GenerationError, match="cannot reach .*Connection refused.*offline"):
        backend.generate(PROMPT, 0)


def test_rate_limit_spaces_requests(api, key, grid_png, tmp_path):
    api.script(png(grid_png))
    sleeps = Sleeps()
    backend = backend_for(api, sleeps, min_interval=30.0)
    generate_grids(backend, CreditLedger(tmp_path / "ledger.json", budget=3), [(PROMPT, s) for s in range(3)],
                   progress=False)
    assert len(sleeps) == 2 and all(25.0 < s <= 30.0 for s in sleeps)


def test_overspending_is_refused_before_calling_the_api(api, key, grid_png, tmp_path):
    api.script(png(grid_png))
    ledger = CreditLedger(tmp_path / "ledger.json", budget=2)
    with pytest.raises(CreditBudgetError, match="2 of 2 credits"):
        generate_grids(backend_for(api), ledger, [(PROMPT, s) for s in range(3)], progress=False)
    assert len(api.requests) == 2 and len(ledger.entries("committed")) == 2 and ledger.remaining == 0
    CreditLedger(ledger.path, budget=3)  # raising the budget lets the run go on
    generate_grids(backend_for(api), ledger, [(PROMPT, 2)], progress=False)
    assert ledger.spent == 3


def test_an_interrupted_call_leaves_a_visible_resolvable_reservation(api, key, grid_png, tmp_path, caplog):
    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    api.script((503, {}, b"busy", 0))
    ledger = CreditLedger(tmp_path / "ledger.json", budget=1)
    with pytest.raises(KeyboardInterrupt):
        generate_grids(backend_for(api, interrupt), ledger, [(PROMPT, 5)], progress=False)
    reopened = CreditLedger(tmp_path / "ledger.json")
    [pending] = reopened.pending()
    assert (pending["seed"], pending["prompt_id"], pending["status"]) == (5, PROMPT.id, "reserved")
    assert reopened.remaining == 0  # the reservation still holds its credit
    with pytest.raises(CreditBudgetError):
        reopened.reserve(1, prompt_id="another")
    settled = reopened.resolve(pending["id"], spent=False, note="the provider did not charge")
    assert settled["status"] == "released" and reopened.remaining == 1 and reopened.pending() == []
    with pytest.raises(DataError, match="already released"):
        reopened.resolve(pending["id"], spent=True)
    lost = reopened.reserve(1, prompt_id="x")
    assert reopened.resolve(lost, spent=True)["status"] == "lost" and reopened.remaining == 0
    assert_secret_absent(tmp_path, caplog)


def test_missing_key_and_bad_settings_are_clear_errors(api, monkeypatch, tmp_path):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ConfigError, match=f"{KEY_ENV} is not set"):
        backend_for(api).generate(PROMPT, 0)
    with pytest.raises(InvalidArgument, match="endpoint"):
        create_backend("http", endpoint="ftp://example.org")
    with pytest.raises(InvalidArgument, match=r"HttpBackend\(\) argument 'max_retries': expected an integer >= 0"):
        create_backend("http", endpoint=api.url, max_retries=-1)
    with pytest.raises(InvalidArgument, match="budget"):
        CreditLedger(tmp_path / "ledger.json", budget=-1)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="corrupt credit ledger"):
        CreditLedger(tmp_path / "broken.json").entries()


def test_cli_generate_and_ledger(api, key, grid_png, tmp_path, capsys, caplog):
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "config.yaml"
    config.write_text("data:\n  root: data\n")
    backend_config = tmp_path / "backend.json"
    backend_config.write_text(json.dumps({"endpoint": api.url, "api_key_env": KEY_ENV, "model_name": "flux-dev",
                                          "payload": {"prompt": "{prompt}", "seed": "{seed}"}}))
    api.script(png(grid_png))
    base = ["--config", str(config), "synth"]
    command = base + ["generate", "--emotion", "Fear", "--gender", "women", "--intensity", "extreme",
                      "--backend-config", str(backend_config), "--grids", "2", "--seed-start", "10"]
    assert main(command + ["--budget", "1"]) == 2  # the second grid would overspend
    assert "credit budget exhausted" in capsys.readouterr().err
    assert [r["json"]["seed"] for r in api.requests] == [10]
    ledger = CreditLedger(tmp_path / "data" / "synthetic" / "ledger.json")
    [entry] = ledger.entries("committed")
    assert (entry["emotion"], entry["template"]) == ("Fear", "current")
    assert entry["prompt"].startswith("Extremely fearful")
    CreditLedger(ledger.path, budget=2)
    pending = ledger.reserve(1, prompt_id="typed by hand")  # as left by an interrupted run
    assert ledger.remaining == 0
    assert main(base + ["ledger", "--budget", "3", "--resolve", pending]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["budget"], shown["spent"], shown["pending"]) == (3, 1, [])
    assert_secret_absent(tmp_path, caplog)


def cli_project(tmp_path: Path, api: FakeApi) -> tuple[list[str], Path, Path]:
    """A project config, a backend config pointing at ``api`` and the ledger path."""
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "config.yaml"
    config.write_text("data:\n  root: data\n")
    backend_config = tmp_path / "backend.json"
    backend_config.write_text(json.dumps({"endpoint": api.url, "api_key_env": KEY_ENV, "max_retries": 0}))
    return ["--config", str(config), "synth"], backend_config, tmp_path / "data" / "synthetic" / "ledger.json"


def test_an_unset_key_fails_before_any_credit_is_reserved(api, monkeypatch, grid_png, tmp_path, capsys):
    monkeypatch.delenv(KEY_ENV, raising=False)
    api.script(png(grid_png))
    base, backend_config, ledger_path = cli_project(tmp_path, api)
    code = main(base + ["generate", "--emotion", "Fear", "--gender", "women", "--backend-config", str(backend_config),
                        "--grids", "2", "--budget", "3"])
    assert code == 2 and f"{KEY_ENV} is not set" in capsys.readouterr().err
    ledger = CreditLedger(ledger_path)
    assert (ledger.entries(), ledger.pending(), ledger.spent, ledger.remaining) == ([], [], 0, 3)
    assert api.requests == [] and not (ledger_path.parent / "raw").exists()


def test_a_generate_that_makes_no_grid_exits_non_zero(api, key, grid_png, tmp_path, capsys):
    refused = (400, {}, b'{"error": "prompt rejected by safety filter"}', 0)
    base, backend_config, ledger_path = cli_project(tmp_path, api)
    command = base + ["generate", "--emotion", "Fear", "--gender", "women", "--backend-config", str(backend_config),
                      "--grids", "2", "--budget", "3"]
    api.script(refused)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "0 of 2 grids made (no credit was spent on them)" in err and "safety filter" in err
    ledger = CreditLedger(ledger_path)
    assert [e["status"] for e in ledger.entries()] == ["released", "released"] and ledger.spent == 0
    api.script(png(grid_png), refused)  # one of two made: done, with a warning naming the failure
    assert main(command + ["--seed-start", "2"]) == 0
    captured = capsys.readouterr()
    assert "1 of 2 grids made" in captured.out and "1 of 2 grids not made" in captured.err
    assert ledger.spent == 1 and len(ledger.entries("committed")) == 1


def test_a_generated_grid_cannot_be_reverted(api, key, grid_png, tmp_path):
    from fer_core.synthetic.imports import revert_imports
    api.script(png(grid_png))
    ledger = CreditLedger(tmp_path / "ledger.json", budget=1)
    [entry] = generate_grids(backend_for(api), ledger, [(PROMPT, 0)], progress=False)
    before = ledger.path.read_bytes()
    with pytest.raises(DataError, match="only settled imports can be reverted.*spent with the provider"):
        revert_imports(ledger, [entry["batch"]], tmp_path / "manifest.parquet", tmp_path / "processed")
    assert ledger.path.read_bytes() == before and (tmp_path / entry["file"]).is_file()
