import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"


def presets(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    """Run the real ``runner`` CLI in a subprocess; returns the CompletedProcess."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}  # short errors unless asked
    full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def invoke(main, argv: list[str], prog: str = "runner") -> tuple[int, str, str]:
    """Run a command's ``main`` in this process, as its console script would with ``argv``:
    (exit status, stdout, stderr). For checks where a subprocess proves nothing more."""
    out, err = io.StringIO(), io.StringIO()
    old = sys.argv
    sys.argv = [prog, *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main()
                code = 0 if code is None else code
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old
    return code, out.getvalue(), err.getvalue()


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def run_main(*args: str) -> Result:
    """The ``runner`` CLI's ``main`` in this process with these arguments (a training run here
    skips the seconds of imports a fresh process pays; signals, faults and start-up need
    ``run_cli``)."""
    from runner.cli import main

    return Result(*invoke(main, list(args)))


def weights_cli(store, *args: str, process: bool = False):
    """``runner-weights --tracking-uri <store> ARGS``: in this process, or with ``process`` as a
    real subprocess (for what only the process shows: its exit status and output streams)."""
    argv = ["--tracking-uri", store.uri, *args]
    if process:
        return subprocess.run([sys.executable, "-m", "runner.checkpoint.cli", *argv], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
    from runner.checkpoint.cli import main

    return Result(*invoke(main, argv, "runner-weights"))


@pytest.fixture
def run_dir(tmp_path):
    """A Hydra run directory inside the test's tmp dir."""
    return f"hydra.run.dir={tmp_path / 'run'}"


@pytest.fixture(scope="session")
def template_db(tmp_path_factory):
    """One migrated MLflow sqlite store per test session (migrations take seconds)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def metrics(run) -> dict:
    """A run's latest metrics by runner name (MLflow holds them under display names)."""
    from runner.tracking.keys import internal

    return dict(internal(k, v) for k, v in run.data.metrics.items())


def history(client, run, key: str) -> list:
    """The (step, value) history of runner metric ``key`` of ``run``, oldest first."""
    from types import SimpleNamespace

    from runner.tracking.keys import internal

    names = {internal(k)[0]: k for k in run.data.metrics}
    if key not in names:
        return []
    return [SimpleNamespace(step=m.step, value=internal(names[key], m.value)[1], timestamp=m.timestamp)
            for m in client.get_metric_history(run.info.run_id, names[key])]


class Store:
    def __init__(self, db: Path):
        from mlflow import MlflowClient

        self.db = db
        self.uri = f"sqlite:///{db}"
        self.client = MlflowClient(self.uri)

    def runs(self, experiment: str = "runner"):
        exp = self.client.get_experiment_by_name(experiment)
        return self.client.search_runs([exp.experiment_id]) if exp else []

    def only_run(self, experiment: str = "runner"):
        runs = self.runs(experiment)
        assert len(runs) == 1, [r.info.run_name for r in runs]
        return runs[0]

    def metrics(self, run) -> dict:
        return metrics(run)

    def history(self, run, key: str) -> list:
        return history(self.client, run, key)


@pytest.fixture
def store(tmp_path, template_db):
    """A real MLflow sqlite store for one test, copied from the migrated template."""
    import shutil

    db = tmp_path / "outputs" / "mlflow.db"
    db.parent.mkdir(parents=True)
    shutil.copy(template_db, db)
    return Store(db)


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory):
    """An MLflow tracking server on loopback whose backend store is a real PostgreSQL."""
    from servers import MlflowServer, Postgres, postgres_bin

    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs it)")
    pg = Postgres()
    backend = pg.start()
    server = MlflowServer(backend, tmp_path_factory.mktemp("server") / "artifacts")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        pg.stop()
