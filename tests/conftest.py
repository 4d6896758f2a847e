import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"


def presets(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    """Run the real ``runner`` CLI in a subprocess; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None) if not (env and "HYDRA_FULL_ERROR" in env) else None
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def run_dir(tmp_path):
    """A Hydra run directory inside the test's tmp dir."""
    return f"hydra.run.dir={tmp_path / 'run'}"
