"""``task=train``: reports into the run directory, a tracked MLflow run around the loop, and a
closing message that says where the run is and how to look at it."""
from __future__ import annotations

from pathlib import Path

from runner.config import as_typed
from runner.errors import UserError
from runner.tables import run_directory, write_reports
from runner.tracking.config import redact


def hydra_tags() -> dict[str, str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return {}
        hc = HydraConfig.get()
        tags = {f"runner.{group}": str(choice) for group, choice in hc.runtime.choices.items()
                if not group.startswith("hydra") and choice is not None}
        tags["runner.overrides"] = redact(" ".join(as_typed(hc.overrides.task))) or "(none)"
        return tags
    except (ImportError, ValueError):
        return {}


def train_task(prepared, job: dict | None = None) -> float | None:
    """Train, track and checkpoint; ``job`` is the multirun job context (``runner.sweep``)."""
    from runner.model.build import check_trainable
    from runner.train.optim import pick_device
    from runner.train.strategy import from_config

    check_trainable(prepared.net)  # fit() checks too; here it is refused before any process group or MLflow run
    strategy = from_config(prepared.config.train, pick_device(prepared.config.train.device))
    ok = False
    try:
        value = _train(prepared, strategy, job)
        ok = True
        return value
    finally:  # a gloo group left to interpreter teardown can abort the process (SIGABRT)
        strategy.close(ok)


def _train(prepared, strategy, job: dict | None) -> float | None:
    from runner.sweep import write_status
    from runner.tracking.stats import StatsCollector
    from runner.tracking.tracker import Tracker
    from runner.train.loop import READ_EVERY, fit

    cfg = prepared.config
    tcfg, ccfg = cfg.tracking, cfg.checkpoint
    out = run_directory()
    resume, entry = _resume_state(cfg, out, prepared)
    folder = entry.path.parent if entry is not None else out / "checkpoints"
    if cfg.train.compile and tcfg.activations:
        print("note: activation statistics are unavailable with train.compile (hooks inside a compiled graph are "
              "not kept); run without it to get them")
        tcfg = tcfg.model_copy(update={"activations": False})

    def checkpointer(run_id: str = ""):
        if not ccfg.enabled:
            return None
        from omegaconf import OmegaConf

        from runner.checkpoint.checkpointer import Checkpointer

        return Checkpointer(folder, ccfg, prepared.net, redact(OmegaConf.to_yaml(OmegaConf.create(cfg.plain()))), run_id,
                            write=strategy.is_main)

    every = tcfg.every_n_steps if tcfg.enabled else READ_EVERY
    if not strategy.is_main:  # only rank 0 writes reports, logs and checkpoints
        tracker = None
        if tcfg.enabled and strategy.sharded():  # statistics of sharded tensors need every rank
            tracker = Tracker(StatsCollector(prepared.net, tcfg, cfg.seed, strategy), NullSink(), tcfg)
        result = fit(prepared.net, prepared.data, cfg.train, tracker, checkpointer(), resume, cfg.seed, strategy,
                     every)
        return objective(cfg, result.final)
    write_reports(prepared, out)
    if cfg.train.resume and entry is None:
        print(f"train.resume=auto: no checkpoint in {out / 'checkpoints'}; starting fresh")
    elif entry is not None:
        print(f"resuming from {entry.path} (step {entry.step})")

    if not tcfg.enabled:
        result = fit(prepared.net, prepared.data, cfg.train, checkpointer=checkpointer(), resume=resume,
                     seed=cfg.seed, strategy=strategy, every=every)
        write_samples(prepared, out)
        print(f"trained {result.steps} steps; {_fmt(result.final, prepared.data)} (tracking disabled)")
        if job:
            write_status(job, "FINISHED", result.final)
        return objective(cfg, result.final)

    from runner.tracking.run import TrackedRun

    collector = StatsCollector(prepared.net, tcfg, cfg.seed, strategy)
    budget = tcfg.max_keys
    if collector.keys_per_step() > budget:
        raise UserError(f"tracking.max_keys: this model would log {collector.keys_per_step()} metric keys per run, "
                        f"over the budget of {budget} (the MLflow UI slows with many keys). Trim tracking.stats, "
                        "or raise tracking.max_keys.")
    name = ccfg.registered_name or cfg.model.get("name", "model")
    check_names(cfg, collector, ("checkpoint.registered_name" if ccfg.registered_name else "model.name", name)
                if ccfg.enabled and ccfg.register_ else None)
    tags = {**hydra_tags(), "runner.checkpoint_dir": str(folder.resolve())}
    if entry is not None:
        tags["runner.resumed_from_step"] = str(entry.step)
    if job and job["parent_run_id"]:
        tags["mlflow.parentRunId"] = job["parent_run_id"]
    resume_run = (resume or {}).get("run_id") or None
    if resume_run is None and cfg.train.resume == "auto":
        resume_run = started_here(out)  # killed before its first checkpoint: continue that run
    registered = None
    with TrackedRun(cfg, out, tags, resume_run_id=resume_run, name=job["run_name"] if job else None) as run:
        run.log_artifacts()
        ckpt = checkpointer(run.run_id)
        meta = {"title": f"{cfg.model.get('name', 'model')} · {run.name}", "run_id": run.run_id,
                "model": f"model {cfg.model.get('name', 'model')}, {sum(p.numel() for p in prepared.net.params().values()):,} "
                         f"parameters", "run_dir": str(out), "init_report": prepared.init_report.to_dict(),
                "report": tcfg.report.enabled}
        tracker = Tracker(collector, run.sink, tcfg, meta)
        baselines = prepared.data.baselines()
        if baselines and resume is None:
            tracker.log(baselines, 0)
        result = fit(prepared.net, prepared.data, cfg.train, tracker, ckpt, resume, cfg.seed, strategy, every)
        findings = tracker.finish(result.steps)
        run.set_health(findings)
        samples = write_samples(prepared, out)
        if samples is not None:
            run.sink.artifacts([str(samples)])
        final = ckpt and (ckpt.last or ckpt.store.latest())  # latest(): resumed with nothing left to train
        if final and ccfg.register_:
            registered = register(run, final, ckpt.store.best(), name, ccfg,
                                  job["overrides"] if job else telling_overrides(tags.get("runner.overrides", "")))
    rep = run.sink_report
    print(f"run {run.run_id} ({run.status}) in experiment '{tcfg.experiment}': "
          f"{result.steps} steps, {_fmt(result.final, prepared.data)}")
    print(f"  metrics: {rep.delivered}/{rep.queued} delivered"
          + (f", training waited {rep.waited_s:.2f}s on a full queue (backlog peaked at {rep.max_backlog} items)"
             if rep.waited_s > 0.01 else "")
          + (f", {rep.outages} store outage(s) bridged" if rep.outages else "")
          + (f", {rep.left} kept for later" if rep.left else "")
          + (f", {rep.lost} lost" if rep.lost else ""))
    for line in [*rep.notes, *rep.errors]:
        print(f"  note: {redact(line)}")
    if result.skipped:
        print(f"  {result.skipped} non-finite step(s) skipped")
    print(f"  health: {len(findings)} finding(s)" if findings else "  health: no findings")
    for f in findings:
        print(f"    - {f.rule}: {f.message}")
    print(f"  run directory: {out}" + (f"  (report: {out / 'report.html'})" if tcfg.report.enabled else ""))
    registered = run.registered_late or registered  # registered late, once the store came back
    if registered:
        print(f"  weights: {registered}")
    if run.late:
        print(f"  the store came back before the end: delivered {', '.join(run.late)}")
    deferred = ([f"{rep.left} metric values"] if rep.left else []) + ([f"{rep.deferred} upload(s)"] if rep.deferred
                                                                        else []) + run.deferred
    if deferred:
        print(f"  the store was unreachable at the end; kept for later: {', '.join(deferred)}. Once it is back, deliver "
              f"them with: python -m runner.tracking.spool {run.spool}")
    print(f"  view it: {run.ui_command()}  then open {run.ui_link()}")
    if job:
        write_status(job, "FINISHED", result.final, run.run_id)
    return objective(cfg, result.final)


def register(run, final, best, name: str, ccfg, overrides: str) -> str:
    """Register the final weights (see ``runner.checkpoint.registry.publish``); when the store is
    unreachable, the registration is deferred to the spool."""
    from runner.checkpoint.registry import publish
    from runner.tracking.spool import is_outage

    try:
        return publish(run.client, run.run_id, final, best, name, ccfg.best_metric, ccfg.best_mode, overrides)
    except Exception as e:
        if not is_outage(e):
            raise
        run.defer({"register": {"final": str(final.path), "best": str(best.path) if best else None, "name": name,
                                "metric": ccfg.best_metric, "mode": ccfg.best_mode, "overrides": overrides}})
        return f"{name} (registration deferred: the store is unreachable)"


def check_names(cfg, collector, registered) -> None:
    """Everything the run will send, checked against MLflow's own limits before the run exists."""
    from runner.errors import ConfigError
    from runner.tracking.keys import KeyNames
    from runner.tracking.limits import problems
    from runner.tracking.run import flatten

    names = KeyNames.for_model(collector.names, [n for n in collector.net.infos if n])  # as the Tracker numbers them
    layers = list(collector.net.leaf_modules())
    keys = [names.display(f"{stat}/{n}", 1.0)[0] for n in collector.names
            for stat in ("grad_norm", "weight_std", "update_ratio")] + \
           [names.display(f"act_mean/{layer}", 1.0)[0] for layer in layers]
    found = problems(flatten(cfg.plain()), keys, cfg.tracking.experiment, registered)
    if found:
        raise ConfigError(found)


def started_here(out: Path) -> str | None:
    """The MLflow run a run directory started (``mlflow_run.json``), if any."""
    import json

    try:
        return json.loads((out / "mlflow_run.json").read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        return None


class NullSink:
    """Where the statistics of ranks other than 0 go: nowhere (they only take part in reductions)."""

    draws = False  # the tracker skips assembling reviews nobody draws

    def log(self, metrics, step):
        pass

    def review(self, review):
        pass

    def flush(self):
        pass


def _resume_state(cfg, out: Path, prepared):
    """(training state, checkpoint entry) for ``train.resume``, or (None, None)."""
    if not cfg.train.resume:
        return None, None
    from runner.checkpoint.checkpointer import load_checkpoint, resolve_resume

    entry = resolve_resume(cfg.train.resume, out, cfg.tracking.uri)
    if entry is None:
        return None, None
    return load_checkpoint(entry, prepared.net, cfg.plain()), entry


QUIET_PREFIXES = ("tracking.", "hydra.", "checkpoint.", "train.progress", "train.resume", "task=", "+tracking.",
                  "+checkpoint.")


def telling_overrides(overrides: str) -> str:
    """The command line's overrides that can change the weights (not where things are logged)."""
    kept = [o for o in overrides.split() if not o.startswith(QUIET_PREFIXES)]
    return " ".join(kept) or "(defaults)"


def objective(cfg, final: dict) -> float | None:
    """The value a sweeper optimises: the final ``checkpoint.best_metric`` (default val/loss)."""
    metric = cfg.checkpoint.best_metric or "val/loss"
    return final.get(metric, final.get("val/loss"))


def _fmt(metrics: dict, data=None) -> str:
    text = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()) or "no validation data"
    baselines = data.baselines() if data is not None else {}
    return text + "".join(f" ({k.split('/')[-1].replace('_', ' ')} {v:.4g})" for k, v in baselines.items())


def write_samples(prepared, out: Path, lines: int = 8, length: int = 160) -> Path | None:
    """For a language model: a few lines sampled from the trained model, in ``samples.txt``."""
    data = prepared.data
    if data.task != "lm" or not hasattr(data, "decode"):
        return None
    import torch

    net = prepared.net
    device = next(net.parameters()).device
    g = torch.Generator(device=device).manual_seed(prepared.config.seed)
    net.eval()
    texts = []
    with torch.no_grad():
        ids = data.x_val[:lines, :1].to(device) if len(data.x_val) >= lines else data.sample()[:lines, :1].to(device)
        for _ in range(length):
            logits = net(ids[:, -data.block_size:])[:, -1].float() / 0.8
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=g)
            ids = torch.cat([ids, nxt], 1)
    net.train()
    for row in ids.cpu():
        texts.append(data.decode(row).replace("\n", "\u23ce "))
    path = out / "samples.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return path
