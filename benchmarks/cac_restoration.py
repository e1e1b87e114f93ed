"""Train and evaluate ``cac``'s partial-volume restoration (:mod:`medhub.models.cac.restoration`).

``cac_ceiling.py`` shows that scoring the image, even through the true plaque mask, stays at 80-86 % within
±10 %/±5 of the analytic truth: the PSF and the slice profile shrink the >= 130 HU area of faint plaques, and noise
lifts peaks over the 200/300/400 HU bin edges. The restoration network learns the correction per **lesion group**
(a 26-connected component of the lesion mask grown by one voxel): its **target** is the analytic Agatston of the
true plaques the group holds (each plaque goes to the group holding most of its footprint; a plaque no group
touches is *lost* and counts against the estimate), its input the group's patch, statistics, the spacing and the
scan's **sharpness**, the edge sigma measured on its lung edges (:func:`medhub.image_quality.edge_spread_sigma_mm`).

It learns the phantoms, whose plaques have one HU each (mid-bin 165/250/350 or 600-1,000): its output estimates the
noise-free, blur-free score of such plaques, which is not what image-based (clinical) Agatston measures.

    python benchmarks/cac_restoration.py data --first-seed 1300 --n 100 --out train_1300.npz --dense   # ... 2800
    python benchmarks/cac_restoration.py data --first-seed 5000 --n 80 --out val.npz
    python benchmarks/cac_restoration.py train --data 'train_*.npz' --val val.npz \
        --out src/medhub/models/cac/weights/cac_restoration.pt
    python benchmarks/cac_restoration.py data --first-seed 5000 --n 80 --out val_model.npz --masks model
    python benchmarks/cac_restoration.py evaluate --weights restoration.pt --data val_model.npz

``data --masks phantom`` draws the lesion mask from the phantom (the true footprint grown by 1-2 voxels, >= 130 HU,
cut at half maximum like the model: a model-like mask without the model's errors) on a 288 x 288 field of view;
``--masks model`` runs ``cac`` on the full phantom and takes its calcium label. ``--dense`` (training only) draws 3-9
plaques per phantom and heavy calcium in 15 % of them, and measures the sharpness on a 10-slice companion phantom
with the same scanner parameters (:func:`companion_sharpness`); other data measure it on the phantom itself, as
the model does.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from cac_ceiling import intrinsic_coronary_hu  # this script runs beside it
from cac_phantoms import TRUTH_CONVENTION, within_tolerance
from scipy import ndimage as ndi
from torch import nn

from medhub.cac.scoring import risk_category, score_calcium
from medhub.hub.card import sha256_file
from medhub.image_quality import edge_spread_sigma_mm
from medhub.models.cac.lesions import CANDIDATE_HU, half_maximum_footprint
from medhub.models.cac.restoration import (
    MAPPED,
    GroupRestorationNet,
    flips,
    group_patches,
    network_inputs,
    restore_scores,
)
from medhub.synth.cac_phantom import HELD_OUT_SEEDS, make_cac_phantom, random_phantom_params

_CUBE = np.ones((3, 3, 3), bool)
#: Raw scalar columns (:class:`medhub.models.cac.restoration.GroupPatches`) whose training range the sidecar keeps.
TRAINED_RANGE_COLUMNS = {"slice_spacing_mm": 0, "slice_thickness_mm": 1, "pixel_spacing_mm": 2, "edge_sigma_mm": 6}


# ------------------------------------------------------------------------------------------- data
def group_truth(intrinsic: np.ndarray, spacing: tuple[float, float, float], groups: np.ndarray
                ) -> tuple[dict[int, float], float]:
    """Analytic Agatston of the true plaques each group holds, and of the plaques no group touches (lost)."""
    footprint = intrinsic > 0
    plaques, n = ndi.label(footprint, structure=_CUBE)
    owner = np.zeros(n + 1, int)
    for index, box in enumerate(ndi.find_objects(plaques), start=1):
        held = groups[box][plaques[box] == index]
        held = held[held > 0]
        owner[index] = np.bincount(held).argmax() if len(held) else 0
    scores = {}
    for group in np.unique(owner[1:]):
        part = np.isin(plaques, np.flatnonzero(owner == group)) & footprint
        scores[int(group)] = score_calcium(intrinsic, spacing, part, MAPPED).agatston
    return {g: s for g, s in scores.items() if g}, scores.get(0, 0.0)


def phantom_like_mask(hu: np.ndarray, intrinsic: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A model-like lesion mask without the model's errors: the true footprint grown by 1-2 voxels in-plane and
    one slice, >= 130 HU, cut at half maximum as the model cuts."""
    near = ndi.binary_dilation(intrinsic > 0, structure=np.ones((1, 3, 3), bool), iterations=int(rng.integers(1, 3)))
    near = ndi.binary_dilation(near, structure=np.ones((3, 1, 1), bool))
    return half_maximum_footprint(hu, near & (hu >= CANDIDATE_HU))


def model_mask(phantom) -> np.ndarray | None:
    """The calcium label of ``cac`` on the phantom; ``None`` when it refuses."""
    from medhub.errors import MedhubError
    from medhub.io.volume import Volume
    from medhub.models.cac.model import CAC, CALCIUM_LABEL

    volume = Volume(phantom.hu, phantom.affine, modality="CT",
                    meta={"nominal_slice_thickness_mm": phantom.slice_thickness_mm})
    try:
        return CAC().predict(volume).labels == CALCIUM_LABEL
    except MedhubError:
        return None


def companion_sharpness(seed: int) -> float:
    """The edge sigma (mm) of a 10-slice, 288 x 288 phantom with the seed's scanner parameters (spacing, PSF,
    noise) and no plaques: the measurement of a training phantom at a third of the cost of measuring it whole."""
    params = random_phantom_params(seed, held_out=seed in HELD_OUT_SEEDS)
    params.update(shape=(10, 288, 288), n_plaques=0, stent=False)
    companion = make_cac_phantom(**params)
    return edge_spread_sigma_mm(companion.hu, companion.spacing)[0]


def make_data(first_seed: int, n: int, out: Path, masks: str, dense: bool) -> None:
    """Write ``out`` (npz): ``patches``, raw ``scalars``, ``std`` (standard score) and ``truth`` per group,
    ``group_phantom`` (its seed) and ``meta`` per phantom: seed, groups, truth held by groups, truth lost, total
    analytic truth, total standard score. The sharpness scalar is measured on the phantom itself, except for
    ``dense`` (training) data, which takes it from :func:`companion_sharpness`."""
    patches, scalars, standard, truth, group_seed, meta = [], [], [], [], [], []
    start = time.time()
    for seed in range(first_seed, first_seed + n):
        params = random_phantom_params(seed, held_out=seed in HELD_OUT_SEEDS)
        if params["contrast"]:
            continue
        rng = np.random.default_rng([seed, 77])
        if dense:
            params.update(n_plaques=int(rng.integers(3, 10)), large_plaques=bool(rng.random() < 0.15))
        if masks == "phantom":
            params["shape"] = (params["shape"][0], 288, 288)
        phantom = make_cac_phantom(**params)
        intrinsic = intrinsic_coronary_hu(phantom.truth, phantom.hu.shape)
        mask = phantom_like_mask(phantom.hu, intrinsic, rng) if masks == "phantom" else model_mask(phantom)
        if mask is None:
            print(f"seed {seed}: refused", flush=True)
            continue
        sharpness = companion_sharpness(seed) if dense else edge_spread_sigma_mm(phantom.hu, phantom.spacing)[0]
        inputs = group_patches(phantom.hu, phantom.spacing, phantom.slice_thickness_mm, mask, sharpness)
        p, s, std, groups = inputs.patches, inputs.scalars, inputs.standard, inputs.labels
        held, lost = group_truth(intrinsic, phantom.spacing, groups)
        total = phantom.truth["totals"][TRUTH_CONVENTION]["agatston"]
        if len(p):
            patches.append(p)
            scalars.append(s)
            standard.append(std)
            truth.append([held.get(g, 0.0) for g in inputs.group_ids])
            group_seed.append(np.full(len(p), seed))
        meta.append([seed, len(p), sum(held.values()), lost, total, float(std.sum())])
        print(f"seed {seed}: {len(p)} groups, truth {total:.1f} (lost {lost:.1f}), standard {std.sum():.1f}  "
              f"{time.time() - start:.0f} s", flush=True)
    np.savez_compressed(out, patches=np.concatenate(patches), scalars=np.concatenate(scalars),
                        std=np.concatenate(standard), truth=np.concatenate(truth),
                        group_phantom=np.concatenate(group_seed), meta=np.array(meta))


def load(patterns: str) -> dict[str, np.ndarray]:
    """The data files matching comma-separated glob patterns, concatenated, with the network's inputs
    (``net_patches``, ``net_scalars``)."""
    files = [np.load(f) for p in patterns.split(",") for f in sorted(glob.glob(p))]
    if not files:
        raise SystemExit(f"no data files match {patterns}")
    data = {k: np.concatenate([f[k] for f in files]) for k in files[0].files}
    data["net_patches"], data["net_scalars"] = network_inputs(data["patches"], data["scalars"])
    return data


# ------------------------------------------------------------------------------------------- network
def restore(net: GroupRestorationNet, data: dict[str, np.ndarray]) -> np.ndarray:
    """Restored per-group scores of a loaded data file."""
    return restore_scores(net, data["patches"], data["scalars"], data["std"])


def phantom_scores(data: dict[str, np.ndarray], per_group: np.ndarray) -> list[tuple[int, float, float]]:
    """(seed, truth, sum of ``per_group``) per phantom."""
    return [(int(m[0]), float(m[4]), float(per_group[data["group_phantom"] == m[0]].sum())) for m in data["meta"]]


def within(data: dict[str, np.ndarray], per_group: np.ndarray) -> int:
    return sum(within_tolerance(score, truth) for _seed, truth, score in phantom_scores(data, per_group))


def train(data: dict[str, np.ndarray], val: dict[str, np.ndarray], steps: int, out: Path, seed: int = 0) -> None:
    """Train the network and write ``out`` with its sidecar JSON (sha256, the scanner parameters it was trained
    on, which :func:`medhub.models.cac.restoration.restore_agatston` enforces, and the training record)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = GroupRestorationNet()
    optimiser = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 2e-3, total_steps=steps)
    target = (np.log1p(data["truth"]) - np.log1p(data["std"])).astype(np.float32)
    print(f"{len(target)} training groups, {len(val['std'])} validation groups", flush=True)
    start = time.time()
    for step in range(1, steps + 1):
        net.train()
        idx = rng.integers(0, len(target), 32)
        # the flip draws use the same generator as the batch, so a run is reproducible from its seed
        x = flips(torch.from_numpy(data["net_patches"][idx].astype(np.float32)), int(rng.integers(0, 8)))
        if rng.random() < 0.5:
            x = x.flip(2)
        pred = net(x, torch.from_numpy(data["net_scalars"][idx]))
        loss = nn.functional.smooth_l1_loss(pred, torch.from_numpy(target[idx]), beta=0.1)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 500 == 0:
            n = len(val["meta"])
            print(f"step {step}: loss {loss.item():.4f}; validation within ±10 %/±5: standard "
                  f"{within(val, val['std'])}/{n}, restored {within(val, restore(net, val))}/{n}  "
                  f"{time.time() - start:.0f} s", flush=True)
    torch.save(net.state_dict(), out)
    n = len(val["meta"])
    record = {
        "schema": "medhub.cac.restoration_weights/1", "file": out.name, "sha256": sha256_file(out),
        "size_bytes": out.stat().st_size, "n_parameters": sum(p.numel() for p in net.parameters()),
        "trained_range": {name: [round(float(data["scalars"][:, column].min()), 3),
                                 round(float(data["scalars"][:, column].max()), 3)]
                          for name, column in TRAINED_RANGE_COLUMNS.items()},
        "training": {
            "data": "synthetic phantoms only (medhub.synth.cac_phantom, benchmarks/cac_restoration.py data --dense); "
                    "no patient data",
            "seeds": [int(data["group_phantom"].min()), int(data["group_phantom"].max())],
            "n_phantoms": len(data["meta"]), "n_groups": len(target), "steps": steps, "batch": 32, "seed": seed,
            "validation_within_tolerance": {"phantoms": n, "standard": within(val, val["std"]),
                                            "restored": within(val, restore(net, val))},
            "command": " ".join(sys.argv), "torch": torch.__version__,
        },
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")


def evaluate(net: GroupRestorationNet, data: dict[str, np.ndarray]) -> None:
    readings = {"standard": phantom_scores(data, data["std"]), "restored": phantom_scores(data, restore(net, data))}
    for (seed, truth, standard), (_s, _t, estimate) in zip(*readings.values(), strict=True):
        ok = within_tolerance(standard, truth), within_tolerance(estimate, truth)
        if not all(ok):
            print(f"seed {seed}: truth {truth:7.1f}  standard {standard:7.1f} {'ok' if ok[0] else '--'}  "
                  f"restored {estimate:7.1f} {'ok' if ok[1] else '--'}")
    for name, scores in readings.items():
        none = [score for _seed, truth, score in scores if truth == 0]
        within_count = sum(within_tolerance(score, truth) for _seed, truth, score in scores)
        same_category = sum(risk_category(score) == risk_category(truth) for _seed, truth, score in scores)
        print(f"{name:>9}: within ±10 %/±5 of the analytic truth {within_count}/{len(scores)}, "
              f"category {same_category}/{len(scores)}, zero when none {sum(v == 0 for v in none)}/{len(none)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data", help="Generate phantoms and write their lesion groups.")
    d.add_argument("--first-seed", type=int, required=True)
    d.add_argument("--n", type=int, required=True)
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--masks", choices=("phantom", "model"), default="phantom")
    d.add_argument("--dense", action="store_true")
    t = sub.add_parser("train", help="Train the restoration network.")
    t.add_argument("--data", required=True, help="Comma-separated glob patterns of data files.")
    t.add_argument("--val", required=True)
    t.add_argument("--steps", type=int, default=4000)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("evaluate", help="Score data files with a trained network.")
    e.add_argument("--weights", type=Path, required=True)
    e.add_argument("--data", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.command == "data":
        make_data(args.first_seed, args.n, args.out, args.masks, args.dense)
    elif args.command == "train":
        train(load(args.data), load(args.val), args.steps, args.out, args.seed)
    else:
        net = GroupRestorationNet()
        net.load_state_dict(torch.load(args.weights, weights_only=True))
        evaluate(net, load(args.data))


if __name__ == "__main__":
    main()
