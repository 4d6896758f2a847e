"""The ``runner`` command: a Hydra app over ``conf/config.yaml`` that dispatches on ``task``.

User mistakes (``UserError``) end with a short message and exit status 2; set
``HYDRA_FULL_ERROR=1`` to see the full stack trace instead. Heavy libraries (torch, mlflow) are
imported only when a task needs them, so ``--help`` and tab completion stay fast.
"""
from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from runner.config import register_defaults

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

register_defaults()


@hydra.main(version_base="1.3", config_path="pkg://runner.conf", config_name="config")
def _app(cfg: DictConfig):
    from runner.errors import Terminated, UserError, first_line
    from runner.sweep import STATUS_FILE, job_context, write_status

    job = job_context()
    try:
        value = run_task(cfg, job)
        if job and not (job["output_dir"] / STATUS_FILE).is_file():
            write_status(job, "FINISHED")
        return value
    except Exception as e:
        if job is None and not isinstance(e, UserError) or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if job is not None:  # one failed job must not stop the sweep: report it, go on
            if not isinstance(e, UserError):
                import traceback

                traceback.print_exc()
            print(f"error in job {job['num']} ({job['overrides']}): {e}", file=sys.stderr)
            write_status(job, "FAILED", error=first_line(e))
            return float("nan")
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Terminated:
        print("terminated (SIGTERM)", file=sys.stderr)
        sys.exit(EXIT_TERMINATED)


def quiet_library_logs() -> None:
    """Keep MLflow's INFO chatter out of the run's output."""
    import logging

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_task(cfg: DictConfig, job: dict | None = None):
    from runner.api import prepare

    quiet_library_logs()

    prepared = prepare(cfg)
    if prepared.config.task == "inspect":
        from runner import tables

        tables.print_inspection(prepared.net, prepared.init_report, prepared.config.inspect.show)
        tables.write_reports(prepared, tables.run_directory())
        return None
    from runner.train.run import train_task

    return train_task(prepared, job)


SUBCOMMANDS = ("layers", "report")


def main() -> None:
    """``runner layers [TYPE]`` lists layer types, ``runner report RUN_ID|REF`` shows a run's layer
    health; anything else is a Hydra command line."""
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        if sys.argv[1] == "layers":
            from runner.docs import print_layers

            sys.exit(print_layers(sys.argv[2] if len(sys.argv) > 2 else None))
        quiet_library_logs()
        from runner.tracking.review import main as report_main

        sys.exit(report_main(sys.argv[2:]))
    _app()


if __name__ == "__main__":
    main()
