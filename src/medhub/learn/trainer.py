"""One training loop for every medhub model that learns: 3D brain MRI now, 2D face photos next.

:class:`Trainer` knows nothing of volumes or photos. It takes a model, a ``batch_at(step)`` function (the batch of a
given step, drawn from a generator seeded by the step, so that a resumed run sees the batches the uninterrupted run
would have seen) and a ``step`` function ``(model, batch) -> {"loss": tensor, …}``, and provides:

* AdamW with a linear warmup and a cosine decay to ``min_lr`` (:func:`learning_rate`);
* bf16 autocast on a GPU (full precision on the CPU), gradient-norm clipping;
* checkpoints as safetensors (weights) plus a JSON sidecar (configuration, step, optimizer state path, loss
  history), written atomically every ``checkpoint_every`` steps and at the end; ``resume=True`` continues from the
  newest one exactly where it stopped (model, optimizer, schedule, random state);
* a CSV log (``log.csv``: step, learning rate, every loss part, seconds) and a rich progress bar;
* multi-GPU data parallelism with torch DDP when started by ``torchrun`` (``WORLD_SIZE`` > 1): each process trains
  on its own batches, gradients are averaged, rank 0 writes. Start it as::

      torchrun --nproc_per_node 4 -m medhub pretrain --modality mri --data ROOT --objective mae --arch unet_b …
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medhub.io.files import atomic_path

StepFn = Callable[[nn.Module, Any], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings (learning rates per step; ``warmup_steps`` linear, then cosine to ``min_lr``)."""

    steps: int = 1000
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 50
    weight_decay: float = 0.05
    clip_norm: float = 1.0
    checkpoint_every: int = 200
    seed: int = 0


def learning_rate(step: int, config: TrainingConfig) -> float:
    """The learning rate at ``step`` (0-based): linear warmup to ``lr``, then cosine decay to ``min_lr``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def distributed() -> tuple[int, int]:
    """``(rank, world size)`` of this process: (0, 1) unless started by ``torchrun``."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@dataclass
class Trainer:
    """Train ``model`` with ``step`` on ``batches`` into ``output`` (see the module docstring)."""

    model: nn.Module
    step: StepFn
    output: Path
    config: TrainingConfig = field(default_factory=TrainingConfig)
    metadata: dict[str, Any] = field(default_factory=dict)
    progress: bool = True

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        self.rank, self.world = distributed()
        if torch.cuda.is_available():
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.model.to(self.device)
        self.net: nn.Module = self.model
        if self.world > 1:
            # An objective may leave a head unused (MAE leaves the contrastive projection): let DDP allow it.
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.config.lr,
                                           weight_decay=self.config.weight_decay)
        self.done = 0
        self.history: list[dict[str, float]] = []

    # -- checkpoints ---------------------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.output / "checkpoint.safetensors"

    def save(self) -> Path:
        """Write the weights (safetensors), the optimizer state and the JSON sidecar, each atomically."""
        from safetensors.torch import save_file

        if self.rank != 0:
            return self.checkpoint_path
        self.output.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        with atomic_path(self.checkpoint_path) as tmp:
            save_file(state, str(tmp))
        with atomic_path(self.output / "optimizer.pt") as tmp:
            torch.save({"optimizer": self.optimizer.state_dict(), "rng": torch.get_rng_state()}, tmp)
        sidecar = {**self.metadata, "training": asdict(self.config), "step": self.done,
                   "world_size": self.world, "weights": self.checkpoint_path.name, "loss_history": self.history}
        with atomic_path(self.output / "checkpoint.json") as tmp:
            tmp.write_text(json.dumps(sidecar, indent=1))
        return self.checkpoint_path

    def resume(self) -> bool:
        """Continue from the checkpoint in ``output`` if there is one; return whether one was found."""
        from safetensors.torch import load_file

        sidecar = self.output / "checkpoint.json"
        if not sidecar.is_file():
            return False
        meta = json.loads(sidecar.read_text())
        self.model.load_state_dict(load_file(str(self.checkpoint_path), device=str(self.device)))
        saved = torch.load(self.output / "optimizer.pt", map_location=self.device, weights_only=False)
        self.optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        self.done, self.history = int(meta["step"]), list(meta.get("loss_history", []))
        return True

    # -- the loop ------------------------------------------------------------------------------------------

    def fit(self, batch_at: Callable[[int], Any], *, resume: bool = False) -> list[dict[str, float]]:
        """Run the remaining steps; return the loss history (one row per step: step, lr, loss parts, seconds)."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        if not (resume and self.resume()):
            torch.manual_seed(self.config.seed + self.rank)
        self.output.mkdir(parents=True, exist_ok=True)
        writer = None
        log = None
        if self.rank == 0:
            # The log restarts from the checkpoint's history: steps run after it and lost are not kept twice.
            log = open(self.output / "log.csv", "w", newline="")  # noqa: SIM115 - closed in the finally below
            if self.history:
                writer = csv.DictWriter(log, fieldnames=list(self.history[0]))
                writer.writeheader()
                writer.writerows(self.history)
        use_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        try:
            with Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[loss]}"), TimeRemainingColumn(),
                          disable=not self.progress or self.rank != 0, transient=True) as bar:
                task = bar.add_task("steps", total=self.config.steps, completed=self.done, loss="")
                self.net.train()
                while self.done < self.config.steps:
                    start = time.perf_counter()
                    lr = learning_rate(self.done, self.config)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    batch = _to_device(batch_at(self.done), self.device)
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                        parts = self.step(self.net, batch)
                    self.optimizer.zero_grad(set_to_none=True)
                    parts["loss"].backward()
                    if self.config.clip_norm:
                        nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
                    self.optimizer.step()
                    self.done += 1
                    row = {"step": self.done, "lr": lr, **{k: float(v.detach()) for k, v in parts.items()},
                           "seconds": time.perf_counter() - start}
                    self.history.append(row)
                    if log is not None:
                        if writer is None:
                            writer = csv.DictWriter(log, fieldnames=list(row))
                            writer.writeheader()
                        writer.writerow(row)
                        log.flush()
                    bar.update(task, advance=1, loss=f"loss {row['loss']:.4f}")
                    if self.done % self.config.checkpoint_every == 0 or self.done == self.config.steps:
                        self.save()
        finally:
            if log is not None:
                log.close()
        return self.history


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch
