"""Print `uv pip install` options for the package sources pip is configured with.

`make install` installs with uv (about 50 s instead of pip's 3 minutes for torch and its CUDA
libraries, most of it pip unpacking wheels on one core). So that uv installs what pip would, from
the same places, this reads pip's own configuration (`pip config list`: its files and PIP_*
variables) and prints the matching uv options: index, extra indexes, find-links, constraints and
CA bundle. With nothing configured it prints nothing and uv uses PyPI, as pip does.
"""

from __future__ import annotations

import ast
import shlex
import subprocess
import sys

#: pip's setting -> uv's option
LIST_OPTIONS = {"extra-index-url": "--extra-index-url", "find-links": "--find-links", "constraint": "--constraint"}
SINGLE_OPTIONS = {"index-url": "--index-url", "cert": "--cert"}


def uv_options(pip_config_listing: str) -> list[str]:
    """The uv options for the settings in ``pip config list``'s output (``section.key='value'`` lines):
    each list item once, in pip's order; of a single value (index, CA bundle), the last one listed."""
    items: dict[tuple[str, str], None] = {}
    singles: dict[str, str] = {}
    for line in pip_config_listing.splitlines():
        name, _, value = line.partition("=")
        key = name.rpartition(".")[2]
        if key in LIST_OPTIONS:
            items.update(dict.fromkeys((LIST_OPTIONS[key], item) for item in ast.literal_eval(value).split()))
        elif key in SINGLE_OPTIONS:
            singles[SINGLE_OPTIONS[key]] = ast.literal_eval(value)
    return [part for pair in [*singles.items(), *items] for part in pair]


if __name__ == "__main__":
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             check=True).stdout
    print(shlex.join(uv_options(listing)))
