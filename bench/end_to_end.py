"""The default job end to end: ``runner`` (no arguments) vs the same job written by hand.

``bench/baseline_script.py`` trains the same model for the same steps, logs per-layer
mean/std/norm every 10 steps with ``mlflow.log_metrics`` and writes a checkpoint per epoch. The
runner does that and more (its default statistics and update ratios, heat maps, reports,
checksummed checkpoints, the registry). Each round runs both as fresh processes against a copy
of one migrated sqlite store, interleaved; the figures are medians of CPU time (the process and
its children: the runner's writer included) and of wall time.

    python bench/end_to_end.py [--rounds 5]
"""
from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import fresh_store  # noqa: E402


def timed_run(cmd: list[str], cwd: Path) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed:\n{r.stderr[-2000:]}")
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    template_uri, _ = fresh_store()
    template = Path(template_uri[len("sqlite:///"):])
    times: dict[str, list[tuple[float, float]]] = {"hand-written script (bench/baseline_script.py)": [],
                                                   "runner (default job)": []}
    for _ in range(args.rounds):
        for name in times:
            work = Path(tempfile.mkdtemp(prefix="runner-e2e-"))
            (work / "outputs").mkdir()
            shutil.copy(template, work / "outputs" / "mlflow.db")
            if name.startswith("runner"):
                cmd = [sys.executable, "-m", "runner", f"hydra.run.dir={work / 'run'}", "train.progress=quiet"]
            else:
                shutil.copy(template, work / "mlflow.db")
                cmd = [sys.executable, str(HERE / "baseline_script.py"), str(work)]
            times[name].append(timed_run(cmd, work))
            shutil.rmtree(work, ignore_errors=True)
    base_cpu = statistics.median(t[0] for t in times["hand-written script (bench/baseline_script.py)"])
    base_wall = statistics.median(t[1] for t in times["hand-written script (bench/baseline_script.py)"])
    print(f"{'job':50} {'CPU s':>7} {'ratio':>6} {'wall s':>7} {'ratio':>6}")
    for name, ts in times.items():
        cpu, wall = statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)
        print(f"{name:50} {cpu:7.2f} {cpu / base_cpu:5.2f}x {wall:7.2f} {wall / base_wall:5.2f}x")
    print(f"({args.rounds} interleaved rounds, medians; CPU = user + system of the process and its children)")


if __name__ == "__main__":
    main()
