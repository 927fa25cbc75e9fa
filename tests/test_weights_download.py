"""User-requested downloads: served from a local server, and a clear error when unreachable."""

import http.server
import socket
import threading

import pytest

from fer_core.cli import main
from fer_core.errors import ModelLoadError
from fer_core.weights import SOURCES, WeightsSource, download


@pytest.fixture
def server(tmp_path):
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "model.pt").write_bytes(b"weights" * 1000)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "served"), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_writes_the_file_atomically(server, tmp_path):
    source = WeightsSource("test", f"{server}/model.pt", "model.pt", "test file", False)
    path = download(source, tmp_path / "weights", progress=False)
    assert path.read_bytes() == b"weights" * 1000
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]


def test_unreachable_source_fails_clearly_and_leaves_nothing(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connections are refused
    source = WeightsSource("test", f"http://127.0.0.1:{port}/model.pt", "model.pt", "test file", False)
    with pytest.raises(ModelLoadError, match="could not download test .*put it at .*model.pt"):
        download(source, tmp_path / "weights", timeout=5, progress=False)
    assert not any((tmp_path / "weights").iterdir())


def test_cli_lists_and_rejects_unknown_names(capsys):
    assert main(["weights", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in SOURCES) and "--trust-pickle" in listed
    assert main(["weights", "download", "no-such-model"]) == 2
    assert "unknown weights 'no-such-model'" in capsys.readouterr().err
