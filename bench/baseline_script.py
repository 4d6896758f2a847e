"""The default job written by hand: what ``runner`` (no arguments) does, without the runner.

The chapter's MLP (Flatten, Dense(4, relu), Dense(1)) on 4 uniform features with a teacher
network's targets, Adam at 0.01 for 10 epochs of batches of 32, per-layer mean/std/norm of every
parameter and gradient logged with ``mlflow.log_metrics`` every 10 steps, validation loss at
each epoch end, and a checkpoint (``torch.save`` of the state dict) per epoch, into a sqlite
MLflow store. ``bench/end_to_end.py`` runs it beside ``runner`` and compares their CPU time.

    python bench/baseline_script.py OUT_DIR
"""
import sys
from pathlib import Path

import mlflow
import torch
from torch import nn


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(512, 4, generator=g)
    w1, w2 = torch.randn(4, 8, generator=g), torch.randn(8, 1, generator=g)
    y = torch.tanh(x @ w1) @ w2 / 8**0.5 + 0.01 * torch.randn(512, 1, generator=g)
    perm = torch.randperm(512, generator=torch.Generator().manual_seed(1))
    val, train = perm[:102], perm[102:]
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    loss_fn = nn.MSELoss()
    mlflow.set_tracking_uri(f"sqlite:///{out.resolve() / 'mlflow.db'}")
    mlflow.set_experiment("baseline")
    step = 0
    with mlflow.start_run():
        mlflow.log_params({"lr": 0.01, "epochs": 10, "batch_size": 32})
        for epoch in range(10):
            order = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(epoch))]
            for i in range(0, len(order), 32):
                xb, yb = x[order[i:i + 32]], y[order[i:i + 32]]
                loss = loss_fn(net(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                if step % 10 == 0 or step == 1:
                    metrics = {"train/loss": loss.item()}
                    for name, p in net.named_parameters():
                        for kind, t in (("weight", p.detach()), ("grad", p.grad)):
                            metrics[f"{kind}_mean/{name}"] = t.mean().item()
                            metrics[f"{kind}_std/{name}"] = t.std().item() if t.numel() > 1 else 0.0
                            metrics[f"{kind}_norm/{name}"] = t.norm().item()
                    mlflow.log_metrics(metrics, step=step)
            with torch.no_grad():
                mlflow.log_metric("val/loss", loss_fn(net(x[val]), y[val]).item(), step=step)
            torch.save(net.state_dict(), out / f"checkpoint-{epoch}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
