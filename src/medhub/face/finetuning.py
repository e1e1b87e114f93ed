"""Finetuning the face ViT: ``medhub finetune --task face-age | survival --data TABLE.csv``.

The data is a CSV with one row per photo (a column ``image``/``file``/``path`` and the targets), cropped to the face
with the same :class:`~medhub.face.detect.CropPolicy` that the hub model applies at inference
(:class:`~medhub.face.data.CropCache`). A seeded ``holdout`` share of the rows (stratified by age decade, or by
event) is kept out of training and evaluated at the end.

* **face-age** (regression; L1 on years / 100, reported as MAE in years). Two stages, as FAHR-FaceAge trains: stage 1
  on all training photos drawn uniformly; stage 2, from stage 1's weights at a lower learning rate, with
  age-balanced resampling: each photo is drawn with probability proportional to 1 / (photos in its
  ``balance_bin``-year bin), so that every age is seen about equally often and the old, rare in photo collections,
  are not predicted younger than they are. ``balance_power`` below 1 softens it (probability proportional to
  1 / photos ** power), for a test set whose ages are less uniform than fully balanced draws assume.
  ``balance_min_age`` draws stage 2 from the photos of that age or older only: a model of adults (face-age 0.7.0:
  20+; on UTKFace this gained 0.3-0.4 years on the held-out adults, and children are then read as adults).
* **survival** (a risk score: the log hazard ratio; Cox partial likelihood with Breslow ties,
  :func:`~medhub.learn.losses.cox_partial_likelihood`). The partial likelihood of a batch without events is empty,
  and with few events it is noisy, so the batch sampler (:class:`PhotoBatches` with ``events_share``) fills
  ``max(2, events_share x batch)`` places of every batch with photos whose event happened, drawn at random, and the
  rest uniformly from all photos. Evaluated by Harrell's C-index with a bootstrap CI.

Both use the one training loop (:class:`~medhub.learn.trainer.Trainer`) and start from a pretraining checkpoint
(``medhub pretrain --modality photo``) or, with ``from_scratch``, from random weights at the same budget.
Predictions average the photo and its mirror image.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from medhub.errors import InputError
from medhub.face.data import CropCache, augment, read_labelled_table, to_tensor
from medhub.hub.export import MAIN_WEIGHTS, member_weights
from medhub.io.files import sidecar_path, write_text_atomic
from medhub.learn.trainer import Trainer, TrainingConfig
from medhub.learn.unet3d import PooledHead
from medhub.learn.vit2d import ViT2DConfig, ViTEncoder, vit_preset

PhotoTaskName = Literal["face-age", "survival"]
PHOTO_TASKS: tuple[str, ...] = ("face-age", "survival")
AGE_SCALE = 100.0  # years per network unit: the regression target is age / 100


class FaceNet(nn.Module):
    """The ViT encoder and a pooled linear head with one output: age / :data:`AGE_SCALE`, or a log hazard ratio."""

    def __init__(self, config: ViT2DConfig, dropout: float = 0.1) -> None:
        super().__init__()
        self.config = config
        self.encoder = ViTEncoder(config)
        self.head = PooledHead(config.hidden, 1, dropout=dropout, pooled=ViTEncoder.pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))[:, 0]


class FaceEnsemble(nn.Module):
    """The mean output of several :class:`FaceNet` of one architecture.

    Members finetuned from one pretraining with different schedules err differently; their mean is more accurate
    than either (:func:`combine_face_runs`)."""

    def __init__(self, members: Sequence[FaceNet]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(0)


@dataclass(frozen=True)
class PhotoFinetuneConfig:
    """Settings of a photo finetuning run (steps per stage; learning rates peak values)."""

    task: str = "face-age"
    arch: str = "tiny"
    #: Crop and network input (pixels a side); ``None``: the preset's.
    image_size: int | None = None
    batch_size: int = 64
    steps: int = 2000
    stage2_steps: int = 600
    lr: float = 5e-4
    stage2_lr: float = 1e-4
    warmup_steps: int = 100
    balance_bin: float = 5.0
    balance_power: float = 1.0
    #: Stage 2 draws only photos of this age (years) or older: FaceAge is for adults.
    balance_min_age: float = 0.0
    events_share: float = 0.25
    holdout: float = 0.15
    dropout: float = 0.1
    seed: int = 0
    from_scratch: bool = False


@dataclass
class PhotoBatches:
    """Augmented batches of crops and targets, seeded by the step (a resumed run sees the same batches).

    ``weights`` (per photo) makes the draw weighted (age-balanced stage 2); ``events`` (per photo, 0/1) with
    ``events_share`` puts that share of event photos in every batch (survival).
    """

    crops: np.ndarray
    targets: dict[str, np.ndarray]
    batch_size: int
    seed: int
    weights: np.ndarray | None = None
    events: np.ndarray | None = None
    events_share: float = 0.25
    _event_rows: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._event_rows = np.flatnonzero(self.events) if self.events is not None else np.zeros(0, int)

    def rows(self, rng: np.random.Generator) -> np.ndarray:
        n = len(self.crops)
        if self.weights is not None:
            return rng.choice(n, self.batch_size, p=self.weights / self.weights.sum())
        rows = rng.integers(0, n, self.batch_size)
        if len(self._event_rows):
            k = min(self.batch_size, max(2, round(self.events_share * self.batch_size)))
            rows[:k] = rng.choice(self._event_rows, k)
        return rows

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        rows = self.rows(rng)
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        batch = {"x": augment(to_tensor(self.crops[rows]), generator)}
        batch.update({k: torch.from_numpy(v[rows].astype(np.float32)) for k, v in self.targets.items()})
        return batch


def age_balancing_weights(ages: np.ndarray, bin_years: float, power: float = 1.0, min_age: float = 0.0
                          ) -> np.ndarray:
    """Per photo, 1 / (photos in its ``bin_years`` age bin) ** ``power``: with power 1 every bin is drawn equally
    often, with 0 as often as it occurs; photos younger than ``min_age`` (years) weigh 0."""
    ages = np.asarray(ages, float)
    bins = np.floor(ages / bin_years).astype(int)
    _, inverse, counts = np.unique(bins, return_inverse=True, return_counts=True)
    return np.where(ages >= min_age, 1.0 / counts[inverse].astype(float) ** power, 0.0)


def split_holdout(strata: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(train, holdout)``: ``share`` of each stratum, drawn with ``seed``, is held out."""
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for value in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == value))
        held += list(members[: round(share * len(members))])
    holdout = np.sort(np.array(held, dtype=int))
    train = np.setdiff1d(np.arange(len(strata)), holdout)
    return train, holdout


@torch.no_grad()
def predict_crops(net: nn.Module, crops: np.ndarray, *, batch_size: int = 128) -> np.ndarray:
    """The network's output for each crop, averaged with its mirror image (years for face-age: times
    :data:`AGE_SCALE` is up to the caller)."""
    net.eval()
    device = next(net.parameters()).device
    out = []
    for start in range(0, len(crops), batch_size):
        x = to_tensor(crops[start:start + batch_size]).to(device)
        out.append(((net(x) + net(torch.flip(x, dims=[3]))) / 2).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _decade(age: float) -> str:
    low = int(age // 10 * 10)
    return f"{low}-{low + 9}" if low < 90 else "90+"


def decade_strata(ages: np.ndarray) -> np.ndarray:
    """Each age's decade ("20-29", …, "90+"): the strata of face-age's held-out split."""
    return np.array([_decade(a) for a in ages])


def evaluate_age(ages: np.ndarray, predicted: np.ndarray, groups: dict[str, np.ndarray] | None = None,
                 *, seed: int = 0) -> dict[str, Any]:
    """MAE in years with its bootstrap 95 % CI, overall, for adults (20+), for those 40+ (nearer FaceAge's
    held-back adults, median 54), by age decade and by each column of ``groups``; plus the mean signed error
    (predicted - true) and Pearson r."""
    from medhub.metrics.bootstrap import bootstrap_ci

    errors = np.abs(predicted - ages)

    def summary(mask: np.ndarray) -> dict[str, float]:
        low, high = bootstrap_ci(errors[mask], seed=seed)
        return {"n": int(mask.sum()), "mae": float(errors[mask].mean()) if mask.any() else math.nan,
                "mae_low": low, "mae_high": high,
                "bias": float((predicted - ages)[mask].mean()) if mask.any() else math.nan}

    everyone = np.ones(len(ages), bool)
    result: dict[str, Any] = {"overall": summary(everyone), "adults_20_plus": summary(ages >= 20),
                              "adults_40_plus": summary(ages >= 40),
                              "pearson_r": float(np.corrcoef(ages, predicted)[0, 1]) if len(ages) > 2 else math.nan}
    decades = decade_strata(ages)
    result["by_decade"] = {d: summary(decades == d) for d in sorted(set(decades), key=lambda d: int(d[:2].strip("-+")))}
    for name, values in (groups or {}).items():
        result[f"by_{name}"] = {str(v): summary(values == v) for v in sorted(set(values), key=str)}
    return result


def finetune_photos(table: str | Path, output: str | Path, *, checkpoint: str | Path | None = None,
                    config: PhotoFinetuneConfig | None = None, images: str | Path | None = None,
                    image_column: str | None = None, age_column: str = "age", time_column: str = "time",
                    event_column: str = "event", report_by: tuple[str, ...] = (), crop_policy: Any = "default",
                    cache: str | Path | None = None, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Finetune a face model on ``table`` into ``output`` (checkpoint, sidecar, ``evaluation.json``,
    ``evaluation.csv``); return the sidecar with the held-out evaluation. ``resume`` continues each stage from
    its checkpoint in ``output`` (stage 1's in ``output/stage1``) where there is one: a finished stage is not
    run again."""
    from medhub.face.detect import CropPolicy
    from medhub.learn.checkpoints import load_pretrained

    config = config or PhotoFinetuneConfig()
    if config.task not in PHOTO_TASKS:
        raise InputError(None, f"unknown photo task {config.task!r}; choose from {', '.join(PHOTO_TASKS)}",
                         code="bad-option")
    if checkpoint is None and not config.from_scratch:
        raise InputError(None, "give --checkpoint (a pretraining checkpoint) or --from-scratch", code="bad-option")
    output = Path(output)
    frame, paths = read_labelled_table(table, images, image_column=image_column)
    needed = [age_column] if config.task == "face-age" else [time_column, event_column]
    missing = [c for c in (*needed, *report_by) if c not in frame.columns]
    if missing:
        raise InputError(table, f"column(s) {', '.join(missing)} not in the table", code="bad-input")
    pretrained_meta: dict[str, Any] = {}
    net_config = vit_preset(config.arch, image_size=config.image_size)
    if checkpoint is not None and not config.from_scratch:
        pretrained_meta = json.loads(sidecar_path(checkpoint).read_text())
        net_config = ViT2DConfig.from_dict(pretrained_meta["network"])
    policy = CropPolicy(size=net_config.image_size) if crop_policy == "default" else crop_policy
    crops = CropCache.build(paths, cache or output / "cache", policy=policy, size=net_config.image_size,
                            progress=progress)
    row_of = {str(p): i for i, p in enumerate(paths)}
    rows = np.array([row_of[str(p)] for p in crops.paths], dtype=int)
    frame = frame.iloc[rows].reset_index(drop=True)
    if config.task == "face-age":
        ages = frame[age_column].to_numpy(np.float64)
        targets = {"age": ages}
        strata = decade_strata(ages)
    else:
        times = frame[time_column].to_numpy(np.float64)
        events = frame[event_column].to_numpy(np.float64)
        if not np.isin(events, (0, 1)).all() or (times <= 0).any():
            raise InputError(table, f"{event_column!r} must be 0/1 and {time_column!r} > 0", code="bad-input")
        targets = {"time": times, "event": events}
        strata = events.astype(int).astype(str)
    train, holdout = split_holdout(strata, config.holdout, config.seed)
    if len(train) < 2 or len(holdout) < 2:
        raise InputError(table, f"{len(frame)} usable photos: too few to train and hold out", code="bad-input")

    torch.manual_seed(config.seed)
    net = FaceNet(net_config, dropout=config.dropout)
    if checkpoint is not None and not config.from_scratch:
        load_pretrained(net, checkpoint)
    train_targets = {k: v[train] for k, v in targets.items()}
    if config.task == "face-age" and config.stage2_steps > 0 and train_targets["age"].max() < config.balance_min_age:
        raise InputError(table, f"no training photo is {config.balance_min_age:g} years or older, so stage 2 "
                                "(--balance-min-age) has nothing to draw", code="bad-option")

    def step(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = model(batch["x"])
        if config.task == "face-age":
            return {"loss": torch.nn.functional.l1_loss(out, batch["age"] / AGE_SCALE)}
        from medhub.learn.losses import cox_partial_likelihood

        return {"loss": cox_partial_likelihood(out, batch["time"], batch["event"])}

    metadata = {"kind": "medhub-finetuning", "modality": "photo", "task": config.task,
                "network": net_config.to_dict(), "finetune": asdict(config),
                "crop_policy": None if policy is None else asdict(policy),
                "targets": {"age": age_column} if config.task == "face-age" else
                {"time": time_column, "event": event_column},
                "pretrained": {k: pretrained_meta.get(k) for k in ("objective", "arch", "photos_used", "data")}
                if pretrained_meta else None,
                "data": {"table": str(Path(table).resolve()), "photos": len(paths), "used": len(frame),
                         "no_face_or_unreadable": len(crops.failures), "train": len(train), "holdout": len(holdout)}}
    stage1 = TrainingConfig(steps=config.steps, lr=config.lr, min_lr=config.lr / 50,
                            warmup_steps=config.warmup_steps, checkpoint_every=max(1, config.steps // 4),
                            seed=config.seed)
    sampler = PhotoBatches(crops.crops[train], train_targets, config.batch_size, config.seed,
                           events=train_targets.get("event"), events_share=config.events_share)
    two_stage = config.task == "face-age" and config.stage2_steps > 0
    history = Trainer(net, step, output / "stage1" if two_stage else output, config=stage1,
                      metadata={**metadata, "stage": 1}, progress=progress).fit(sampler, resume=resume)
    if two_stage:
        stage2 = TrainingConfig(steps=config.stage2_steps, lr=config.stage2_lr, min_lr=config.stage2_lr / 20,
                                warmup_steps=min(config.warmup_steps, config.stage2_steps // 10),
                                checkpoint_every=config.stage2_steps, seed=config.seed + 1)
        balanced = PhotoBatches(crops.crops[train], train_targets, config.batch_size, config.seed + 1,
                                weights=age_balancing_weights(train_targets["age"], config.balance_bin,
                                                              config.balance_power, config.balance_min_age))
        history = history + Trainer(net, step, output, config=stage2, metadata={**metadata, "stage": 2},
                                    progress=progress).fit(balanced, resume=resume)

    predicted = predict_crops(net, crops.crops[holdout])
    held = frame.iloc[holdout]
    rows_out: list[dict[str, Any]] = []
    if config.task == "face-age":
        predicted_years = predicted * AGE_SCALE
        evaluation = evaluate_age(targets["age"][holdout], predicted_years,
                                  {c: held[c].to_numpy() for c in report_by}, seed=config.seed)
        for path, age, value in zip(np.array(crops.paths, dtype=object)[holdout], targets["age"][holdout],
                                    predicted_years, strict=True):
            rows_out.append({"image": str(path), "age": float(age), "predicted_age": float(value),
                             "abs_error": float(abs(value - age))})
    else:
        from medhub.survival.analysis import concordance

        scored = held.assign(_risk=predicted)
        evaluation = {"c_index": concordance(scored, time_column, event_column, "_risk", seed=config.seed),
                      "n": len(holdout), "events": int(targets["event"][holdout].sum())}
        for path, value in zip(np.array(crops.paths, dtype=object)[holdout], predicted, strict=True):
            rows_out.append({"image": str(path), "risk_score": float(value)})
    return record_evaluation(output, rows_out, evaluation, metadata, crops.failures, history)


def record_evaluation(output: Path, rows: list[dict[str, Any]], evaluation: dict[str, Any], metadata: dict[str, Any],
                      failures: dict[str, str], history: list[dict[str, float]]) -> dict[str, Any]:
    """Leave a finished photo run's held-out evaluation in ``output``: ``evaluation.csv`` (``rows``, one per
    held-out photo), ``evaluation.json`` (``metadata``, the evaluation, the failed photos, the final loss) and the
    checkpoint sidecar's ``evaluation``; return the sidecar with the loss ``history``."""
    from medhub.io import records

    records.write_csv(output / "evaluation.csv", rows)
    summary = {**metadata, "evaluation": evaluation, "failures": failures,
               "final_loss": float(np.mean([r["loss"] for r in history[-20:]])) if history else math.nan}
    records.write_json(output / "evaluation.json", summary)
    sidecar_file = output / "checkpoint.json"
    sidecar = json.loads(sidecar_file.read_text())
    sidecar["evaluation"] = evaluation
    write_text_atomic(sidecar_file, json.dumps(sidecar, indent=1))
    return {**sidecar, "history": history}


#: Share of a descriptor head in a face-age model that has one (the crop networks' mean has the rest).
DESCRIPTOR_HEAD_SHARE = 0.5


def combine_face_runs(runs: Sequence[str | Path], output: str | Path, *,
                      head_share: float = DESCRIPTOR_HEAD_SHARE) -> dict[str, Any]:
    """Several ``face-age`` runs of one network, crop and held-out split as one ensemble run in ``output``, for
    :func:`medhub.face.hub.export_face_model`: the first run's weights stay ``checkpoint.safetensors`` (so the
    folder is also a plain checkpoint of that run's network), run ``i``'s are ``member-<i>.safetensors``; the
    sidecar holds the first run's settings and, under ``members``, each member's weights file, settings and
    held-out figures; ``evaluation.csv`` and the sidecar's ``evaluation`` are the ensemble's prediction on the
    held-out photos. That is the members' mean (a :class:`FaceEnsemble`), and, when one of the runs is a
    descriptor head (:func:`medhub.face.descriptors.finetune_descriptor_head`, same photos and split), that mean
    weighted ``1 - head_share`` plus the head's weighted ``head_share``; the head is ``descriptor-head.safetensors``
    and the sidecar's ``descriptor_head``. Returns the sidecar."""
    import shutil

    import pandas as pd

    from medhub.face.descriptors import HEAD_WEIGHTS
    from medhub.io import records

    runs, output = [Path(r) for r in runs], Path(output)
    sidecars = [json.loads((run / "checkpoint.json").read_text()) for run in runs]
    for run, sidecar in zip(runs, sidecars, strict=True):
        if sidecar.get("task") != "face-age":
            raise InputError(run, "only face-age runs can be combined", code="bad-input")
    heads = [i for i, s in enumerate(sidecars) if s.get("head")]
    networks = [i for i in range(len(runs)) if i not in heads]
    if len(heads) > 1 or not networks:
        raise InputError(runs[heads[-1]], "a face-age model combines one or more crop networks with at most one "
                                          "descriptor head", code="bad-input")
    first = sidecars[networks[0]]

    def face_choice(sidecar: dict[str, Any]) -> Any:  # a head reads the face box, not the crop's size or margin
        policy = sidecar.get("crop_policy")
        return policy and {k: policy[k] for k in ("detector", "choose")}

    for i, (run, sidecar) in enumerate(zip(runs, sidecars, strict=True)):
        for key in ("network", "crop_policy", "data") if i in networks else ("face choice",):
            mine, theirs = (face_choice(s) if i in heads else s.get(key) for s in (sidecar, first))
            if mine != theirs:
                raise InputError(run, f"its {key} differs from {runs[networks[0]]}'s; members must share them",
                                 code="bad-input")
    held = [pd.read_csv(run / "evaluation.csv").set_index("image") for run in runs]
    if any(set(h.index) != set(held[0].index) for h in held):
        raise InputError(runs[0], "the runs held out different photos", code="bad-input")
    index = held[networks[0]].index
    predicted = np.mean([held[i].loc[index, "predicted_age"] for i in networks], 0)
    if heads:
        predicted = (1 - head_share) * predicted + head_share * held[heads[0]].loc[index, "predicted_age"].to_numpy()
    mean = held[networks[0]][["age"]].assign(predicted_age=predicted)
    mean["abs_error"] = (mean["predicted_age"] - mean["age"]).abs()
    evaluation = evaluate_age(mean["age"].to_numpy(), mean["predicted_age"].to_numpy(),
                              _held_out_groups(first, list(mean.index)), seed=first["finetune"]["seed"])
    output.mkdir(parents=True, exist_ok=True)
    files = [MAIN_WEIGHTS] + [f"member-{i}.safetensors" for i in range(1, len(networks))]
    for i, file in zip(networks, files, strict=True):
        shutil.copy2(runs[i] / MAIN_WEIGHTS, output / file)
    sidecar = {key: value for key, value in first.items() if key not in ("loss_history", "evaluation")}
    sidecar["members"] = [{"weights": file, "run": str(runs[i].resolve()), "finetune": sidecars[i]["finetune"],
                           "evaluation": _headline(sidecars[i]["evaluation"])}
                          for i, file in zip(networks, files, strict=True)]
    if heads:
        head = sidecars[heads[0]]
        shutil.copy2(runs[heads[0]] / MAIN_WEIGHTS, output / HEAD_WEIGHTS)
        sidecar["descriptor_head"] = {"weights": HEAD_WEIGHTS, "share": head_share,
                                      "run": str(runs[heads[0]].resolve()), **head["head"],
                                      "dropout": head["finetune"]["dropout"], "finetune": head["finetune"],
                                      "evaluation": _headline(head["evaluation"])}
    sidecar["evaluation"] = evaluation
    records.write_csv(output / "evaluation.csv", mean.reset_index().to_dict("records"))
    records.write_json(output / "evaluation.json", sidecar)
    write_text_atomic(output / "checkpoint.json", json.dumps(sidecar, indent=1))
    return sidecar


def _headline(evaluation: dict[str, Any]) -> dict[str, Any]:
    return {k: evaluation[k] for k in ("overall", "adults_20_plus", "adults_40_plus") if k in evaluation}


def _held_out_groups(sidecar: dict[str, Any], images: list[str]) -> dict[str, np.ndarray]:
    """The columns a run reported its held-out MAE by (``by_<column>``), for ``images``, read back from its table;
    none when the table or a photo is no longer where the run found it."""
    names = [k[3:] for k in sidecar.get("evaluation", {}) if k.startswith("by_") and k != "by_decade"]
    try:
        frame, paths = read_labelled_table(sidecar["data"]["table"])
        row_of = {p.resolve(): i for i, p in enumerate(paths)}
        rows = frame.iloc[[row_of[Path(image).resolve()] for image in images]]
    except (InputError, KeyError):
        return {}
    return {name: rows[name].to_numpy() for name in names if name in rows}


def load_face_net(folder: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The network (a :class:`FaceNet`, or a :class:`FaceEnsemble` when the sidecar lists ``members``) and sidecar
    that :func:`finetune_photos` or :func:`combine_face_runs` left in ``folder``."""
    from safetensors.torch import load_file

    from medhub.learn.checkpoints import dequantize

    folder = Path(folder)
    sidecar = json.loads((folder / "checkpoint.json").read_text())
    config = ViT2DConfig.from_dict(sidecar["network"])
    members = []
    for file in member_weights(sidecar):
        member = FaceNet(config, dropout=sidecar["finetune"].get("dropout", 0.1))
        member.load_state_dict(dequantize(load_file(str(folder / file))))
        members.append(member)
    net: nn.Module = members[0] if len(members) == 1 else FaceEnsemble(members)
    net.eval()
    return net, sidecar
