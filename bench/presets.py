"""The shipped presets trained through the real CLI on their defaults: parameters, final
validation figures and wall time (statistics, heat maps, report, checkpoints and registry
included), for the README's preset table.

    python bench/presets.py [--only digits_cnn,char_gpt]

Each preset runs as a fresh process against a copy of one migrated sqlite store. ``char_gpt``
also prints the loss of the text's unigram distribution, the baseline a model that learnt nothing
about context would reach.
"""
from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from common import fresh_store  # noqa: E402

PRESETS = {  # name -> (what, arguments)
    "d2l_mlp": ("the chapter's MLP (4-4-1), regression", []),
    "digits_cnn": ("2 conv + batch-norm stages, digits", ["experiment=digits_cnn"]),
    "digits_resnet": ("ResNet-style: stem, 2 residual blocks, digits", ["experiment=digits_resnet"]),
    "digits_se": ("digits_cnn stage + a user module (SqueezeExcite)",
                  ["experiment=digits_cnn", "model=digits_se"]),
    "digits_user_model": ("a whole user model (TinyConvNet, _target_)",
                          ["experiment=digits_cnn", "model=digits_user_model"]),
    "char_gpt": ("4-layer GPT, 128 wide, on stdlib docstrings", ["experiment=char_gpt"]),
}


def unigram_loss(text: str, val_fraction: float = 0.1) -> float:
    """Cross-entropy of the validation tail under the training part's character frequencies."""
    cut = int(len(text) * (1 - val_fraction))
    counts = Counter(text[:cut])
    total = sum(counts.values())
    val = text[cut:]
    return -sum(math.log(counts.get(c, 1) / total) for c in val) / len(val)


def run(name: str, args: list[str], template: Path) -> dict:
    work = Path(tempfile.mkdtemp(prefix="runner-preset-"))
    (work / "outputs").mkdir()
    shutil.copy(template, work / "outputs" / "mlflow.db")
    cmd = [sys.executable, "-m", "runner", *args, f"hydra.run.dir={work / 'run'}", "train.progress=quiet",
           f"tracking.uri=sqlite:///{work / 'outputs' / 'mlflow.db'}"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{name} failed:\n{r.stderr[-2000:]}")
    summary = (work / "run" / "summary.txt").read_text()
    params = next((line.split(":", 1)[1].strip() for line in summary.splitlines() if "Total params" in line), "?")
    closing = next(line for line in r.stdout.splitlines() if line.startswith("run "))
    health = next((line.strip() for line in r.stdout.splitlines() if line.strip().startswith("health:")), "")
    shutil.rmtree(work, ignore_errors=True)
    return {"params": params, "closing": closing.split(": ", 1)[1],
            "health": health, "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", help="comma-separated preset names")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(PRESETS)
    template_uri, _ = fresh_store()
    template = Path(template_uri[len("sqlite:///"):])
    print(f"{'preset':<18} {'what':<50} {'params':>9} {'wall s':>7}  result")
    for name in names:
        what, extra = PRESETS[name]
        out = run(name, extra, template)
        print(f"{name:<18} {what:<50} {out['params']:>9} {out['wall']:7.0f}  {out['closing']}  ({out['health']})",
              flush=True)
        if name == "char_gpt":
            from runner.data.text import stdlib_docstrings

            print(f"{'':<18} unigram baseline val/loss {unigram_loss(stdlib_docstrings()):.3f}")


if __name__ == "__main__":
    main()
