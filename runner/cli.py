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

from runner.config import register_defaults, settable, typed_text

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

register_defaults()


@hydra.main(version_base="1.3", config_path="pkg://runner.conf", config_name="config")
def _app(cfg: DictConfig):
    from runner.errors import Terminated, UserError, first_line
    from runner.sweep import job_context, job_finished, write_status
    from runner.tracking.config import redact

    previous = catch_sigterm()  # from here to the end, a SIGTERM ends the run KILLED (exit 143)
    job = job_context()
    try:
        scrub_saved_configs()
        value = run_task(cfg, job)
        if job and not job_finished(job):
            write_status(job, "FINISHED")
        return value
    except Exception as e:
        if Terminated.received:  # the signal's exception became another one on its way up
            terminated(job)
        if job is None and not isinstance(e, UserError) or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if job is not None:  # one failed job must not stop the sweep: report it, go on
            if not isinstance(e, UserError):
                import traceback

                traceback.print_exc()
            print(f"error in job {job['num']} ({job['overrides']}): {redact(str(e))}", file=sys.stderr)
            write_status(job, "FAILED", error=redact(first_line(e)))
            return float("nan")
        print(f"error: {redact(str(e))}", file=sys.stderr)
        sys.exit(e.exit_status)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        if job:
            write_status(job, "KILLED", error="interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except Terminated:
        terminated(job)
    finally:
        restore_sigterm(previous)


def terminated(job) -> None:
    """End the process as terminated by SIGTERM (exit status 143)."""
    from runner.sweep import write_status

    print("terminated (SIGTERM)", file=sys.stderr)
    if job:
        write_status(job, "KILLED", error="terminated (SIGTERM)")
    sys.exit(EXIT_TERMINATED)


def catch_sigterm():
    """SIGTERM raises ``Terminated`` in the main thread, in every phase of a task: start-up,
    training, registration, the final status."""
    import signal
    import threading

    from runner.errors import Terminated

    if threading.current_thread() is not threading.main_thread():
        return None
    Terminated.received = False

    def on_sigterm(signum, frame):
        Terminated.received = True
        raise Terminated()

    return signal.signal(signal.SIGTERM, on_sigterm)


def restore_sigterm(previous) -> None:
    import signal

    from runner.errors import Terminated

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
        Terminated.received = False


def scrub_saved_configs() -> None:
    """Hydra saved the composed config and the command line under ``.hydra/``: take the passwords
    of any ``user:password@`` URI out of them (they are logged as artifacts too)."""
    from runner.tables import run_directory
    from runner.tracking.config import redact

    folder = run_directory() / ".hydra"
    for f in folder.glob("*.yaml") if folder.is_dir() else []:
        text = f.read_text()
        clean = redact(text)
        if clean != text:
            tmp = f.with_name(f".{f.name}.tmp")
            tmp.write_text(clean)
            os.replace(tmp, f)


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
        if prepared.net.output_problem:
            print(f"note: model: {prepared.net.output_problem} (training would refuse it)")
        return None
    from runner.train.run import train_task

    return train_task(prepared, job)


SUBCOMMANDS = ("layers", "report")


def hydra_problem(ex: BaseException) -> str | None:
    """Hydra's own errors about the command line (an unknown preset or key, an override that
    does not parse or merge), said the runner's way; None for anything else."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    from runner.errors import did_you_mean, first_line

    text = typed_text(str(ex))
    if isinstance(ex, MissingConfigException) and ex.missing_cfg_file and "/" in ex.missing_cfg_file:
        group, _, name = ex.missing_cfg_file.rpartition("/")
        options = list(ex.options or [])
        listing = f"; presets: {', '.join(options)}" if options else ""
        return f"{group}: no preset named {name!r}{did_you_mean(name, options)}{listing}"
    if isinstance(ex, OverrideParseException):
        override = typed_text(getattr(ex, "override", "") or "")
        return (f"cannot parse the override {override!r}: {first_line(Exception(getattr(ex, 'message', text)))} "
                "(the grammar: https://hydra.cc/docs/advanced/override_grammar/basic; quote values with spaces)")
    if isinstance(ex, ConfigCompositionException):
        if text.startswith("Could not override '"):
            key = text[len("Could not override '"):].split("'")[0]
            parent, _, leaf = key.rpartition(".")
            known = known_keys(parent)
            if known:  # a schema's section: a key it does not define would be refused anyway
                return f"{key}: unknown key{did_you_mean(leaf, known)}; known here: {', '.join(sorted(known))}"
            return f"{key}: unknown key; to add a key that is not in the config, write +{key}=..."
        cause = ex.__cause__
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        where = getattr(cause, "full_key", None)
        detail = first_line(cause) if cause is not None else (lines[1] if len(lines) > 1 else lines[0])
        return (f"{where}: " if where else "") + f"{lines[0]}: {detail}"
    return None


def known_keys(path: str) -> list[str]:
    """The keys a config path may hold, from the schemas (for did-you-mean); [] when unknown."""
    from runner.config import TopConfig, schemas
    from runner.schema import _schema_in, field_names

    parts = path.split(".") if path else []
    top = {name: _schema_in(info.annotation) for name, info in TopConfig.model_fields.items()}
    if not parts:
        return [*top, "model", "init", "data", *schemas()]  # model, init, data: groups with YAML presets only
    cls = {**schemas(), **top}.get(parts[0])
    for part in parts[1:]:
        if cls is None:
            return []
        info = next((i for n, i in cls.model_fields.items() if part in (n, i.alias)), None)
        cls = _schema_in(info.annotation) if info is not None else None
    return field_names(cls) if cls is not None else []


def report_hydra_errors() -> None:
    """Make Hydra's errors about the command line end like the runner's own: a short message and
    exit status 2 (``HYDRA_FULL_ERROR=1`` still shows Hydra's full trace)."""
    from hydra._internal import utils as hydra_utils  # hydra-core 1.3 (pinned): its error reporter

    original = hydra_utils.run_and_report
    if getattr(original, "runner_wrapped", False):
        return

    def run_and_report(func):
        try:
            return func()
        except Exception as ex:
            from runner.errors import UserError
            from runner.tracking.config import redact

            message = None if os.environ.get("HYDRA_FULL_ERROR") == "1" else (
                str(ex) if isinstance(ex, UserError) else hydra_problem(ex))
            message = redact(message) if message else message
            if message is None:
                error = ex
                return original(lambda: _reraise(error))
            print(f"error: {message}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    run_and_report.runner_wrapped = True
    hydra_utils.run_and_report = run_and_report


def _reraise(ex: BaseException):
    raise ex


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
    report_hydra_errors()
    sys.argv[1:] = settable(sys.argv[1:])
    _app()


if __name__ == "__main__":
    main()
