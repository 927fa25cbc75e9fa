"""``scripts/pip_sources.py``: `make install` hands uv the package sources pip is configured with."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("pip_sources", REPO / "scripts" / "pip_sources.py")
pip_sources = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pip_sources)


def test_pip_settings_become_uv_options_each_once():
    listing = "\n".join([
        "global.cert='/etc/ssl/certs/ca-certificates.crt'",
        "global.constraint='/etc/pip/constraints.txt'",
        "global.extra-index-url='file:///opt/a/simple file:///opt/b/simple'",
        "global.find-links='/opt/wheels'",
        "global.index-url='https://mirror.example/simple'",
        "global.timeout='60'",                           # not a source: left out
        ":env:.find-links='/opt/wheels'",                 # the same place from PIP_FIND_LINKS: once
        ":env:.index-url='https://other.example/simple'",  # a later single value wins, as in pip
    ])
    assert pip_sources.uv_options(listing) == [
        "--cert", "/etc/ssl/certs/ca-certificates.crt",
        "--index-url", "https://other.example/simple",
        "--constraint", "/etc/pip/constraints.txt",
        "--extra-index-url", "file:///opt/a/simple", "--extra-index-url", "file:///opt/b/simple",
        "--find-links", "/opt/wheels"]
    assert pip_sources.uv_options("") == []


@pytest.mark.timeout(60)
def test_the_script_reads_this_pip(tmp_path):
    """Run as `make install` runs it, with one pip setting from the environment."""
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PIP_CONFIG_FILE": "/dev/null",
                   "PIP_FIND_LINKS": str(tmp_path)}
    printed = subprocess.run([sys.executable, str(REPO / "scripts" / "pip_sources.py")], env=environment,
                             capture_output=True, text=True, check=True).stdout
    assert printed.split() == ["--find-links", str(tmp_path)]
