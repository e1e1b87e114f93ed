"""Few-shot finetuning of a pretrained backbone: ``medhub finetune``.

One checkpoint serves the three task kinds: the pretrained encoder (and, for segmentation, the decoder) is loaded,
its first convolution inflated from one input channel to the task's sequences (the pretrained filter copied to
each channel and divided by their number, so a sum of identical channels gives the pretrained response), and a
new head is trained:

* **classification** (``infarct``): :class:`~medhub.learn.unet3d.PooledHead`, cross-entropy;
* **regression** (``brain-age``): :class:`~medhub.learn.unet3d.PooledHead`, L1 on the target scaled by
  :attr:`Task.target_scale`;
* **segmentation** (``meningioma``, ``tumor``): the decoder and a 1x1x1 head, MONAI's Dice + cross-entropy on random
  crops (half of them centred on the lesion), MONAI's sliding-window inference on the whole preprocessed volume.

Classification and regression see the whole preprocessed volume at ``volume_mm`` voxels (2 mm by default: the
1 mm brain averaged in 2x2x2 blocks), padded to the network's multiple. ``shots`` sessions are drawn with a seed
(for classification, as evenly from each class as possible); the rest are the evaluation set. ``from_scratch``
trains the same network from random weights for the same budget: the supervised baseline.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medhub.brain.cache import CachedSession, cache_sessions
from medhub.brain.layout import find_sessions
from medhub.errors import InputError
from medhub.io.files import sidecar_path
from medhub.learn.checkpoints import load_pretrained
from medhub.learn.trainer import Trainer, TrainingConfig
from medhub.learn.unet3d import Decoder, Encoder, PooledHead, UNet3DConfig, pad_to_multiple
from medhub.masks import block_mean


@dataclass(frozen=True)
class Task:
    """A finetuning task: its kind, input sequences and outputs."""

    name: str
    kind: Literal["classification", "regression", "segmentation"]
    sequences: tuple[str, ...]
    classes: int = 2
    target_scale: float = 1.0


TASKS: dict[str, Task] = {
    "infarct": Task("infarct", "classification", ("dwi_b1000", "adc", "flair")),
    "meningioma": Task("meningioma", "segmentation", ("flair", "dwi_b1000", "t2s")),
    "brain-age": Task("brain-age", "regression", ("t1", "t2"), classes=1, target_scale=100.0),
    "tumor": Task("tumor", "segmentation", ("flair", "t1c")),
}


class TaskNet(nn.Module):
    """The shared encoder with a task head: :class:`PooledHead`, or the decoder and a 1x1x1 convolution."""

    def __init__(self, config: UNet3DConfig, task: Task) -> None:
        super().__init__()
        self.task = task
        self.config = config
        self.encoder = Encoder(config)
        if task.kind == "segmentation":
            self.decoder = Decoder(config)
            self.head: nn.Module = nn.Conv3d(config.base_channels, task.classes, 1)
        else:
            self.head = PooledHead(config.channels()[-1], task.classes, dropout=0.2)

    @property
    def size_multiple(self) -> int:
        return 2 ** (self.config.depth - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        if self.task.kind == "segmentation":
            return self.head(self.decoder(features))
        return self.head(features)


def load_finetuned(folder: str | Path) -> tuple[TaskNet, FinetuneConfig]:
    """The network and settings a :func:`finetune` run left in ``folder`` (its checkpoint and sidecar)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    sidecar = json.loads((folder / "checkpoint.json").read_text())
    task = Task(**{**sidecar["task"], "sequences": tuple(sidecar["task"]["sequences"])})
    net = TaskNet(UNet3DConfig.from_dict(sidecar["network"]), task)
    net.load_state_dict(load_file(str(folder / "checkpoint.safetensors")))
    return net, FinetuneConfig(**sidecar["finetune"])


def select_shots(sessions: list[CachedSession], task: Task, shots: int, seed: int
                 ) -> tuple[list[CachedSession], list[CachedSession]]:
    """``shots`` training sessions drawn with ``seed`` (classes as balanced as possible) and the rest."""
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(len(sessions)))
    if task.kind == "classification":
        by_class: dict[str, list[int]] = {}
        for i in order:
            by_class.setdefault(str(sessions[i].label), []).append(i)
        picked: list[int] = []
        while len(picked) < min(shots, len(sessions)):
            for members in by_class.values():
                if members and len(picked) < shots:
                    picked.append(members.pop(0))
    else:
        picked = order[:shots]
    chosen = set(picked)
    return [sessions[i] for i in picked], [s for i, s in enumerate(sessions) if i not in chosen]


def _stack(arrays: dict[str, np.ndarray], task: Task) -> np.ndarray:
    return np.stack([arrays[name] for name in task.sequences]).astype(np.float32)


@dataclass(frozen=True)
class FinetuneConfig:
    task: str
    shots: int
    seed: int = 0
    from_scratch: bool = False
    crop: int = 32
    batch_size: int = 2
    volume_mm: int = 2


class _Data:
    """The training sessions in memory, and the batch of each step (seeded by the step)."""

    def __init__(self, sessions: list[CachedSession], task: Task, config: FinetuneConfig, multiple: int) -> None:
        self.task, self.config, self.multiple = task, config, multiple
        self.items = []
        for session in sessions:
            arrays, seg, _ = session.load()
            x = _stack(arrays, task)
            if task.kind == "segmentation":
                self.items.append((x, (seg > 0).astype(np.int64) if seg is not None else np.zeros(x.shape[1:], int)))
            else:
                self.items.append((self._whole(x), float(session.label)))

    def _whole(self, x: np.ndarray) -> torch.Tensor:
        padded, _ = pad_to_multiple(torch.from_numpy(block_mean(x, self.config.volume_mm)), self.multiple)
        return padded

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.config.seed, 7, step])
        picks = rng.integers(len(self.items), size=self.config.batch_size)
        if self.task.kind != "segmentation":
            xs = [self.items[i][0] for i in picks]
            size = [max(x.shape[d] for x in xs) for d in range(1, 4)]
            xs = [F.pad(x, [p for d in (3, 2, 1) for p in (0, size[d - 1] - x.shape[d])]) for x in xs]
            ys = torch.tensor([self.items[i][1] for i in picks])
            return {"x": torch.stack(xs), "y": ys}
        xs, ys = [], []
        c = self.config.crop
        for i in picks:
            x, y = self.items[i]
            pad = [(0, 0)] + [(0, max(0, c - n)) for n in x.shape[1:]]
            x, y = np.pad(x, pad), np.pad(y, pad[1:])
            foreground = np.argwhere(y > 0)
            if len(foreground) and rng.random() < 0.5:
                centre = foreground[rng.integers(len(foreground))]
                corner = [int(np.clip(p - c // 2, 0, n - c)) for p, n in zip(centre, y.shape, strict=True)]
            else:
                corner = [int(rng.integers(0, n - c + 1)) for n in y.shape]
            box = tuple(slice(k, k + c) for k in corner)
            xs.append(x[(slice(None), *box)])
            ys.append(y[box])
        return {"x": torch.from_numpy(np.stack(xs)), "y": torch.from_numpy(np.stack(ys))}


def _loss_fn(task: Task) -> Any:
    if task.kind == "segmentation":
        from monai.losses import DiceCELoss

        dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
        return lambda out, y: dice_ce(out, y[:, None])
    if task.kind == "classification":
        return lambda out, y: F.cross_entropy(out, y.long())
    return lambda out, y: F.l1_loss(out[:, 0], y.float() / task.target_scale)


def predict(net: TaskNet, arrays: dict[str, np.ndarray], config: FinetuneConfig) -> np.ndarray | float:
    """The prediction on one preprocessed session: a label map on its grid, a class-1 probability, or a value."""
    task = net.task
    x = _stack(arrays, task)
    device = next(net.parameters()).device  # the trainer may have left the network on a GPU
    net.eval()
    with torch.no_grad():
        if task.kind == "segmentation":
            from monai.inferers import sliding_window_inference

            tensor, shape = pad_to_multiple(torch.from_numpy(x)[None], net.size_multiple)
            logits = sliding_window_inference(tensor.to(device), (config.crop,) * 3, 4, net, overlap=0.25)
            labels = logits.argmax(dim=1)[0, : shape[0], : shape[1], : shape[2]]
            return labels.cpu().numpy().astype(np.uint8)
        tensor, _ = pad_to_multiple(torch.from_numpy(block_mean(x, config.volume_mm))[None], net.size_multiple)
        out = net(tensor.to(device)).float().cpu()
        if task.kind == "classification":
            return float(torch.softmax(out, dim=1)[0, 1])
        return float(out[0, 0]) * task.target_scale


def evaluate(net: TaskNet, sessions: list[CachedSession], config: FinetuneConfig) -> dict[str, Any]:
    """Dice (segmentation), accuracy and AUC (classification) or MAE (regression) on ``sessions``."""
    from medhub.metrics.classification import auroc
    from medhub.metrics.segmentation import dice

    task = net.task
    rows = []
    for session in sessions:
        arrays, seg, _ = session.load()
        prediction = predict(net, arrays, config)
        if task.kind == "segmentation":
            rows.append({"session": session.key, "dice": dice(prediction > 0, seg > 0) if seg is not None else None})
        else:
            rows.append({"session": session.key, "prediction": prediction, "target": float(session.label)})
    summary: dict[str, Any] = {"n": len(rows)}
    if task.kind == "segmentation":
        values = [r["dice"] for r in rows if r["dice"] is not None]
        summary["dice_mean"] = float(np.mean(values)) if values else None
    elif task.kind == "classification" and rows:
        targets = np.array([r["target"] for r in rows])
        scores = np.array([r["prediction"] for r in rows])
        summary["accuracy"] = float(np.mean((scores > 0.5) == (targets > 0.5)))
        area = auroc(scores, targets > 0.5)
        summary["auc"] = None if np.isnan(area) else area
    elif rows:
        summary["mae"] = float(np.mean([abs(r["prediction"] - r["target"]) for r in rows]))
    return {"summary": summary, "cases": rows}


def finetune(checkpoint: str | Path | None, data: str | Path, output: str | Path, config: FinetuneConfig, *,
             arch_config: UNet3DConfig | None = None, training: TrainingConfig | None = None,
             cache: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Finetune (or, with ``config.from_scratch``, train from random weights) on ``config.shots`` sessions of
    ``data`` (finetuning layout), evaluate on the others, and write ``OUTPUT/finetuned.json`` with the results."""
    if config.task not in TASKS:
        raise InputError(None, f"unknown task {config.task!r}; choose from {', '.join(TASKS)}", code="bad-option")
    task = TASKS[config.task]
    output = Path(output)
    sessions = cache_sessions(find_sessions(data), cache or output / "cache", sequences=task.sequences,
                              progress=progress)
    usable = [s for s in sessions if (s.has_seg if task.kind == "segmentation" else s.label is not None)]
    if len(usable) < 2:
        raise InputError(data, f"{len(usable)} session(s) with the sequences {', '.join(task.sequences)} and a "
                         f"{'mask' if task.kind == 'segmentation' else 'label'}; need at least 2", code="no-input")
    sidecar: dict[str, Any] = {}
    if checkpoint is not None and not config.from_scratch:
        checkpoint = Path(checkpoint)
        sidecar = json.loads(sidecar_path(checkpoint).read_text())
        base = UNet3DConfig.from_dict(sidecar["network"])
    elif arch_config is not None:
        base = arch_config
    else:
        raise InputError(None, "give a --checkpoint, or --from-scratch with an architecture", code="bad-option")
    net_config = UNet3DConfig(**{**base.to_dict(), "in_channels": len(task.sequences), "out_channels": task.classes})
    torch.manual_seed(config.seed)
    net = TaskNet(net_config, task)
    if checkpoint is not None and not config.from_scratch:
        load_pretrained(net, Path(checkpoint))
    train, held_out = select_shots(usable, task, config.shots, config.seed)
    data_source = _Data(train, task, config, net.size_multiple)
    loss = _loss_fn(task)

    def step(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": loss(model(batch["x"]), batch["y"])}

    training = training or TrainingConfig(steps=200, lr=1e-3, warmup_steps=10, checkpoint_every=200,
                                          seed=config.seed)
    metadata = {"kind": "medhub-finetuning", "task": asdict(task), "finetune": asdict(config),
                "network": net_config.to_dict(), "pretrained": None if config.from_scratch else str(checkpoint),
                "pretraining": {k: sidecar.get(k) for k in ("objective", "arch", "sessions")} if sidecar else None,
                "train_sessions": [s.key for s in train]}
    trainer = Trainer(net, step, output, config=training, metadata=metadata, progress=progress)
    history = trainer.fit(data_source)
    results = {**metadata, "evaluation": evaluate(net, held_out, config), "steps": trainer.done,
               "final_loss": history[-1]["loss"] if history else None}
    (output / "finetuned.json").write_text(json.dumps(results, indent=1))
    return results
