"""Checkpoint throughput: the runner's save and load vs a plain write/read of the same bytes.

The runner's save writes safetensors weights and the training state, fsyncs each file,
checksums them, writes the manifest and renames the entry into place; its load verifies the
checksums, checks the weights against the model and copies them in. The plain path writes (with
and without fsync) and reads the same number of bytes. Interleaved rounds, medians.

    python bench/checkpoint_io.py [--width 2048] [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import interleaved, timed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import torch

    import runner
    from runner.checkpoint.checkpointer import Checkpointer, load_checkpoint

    layers = [{"type": "linear", "out": args.width, "activation": "relu"} for _ in range(3)] + [{"type": "linear", "out": 10}]
    prepared = runner.prepare(runner.compose(["data.features=784", "data.classes=10", "data.samples=256"],
                                             model={"name": "bench", "layers": layers}, data="classification"))
    net = prepared.net
    opt = torch.optim.Adam(net.parameters())
    net(prepared.data.sample()).sum().backward()
    opt.step()  # optimizer state: two more tensors per parameter, as in a real checkpoint
    state = {"optimizer": opt.state_dict(), "position": {"step": 1}}
    root = Path(tempfile.mkdtemp(prefix="runner-bench-ckpt-"))
    ckpt = Checkpointer(root / "ckpts", {"keep_last": 1, "keep_best": 0}, net, "config: {}")
    entry = ckpt.save(1, state, {})
    nbytes = sum(f.stat().st_size for f in entry.path.iterdir())
    payload = os.urandom(nbytes)
    plain = root / "plain.bin"
    step = [1]

    def runner_save() -> float:
        step[0] += 1
        return timed(lambda: ckpt.save(step[0], state, {}))

    def plain_write(sync: bool):
        def run() -> float:
            def write():
                with open(plain, "wb") as f:
                    f.write(payload)
                    if sync:
                        f.flush()
                        os.fsync(f.fileno())
            return timed(write)
        return run

    def runner_load() -> float:
        latest = ckpt.store.latest
        return timed(lambda: load_checkpoint(latest(), net))

    def plain_read() -> float:
        return timed(lambda: plain.read_bytes())

    plain_write(True)()
    res = interleaved({"runner save (weights+state, fsync, checksums, manifest, rename)": runner_save,
                       "plain write + fsync": plain_write(True), "plain write, no fsync": plain_write(False),
                       "runner load (verify checksums, check, copy in)": runner_load, "plain read": plain_read},
                      args.rounds)
    mb = nbytes / 2**20
    print(f"checkpoint of {sum(p.numel() for p in net.params().values()):,} parameters + Adam state: {mb:.1f} MiB")
    print(f"{'path':64} {'median s':>9} {'MiB/s':>8} {'vs plain':>9}")
    for name, secs in res.items():
        base = res["plain write + fsync"] if "save" in name or "write" in name else res["plain read"]
        print(f"{name:64} {secs:9.3f} {mb / secs:8.0f} {secs / base:8.2f}x")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
