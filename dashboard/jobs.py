"""Background ``fer-core`` jobs started from the dashboard.

Each job is a detached process (its own session, so it keeps running when the page is left or
the browser closed) writing its output to ``<runs_dir>/.jobs/<id>/log.txt`` and its exit code to
``rc`` when it ends. Any page rerun reads the state back from those files.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from fer_core.config import Config
from fer_core.errors import ConfigError

JOBS_DIR = ".jobs"
_PERCENT = re.compile(r"(\d{1,3})%(?:\||\s+done)")  # tqdm bars and "(n% done)" progress lines


@dataclass(frozen=True)
class Job:
    """A started job: its folder holds ``job.json`` (command, pid, start), ``log.txt`` and ``rc``."""

    path: Path
    command: tuple[str, ...]
    pid: int
    started: str

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def return_code(self) -> int | None:
        """The exit status once finished, else None."""
        file = self.path / "rc"
        text = file.read_text().strip() if file.is_file() else ""
        return int(text) if text.lstrip("-").isdigit() else None

    @property
    def running(self) -> bool:
        if self.return_code is not None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def log_tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of output (progress-bar redraws collapsed to their latest state)."""
        file = self.path / "log.txt"
        if not file.is_file():
            return ""
        text = file.read_text(encoding="utf-8", errors="replace")
        shown = [line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n")]
        return "\n".join([line for line in shown if line.strip()][-lines:])

    def progress(self) -> float | None:
        """The latest progress-bar percentage in the output (0-1), if any."""
        file = self.path / "log.txt"
        if not file.is_file():
            return None
        found = _PERCENT.findall(file.read_text(encoding="utf-8", errors="replace")[-2000:])
        return int(found[-1]) / 100 if found else None

    @property
    def status(self) -> str:
        code = self.return_code
        if code is not None:
            return "finished" if code == 0 else f"failed (exit {code})"
        return "running" if self.running else "stopped (no exit code: killed?)"


def cli_command(args: list[str], config_file: Path | None) -> list[str]:
    """The ``fer-core`` command line for ``args`` (with ``--config`` when one is in use)."""
    return ["fer-core", *(["--config", str(config_file)] if config_file else []), *args]


def start_job(config: Config, args: list[str], config_file: Path | None = None) -> Job:
    """Start ``fer-core <args>`` in the background (``python -m fer_core``, same interpreter)."""
    if not args or any(not isinstance(a, str) or not a for a in args):
        raise ConfigError(f"job arguments must be non-empty strings, got {args!r}")
    started = datetime.now(timezone.utc)
    folder = config.resolve(config.paths.runs_dir) / JOBS_DIR / f"{started:%Y%m%d-%H%M%S-%f}-{args[0]}"
    folder.mkdir(parents=True)
    python = [sys.executable, "-m", "fer_core", *(["--config", str(config_file)] if config_file else []), *args]
    script = f"{shlex.join(python)} > {shlex.quote(str(folder / 'log.txt'))} 2>&1; " \
             f"echo $? > {shlex.quote(str(folder / 'rc'))}"
    process = subprocess.Popen(["/bin/sh", "-c", script], cwd=config.root, start_new_session=True,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    command = tuple(cli_command(args, config_file))
    (folder / "job.json").write_text(json.dumps({"command": command, "pid": process.pid,
                                                 "started": started.isoformat(timespec="seconds")}))
    return Job(folder, command, process.pid, started.isoformat(timespec="seconds"))


def list_jobs(config: Config) -> list[Job]:
    """Every job started from the dashboard, newest first."""
    root = config.resolve(config.paths.runs_dir) / JOBS_DIR
    jobs = []
    for file in sorted(root.glob("*/job.json"), reverse=True):
        try:
            info = json.loads(file.read_text())
            jobs.append(Job(file.parent, tuple(info["command"]), int(info["pid"]), info["started"]))
        except (OSError, ValueError, KeyError):
            continue
    return jobs
