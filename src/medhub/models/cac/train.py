"""Training of the coronary-calcium lesion network on synthetic phantoms (``medhub cac train``).

Data: phantoms from :func:`medhub.synth.cac_phantom.make_cac_phantom`, generated on the fly from
:data:`~medhub.synth.cac_phantom.TRAIN_SEEDS` only (never the held-out seeds), with a training distribution wider
than the evaluation one: correlated noise SD 0-35 HU, blur 0-1 mm PSF, slice spacing 1-3.5 mm (thickness up to
1.5x), in-plane spacing 0.6-1.1 mm, distractors (aortic valve, mitral annulus, aortic wall), stents, edge-case
lesions, 20 % without coronary calcium, and a quarter of the cases re-sampled to 3 mm isotropic after generation
(like DeepCAC's 3 mm heart-localisation grid, the grid of the real LIDC test data).

Each phantom is prepared exactly like inference prepares a scan (:mod:`medhub.models.cac.lesions`): the heart
region (the phantom's heart, dilated by a random 3-12 mm) gives the working-grid box, the HU are resampled to the
isotropic working grid. The target is the coronary calcium (label 2) on the working grid, dilated by one working
voxel (so that the whole ``>= 130 HU`` blurred rim of a plaque is covered), minus non-coronary calcium and stents.
Patches are centred on coronary calcium, on negative candidates (``>= 130 HU`` voxels: noise specks, distractors,
stent, bone) and on random heart-region voxels. Loss: voxel-weighted BCE (weight 1 on and around candidates and
targets, 0.05 elsewhere) plus soft Dice over the candidate neighbourhood.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from medhub.hub.card import sha256_file
from medhub.learn.unet3d import UNet3D, UNet3DConfig
from medhub.masks import crop_centred, dilate_mm
from medhub.models.cac.lesions import (
    CANDIDATE_HU,
    DEFAULT_NET,
    SOFT_TISSUE_REFERENCE_HU,
    WORK_SPACING_MM,
    antialias,
    hu_channels,
    resample_linear,
    sidecar_path,
    to_work,
    work_grid_for,
)

#: Patch edge (working voxels) used in training.
PATCH = 40
REAL_LIKE_3MM = 3.0


@dataclass
class Case:
    """One prepared training phantom on its working grid."""

    seed: int
    hu: np.ndarray  # int16 working-grid HU
    target: np.ndarray  # bool
    weight: np.ndarray  # float16 loss weight
    dice_mask: np.ndarray  # bool: candidate neighbourhood
    positives: np.ndarray  # (N, 3) target voxel indices
    negatives: np.ndarray  # (M, 3) negative candidate indices
    distractors: np.ndarray  # (D, 3) negative candidates on non-coronary calcium or metal (valve, aorta, stent)
    region: np.ndarray  # (K, 3) heart-region voxel indices (subsampled)
    info: dict[str, Any]
    fat_sites: np.ndarray | None = None  # (F, 3) epicardial-fat voxels where a plaque may be inserted


#: Phantom options a share of training seeds may get (:func:`~medhub.synth.cac_phantom.make_cac_phantom`), with the
#: key of the random stream that decides which seeds get each.
PHANTOM_VARIANTS = {"coronary_variation": 0xC0B, "base_fat": 0xBA5F, "large_plaques": 0x1A5F}


def training_params(seed: int, variants: dict[str, float] | None = None) -> tuple[dict[str, Any], bool]:
    """Phantom keyword arguments for a training seed, and whether to re-sample the result to 3 mm isotropic.

    ``variants`` maps options of :data:`PHANTOM_VARIANTS` to the share of seeds whose phantom gets them (each drawn
    from a stream of its own, so every other parameter of a seed stays what it was without them)."""
    variants = variants or {}
    unknown = set(variants) - set(PHANTOM_VARIANTS)
    if unknown:
        raise ValueError(f"unknown phantom variants {sorted(unknown)}; known: {sorted(PHANTOM_VARIANTS)}")
    from medhub.synth.cac_phantom import TRAIN_SEEDS

    if seed not in TRAIN_SEEDS:
        raise ValueError(f"training seed {seed} is not in TRAIN_SEEDS {TRAIN_SEEDS}")
    rng = np.random.default_rng([int(seed), 0x7EA1])
    to_3mm = bool(rng.random() < 0.25)
    if to_3mm:
        dz = float(rng.choice([1.25, 2.5]))
        px = float(rng.uniform(0.65, 0.8))
    else:
        dz = float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5, 2.5, 3.0, 3.0, 3.5]))
        px = float(rng.uniform(0.6, 1.1))
    thickness = dz if rng.random() < 0.6 else float(min(5.0, round(dz * rng.uniform(1.2, 1.5) * 4) / 4))
    fov_xy = float(rng.uniform(190.0, 230.0))
    fov_z = float(rng.uniform(140.0, 180.0))
    n_xy = round(fov_xy / px)
    noise = float(rng.uniform(0.0, 35.0)) if rng.random() < 0.85 else float(rng.uniform(18.0, 32.0))
    params = {
        "seed": int(seed),
        "shape": (round(fov_z / dz), n_xy, n_xy),
        "spacing": (dz, px, px),
        "slice_thickness_mm": thickness,
        "noise_sd": noise,
        "noise_corr_mm": float(rng.uniform(0.5, 1.5)),
        "blur_mm": float(rng.uniform(0.0, 1.0)) if rng.random() < 0.8 else float(rng.uniform(0.4, 0.9)),
        "n_plaques": 0 if rng.random() < 0.2 else int(rng.integers(1, 9)),
        "distractors": bool(rng.random() < 0.9),
        "stent": bool(rng.random() < 0.15),
        "contrast": False,
        "edge_cases": bool(rng.random() < 0.15),
    }
    for option, stream in PHANTOM_VARIANTS.items():
        params[option] = bool(np.random.default_rng([int(seed), stream]).random() < variants.get(option, 0.0))
    return params, to_3mm


def _ball(radius_vox: float) -> np.ndarray:
    r = math.ceil(radius_vox)
    z, y, x = np.mgrid[-r:r + 1, -r:r + 1, -r:r + 1]
    return (z * z + y * y + x * x) <= radius_vox * radius_vox + 1e-6


def prepare_case(seed: int, rng: np.random.Generator | None = None, params: dict[str, Any] | None = None,
                 to_3mm: bool | None = None) -> Case:
    """Generate the phantom of a training seed and prepare it on the working grid."""
    from medhub.synth.cac_phantom import CORONARY_CALCIUM, OTHER_CALCIUM, STENT, make_cac_phantom

    if params is None:
        params, drawn_3mm = training_params(seed)
        to_3mm = drawn_3mm if to_3mm is None else to_3mm
    rng = np.random.default_rng([int(seed), 0x5A3]) if rng is None else rng
    ph = make_cac_phantom(**params)
    fine_spacing = tuple(float(s) for s in ph.spacing)
    if to_3mm:
        # the image lives on a 3 mm isotropic grid whose voxel i sits at fine index i * ratio
        ratio = [REAL_LIKE_3MM / s for s in fine_spacing]
        n3 = [int((n - 1) // r) + 1 for n, r in zip(ph.hu.shape, ratio, strict=True)]
        pos3 = [np.arange(n) * r for n, r in zip(n3, ratio, strict=True)]
        src = antialias(ph.hu, fine_spacing, REAL_LIKE_3MM) if rng.random() < 0.5 else ph.hu.astype(np.float32)
        hu_img = np.rint(resample_linear(src, pos3)).astype(np.int16)
        img_spacing = (REAL_LIKE_3MM,) * 3
        heart_img = resample_linear(ph.heart_mask.astype(np.float32), pos3) >= 0.5
    else:
        ratio = [1.0, 1.0, 1.0]
        hu_img = ph.hu
        img_spacing = fine_spacing
        heart_img = ph.heart_mask
    margin = float(rng.uniform(3.0, 12.0))
    region_img = dilate_mm(heart_img, img_spacing, margin)  # type: ignore[arg-type]
    nz = np.nonzero(region_img)
    lo = [int(a.min()) for a in nz]
    hi = [int(a.max()) + 1 for a in nz]
    grid = work_grid_for(lo, hi, img_spacing, multiple=8)
    hu_w = to_work(hu_img, img_spacing, grid)
    pos_img = grid.positions()
    pos_fine = [p * r for p, r in zip(pos_img, ratio, strict=True)]

    def on_work(mask: np.ndarray, positions: list[np.ndarray]) -> np.ndarray:
        box_lo = [max(0, math.floor(p.min())) for p in positions]
        box_hi = [min(n, math.ceil(p.max()) + 2) for p, n in zip(positions, mask.shape, strict=True)]
        box_lo = [min(a, n - 1) for a, n in zip(box_lo, mask.shape, strict=True)]
        crop = mask[tuple(slice(a, max(b, a + 1)) for a, b in zip(box_lo, box_hi, strict=True))]
        return resample_linear(crop.astype(np.float32), [p - a for p, a in zip(positions, box_lo, strict=True)])

    cor = on_work(ph.labels == CORONARY_CALCIUM, pos_fine)
    other = on_work((ph.labels == OTHER_CALCIUM) | (ph.labels == STENT), pos_fine)
    region_w = on_work(region_img, pos_img) >= 0.5
    core = cor > 0.05
    target = ndi.binary_dilation(core, _ball(1.0)) & ~((other > 0.3) & ~core)
    cand = (hu_w >= CANDIDATE_HU - 20.0) & region_w
    near = ndi.binary_dilation(cand | target, _ball(1.0))
    weight = np.full(hu_w.shape, 0.05, np.float16)
    weight[near] = 1.0
    positives = np.argwhere(target)
    negatives = cand & ~ndi.binary_dilation(target, _ball(1.0))
    distractors = np.argwhere(negatives & (other > 0.3))
    negatives = np.argwhere(negatives)
    region_idx = np.argwhere(region_w)
    if len(region_idx) > 4000:
        region_idx = region_idx[rng.choice(len(region_idx), 4000, replace=False)]
    heart_w = on_work(heart_img, pos_img) >= 0.5
    fat_sites = insertion_sites(hu_w, heart_w, (hu_w >= 200.0) | (other > 0.05) | core)
    if len(fat_sites) > 4000:
        fat_sites = fat_sites[rng.choice(len(fat_sites), 4000, replace=False)]
    info = {"params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()},
            "to_3mm": bool(to_3mm), "region_margin_mm": margin, "work_shape": list(hu_w.shape),
            "n_positive": len(positives), "n_negative": len(negatives)}
    return Case(seed=int(seed), hu=np.rint(hu_w).astype(np.int16), target=target, weight=weight,
                dice_mask=near, positives=positives, negatives=negatives, distractors=distractors,
                region=region_idx, info=info, fat_sites=fat_sites)


#: Default half-range (HU) of the global HU offset added to each training patch.
HU_OFFSET = 8.0
#: Fat level (HU) of the phantoms that :func:`remap_tissue_contrast` moves (with their soft tissue,
#: :data:`~medhub.models.cac.lesions.SOFT_TISSUE_REFERENCE_HU`).
FAT_HU = -100.0


def remap_tissue_contrast(hu: np.ndarray, fat_shift_hu: float, soft_shift_hu: float) -> np.ndarray:
    """``hu`` with fat moved by ``fat_shift_hu`` and soft tissue by ``soft_shift_hu``, calcium untouched.

    A monotone piecewise-linear map through (-1000, -1000), (:data:`FAT_HU`, + fat shift),
    (:data:`~medhub.models.cac.lesions.SOFT_TISSUE_REFERENCE_HU`, + soft shift) and
    (:data:`~medhub.models.cac.lesions.CANDIDATE_HU`, unchanged); identity outside -1000 to 130 HU. The phantoms
    give each tissue one HU, while on real scans fat and soft tissue vary with the patient, the scanner and partial
    volume; the Agatston threshold is absolute.
    """
    knots = np.array([-1000.0, FAT_HU, SOFT_TISSUE_REFERENCE_HU, CANDIDATE_HU])
    moved = knots + np.array([0.0, fat_shift_hu, soft_shift_hu, 0.0])
    inside = (hu > knots[0]) & (hu < knots[-1])
    return np.where(inside, np.interp(hu, knots, moved), hu).astype(np.float32)


#: Epicardial fat (HU) where :func:`insertion_sites` may put a plaque, and its distances (mm) to the heart's soft
#: tissue (at most) and to any calcium or bone already there (at least).
INSERT_FAT_HU, INSERT_NEAR_SOFT_MM, INSERT_CLEAR_MM = (-150.0, -40.0), 6.0, 9.0


def insertion_sites(hu: np.ndarray, heart: np.ndarray, dense: np.ndarray,
                    spacing_mm: tuple[float, float, float] = (WORK_SPACING_MM,) * 3,
                    clear_mm: float = INSERT_CLEAR_MM, lung_clear_mm: float | None = None) -> np.ndarray:
    """Voxel indices ``(N, 3)`` of fat inside ``heart``, within :data:`INSERT_NEAR_SOFT_MM` of its soft tissue and
    ``clear_mm`` clear of ``dense`` (calcium, bone, metal), and with ``lung_clear_mm``, as far from lung: where
    coronary plaques lie on real hearts, whatever path the phantom's coronaries take. Also picks the sites of
    ``benchmarks/cac_lesion_insertion.py`` on real scans."""
    fat = heart & (hu >= INSERT_FAT_HU[0]) & (hu <= INSERT_FAT_HU[1])
    soft = heart & (hu > 20.0) & (hu < 100.0)
    if not fat.any() or not soft.any():
        return np.zeros((0, 3), np.intp)
    keep = fat & dilate_mm(soft, spacing_mm, INSERT_NEAR_SOFT_MM)
    if dense.any():
        keep &= ~dilate_mm(dense, spacing_mm, clear_mm)
    if lung_clear_mm is not None:
        keep &= ~dilate_mm(hu < -400.0, spacing_mm, lung_clear_mm)
    return np.argwhere(keep)


def plaque_fraction_work(rng: np.random.Generator, size: int = 9, oversample: int = 4
                         ) -> tuple[np.ndarray, float]:
    """A random plaque on a ``size``³ block of the working grid: the fraction of each voxel it fills after a
    random blur, and its HU. HU, in-plane area (2-25 mm²) and length (1-8 mm) follow the phantoms' plaques; the
    blur (Gaussian sigma 0.3-1 mm) spans sharp kernels to about what DeepCAC's 3 mm resampling does."""
    from medhub.synth.cac_phantom import draw_plaque_hu

    plaque_hu = draw_plaque_hu(rng)
    radius = math.sqrt(float(np.exp(rng.uniform(np.log(2.0), np.log(25.0)))) / math.pi)
    half_length = float(rng.uniform(0.5, 4.0))
    fine = WORK_SPACING_MM / oversample
    n = size * oversample
    axis = (np.arange(n) - (n - 1) / 2.0) * fine
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij", sparse=True)
    c = rng.uniform(-0.5, 0.5, 3) * WORK_SPACING_MM
    inside = (((z - c[0]) / half_length) ** 2 + ((y - c[1]) / radius) ** 2 + ((x - c[2]) / radius) ** 2) <= 1.0
    blurred = ndi.gaussian_filter(inside.astype(np.float32), float(rng.uniform(0.3, 1.0)) / fine)
    return blurred.reshape(size, oversample, size, oversample, size, oversample).mean(axis=(1, 3, 5)), plaque_hu


def insert_plaque(hu: np.ndarray, target: np.ndarray, weight: np.ndarray, dice_mask: np.ndarray,
                  rng: np.random.Generator) -> None:
    """Paint a random plaque (:func:`plaque_fraction_work`) at the centre of a training patch, in place, and mark
    it as coronary calcium the way :func:`prepare_case` marks the phantoms' plaques, unless blur and partial volume
    leave it below the candidates' level (then it is just brighter fat)."""
    fraction, plaque_hu = plaque_fraction_work(rng)
    size = fraction.shape[0]
    lo = hu.shape[0] // 2 - size // 2
    box = (slice(lo, lo + size),) * 3
    hu[box] = (1.0 - fraction) * hu[box] + fraction * plaque_hu
    if hu[box][fraction > 0.05].max(initial=-1000.0) < CANDIDATE_HU - 20.0:
        return
    core = np.zeros(hu.shape, bool)
    core[box] = fraction > 0.05
    grown = ndi.binary_dilation(core, _ball(1.0))
    target |= grown
    near = ndi.binary_dilation(grown, _ball(1.0))
    weight[near] = 1.0
    dice_mask |= near


def sample_batch(cases: list[Case], rng: np.random.Generator, batch: int, patch: int = PATCH,
                 hard_negatives: float = 0.0, hu_offset: float = HU_OFFSET, tissue_contrast: float = 0.0,
                 insert_plaques: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of patches: inputs ``(B, 2, P, P, P)``, target, weight, Dice mask ``(B, 1, P, P, P)``.

    Patches centre on a positive voxel (45 %), a negative candidate (40 %) or anywhere in the heart region (15 %).
    With ``hard_negatives`` > 0 that share of patches first goes to non-coronary calcium (valve, annulus, aortic
    wall, stent) when the case has some: among all negative candidates bone dominates, so these are rarely drawn.
    Each patch's HU are scaled by 0.96-1.04 and shifted by up to ``hu_offset`` HU: scanners and patients differ in
    calibration and tissue density (the phantoms' tissues have one HU each). With ``tissue_contrast`` > 0, fat and
    soft tissue first move independently (:func:`remap_tissue_contrast`) by up to ``tissue_contrast`` and half of it.
    With ``insert_plaques`` > 0 that share of patches is centred on epicardial fat (:func:`insertion_sites`) and gets
    a plaque painted there (:func:`insert_plaque`): the phantoms' coronaries follow fixed paths, real ones do not.
    """
    xs, ts, ws, ds = [], [], [], []
    for _ in range(batch):
        case = cases[int(rng.integers(len(cases)))]
        u = rng.random()
        pool = None
        if u < hard_negatives:
            if len(case.distractors):
                pool = case.distractors
            u = u / hard_negatives
        else:
            u = (u - hard_negatives) / (1.0 - hard_negatives)  # the same draw as without hard negatives when 0
        if pool is None:
            if u < 0.45 and len(case.positives):
                pool = case.positives
            elif u < 0.85 and len(case.negatives):
                pool = case.negatives
            else:
                pool = case.region
        inserting = (insert_plaques > 0 and case.fat_sites is not None and len(case.fat_sites)
                     and rng.random() < insert_plaques)
        if inserting:
            centre = case.fat_sites[int(rng.integers(len(case.fat_sites)))]
        else:
            centre = pool[int(rng.integers(len(pool)))] + rng.integers(-patch // 4, patch // 4 + 1, 3)
        hu = crop_centred(case.hu, centre, (patch,) * 3, -1000).astype(np.float32)
        target = crop_centred(case.target, centre, (patch,) * 3, False)
        weight = crop_centred(case.weight, centre, (patch,) * 3, 0.05).astype(np.float32)
        dice_mask = crop_centred(case.dice_mask, centre, (patch,) * 3, False)
        if inserting:
            insert_plaque(hu, target, weight, dice_mask, rng)
        if tissue_contrast > 0:
            hu = remap_tissue_contrast(hu, float(rng.uniform(-tissue_contrast, tissue_contrast)),
                                       float(rng.uniform(-tissue_contrast, tissue_contrast)) / 2)
        hu = hu * float(rng.uniform(0.96, 1.04)) + float(rng.uniform(-hu_offset, hu_offset))
        xs.append(hu_channels(hu))
        ts.append(target[None])
        ws.append(weight[None])
        ds.append(dice_mask[None])

    def t(a: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(a).astype(np.float32))

    return t(xs), t(ts), t(ws), t(ds)


def loss_fn(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, dice_mask: torch.Tensor
            ) -> tuple[torch.Tensor, float, float]:
    """Weighted BCE + soft Dice (over the batch, inside ``dice_mask``). Returns (loss, bce, dice loss)."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = (bce * weight).sum() / weight.sum()
    p = torch.sigmoid(logits) * dice_mask
    tt = target * dice_mask
    dice = 1.0 - (2.0 * (p * tt).sum() + 1.0) / (p.sum() + tt.sum() + 1.0)
    return bce + dice, float(bce.detach()), float(dice.detach())


def train(out_path: Path, *, n_train: int = 96, epochs: int = 30, seed: int = 0, steps_per_epoch: int = 40,
          batch: int = 4, patch: int = PATCH, lr: float = 2e-3, threads: int = 2, first_seed: int = 0,
          net_config: UNet3DConfig = DEFAULT_NET, progress: bool = True, time_limit_s: float | None = None,
          log: Any = None, checkpoint: bool = False, phantom_overrides: dict[str, Any] | None = None,
          init_from: Path | None = None, notes: str | None = None, hard_negatives: float = 0.0,
          hu_offset: float = HU_OFFSET, tissue_contrast: float = 0.0, insert_plaques: float = 0.0,
          phantom_variants: dict[str, float] | None = None) -> dict[str, Any]:
    """Train the lesion network and write ``out_path`` (state dict) plus its JSON sidecar.

    Parameters
    ----------
    out_path:
        Where to write the ``.pt``; the sidecar is the same path with ``.json``.
    n_train:
        Number of training phantoms (seeds ``first_seed .. first_seed + n_train - 1`` of ``TRAIN_SEEDS``).
    epochs, steps_per_epoch, batch, patch:
        Optimisation length: ``epochs * steps_per_epoch`` Adam steps of ``batch`` patches of ``patch``³ voxels.
    seed:
        Seed of the initialisation and the patch sampling.
    lr:
        Peak learning rate (cosine decay to 5 % of it).
    threads:
        Torch CPU threads.
    time_limit_s:
        Stop early (after the current epoch) once training has run this long.
    checkpoint:
        Also write the state dict after every epoch to ``<out>.partial.pt``.
    phantom_overrides:
        Replace some phantom keyword arguments of every training case (e.g. a tiny ``shape`` for smoke tests).
    init_from:
        Start from these weights (a state dict of the same configuration) instead of a random initialisation.
    notes:
        Free text stored in the sidecar (e.g. how earlier stages of a warm-started training ran).
    hard_negatives:
        Share of patches centred on non-coronary calcium (see :func:`sample_batch`); 0 keeps the original sampling.
    hu_offset:
        Half-range (HU) of the random global HU shift of each patch (see :func:`sample_batch`).
    tissue_contrast:
        Half-range (HU) of the random shift of fat, independent of soft tissue's (see :func:`sample_batch`).
    insert_plaques:
        Share of patches with a plaque painted into epicardial fat (see :func:`sample_batch`).
    phantom_variants:
        Share of training phantoms given each option of :data:`PHANTOM_VARIANTS` (see :func:`training_params`):
        varied coronaries, a fat pad deep in the heart's base, heavy calcifications.

    The learning rate follows a cosine decay from ``lr`` to 5 % of it over the training's progress, measured as
    the larger of the fraction of steps done and, with ``time_limit_s``, the fraction of the time used.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from medhub.synth.cac_phantom import TRAIN_SEEDS

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(threads))
    torch.manual_seed(int(seed))
    rng = np.random.default_rng(int(seed))
    seeds = list(range(first_seed, first_seed + n_train))
    if any(s not in TRAIN_SEEDS for s in seeds):
        raise ValueError(f"seeds {seeds[0]}..{seeds[-1]} leave TRAIN_SEEDS {TRAIN_SEEDS}")
    t0 = time.time()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}"))
    cases: list[Case] = []
    history: list[dict[str, float]] = []
    net = UNet3D(net_config)
    if init_from is not None:
        net.load_state_dict(torch.load(init_from, map_location="cpu", weights_only=True))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    total_steps = epochs * steps_per_epoch
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("phantoms", total=len(seeds), status="")
        for s in seeds:
            params, to_3mm = training_params(s, phantom_variants)
            if phantom_overrides:
                params = {**params, **phantom_overrides}
            cases.append(prepare_case(s, params=params, to_3mm=to_3mm))
            bar.update(task, advance=1, status=f"seed {s}: {cases[-1].info['n_positive']} positive voxels")
        t_data = time.time() - t0
        task = bar.add_task("epochs", total=epochs, status="")
        net.train()
        epochs_done = 0
        step = 0
        t_train = time.time()
        for epoch in range(epochs):
            sums = np.zeros(3)
            for _ in range(steps_per_epoch):
                progress_frac = step / total_steps
                if time_limit_s is not None:
                    progress_frac = max(progress_frac, (time.time() - t_train) / max(1.0, time_limit_s - t_data))
                for group in opt.param_groups:
                    group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_frac))))
                step += 1
                x, tgt, w, dm = sample_batch(cases, rng, batch, patch, hard_negatives, hu_offset,
                                             tissue_contrast, insert_plaques)
                loss, b, d = loss_fn(net(x), tgt, w, dm)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sums += (float(loss.detach()), b, d)
            mean = sums / steps_per_epoch
            history.append({"epoch": epoch + 1, "loss": float(mean[0]), "bce": float(mean[1]),
                            "dice_loss": float(mean[2])})
            epochs_done = epoch + 1
            bar.update(task, advance=1, status=f"loss {mean[0]:.4f} (bce {mean[1]:.4f}, dice {mean[2]:.4f})")
            if log is not None:
                log(history[-1])
            if checkpoint:
                torch.save(net.state_dict(), out_path.with_suffix(".partial.pt"))
            if time_limit_s is not None and time.time() - t0 > time_limit_s:
                break
    net.eval()
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    torch.save(state, out_path)
    digest = sha256_file(out_path)
    sidecar = {
        "schema": "medhub.cac.lesion_weights/1",
        "file": out_path.name,
        "sha256": digest,
        "size_bytes": out_path.stat().st_size,
        "net": net_config.to_dict(),
        "n_parameters": net.n_parameters(),
        "preprocessing": {"work_spacing_mm": WORK_SPACING_MM, "candidate_hu": CANDIDATE_HU,
                          "channels": ["clip(HU,-250,350)/250", "clip(HU-130,0,800)/400"]},
        "training": {
            "data": "synthetic phantoms only (medhub.synth.cac_phantom); no patient data",
            "seed_source": "TRAIN_SEEDS", "seeds": [seeds[0], seeds[-1]], "n_train": n_train,
            "phantom_overrides": phantom_overrides,
            "epochs_requested": epochs, "epochs_done": epochs_done, "steps_per_epoch": steps_per_epoch,
            "batch": batch, "patch": patch, "lr": lr, "optimizer": "AdamW(wd=1e-4), cosine decay to 5%",
            "loss": "weighted BCE + soft Dice over the candidate neighbourhood", "seed": seed, "threads": threads,
            "init_from": None if init_from is None else Path(init_from).name, "notes": notes,
            "time_limit_s": time_limit_s, "hard_negatives": hard_negatives, "hu_offset": hu_offset,
            "tissue_contrast": tissue_contrast, "insert_plaques": insert_plaques,
            **{option: (phantom_variants or {}).get(option, 0.0) for option in PHANTOM_VARIANTS},
            "distribution": "noise SD 0-35 HU correlated 0.5-1.5 mm, blur 0-1 mm, slice spacing 1-3.5 mm, "
                            "in-plane 0.6-1.1 mm, 25% re-sampled to 3 mm isotropic, distractors 90%, stents 15%, "
                            "edge cases 15%, 20% without coronary calcium, no contrast",
            "data_seconds": round(t_data, 1), "total_seconds": round(time.time() - t0, 1),
            "final_losses": history[-1] if history else None,
            "history": history,
        },
        "torch_version": torch.__version__,
        "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "validation": "trained on synthetic phantoms only; not validated on patient scans",
    }
    sidecar_path(out_path).write_text(json.dumps(sidecar, indent=1) + "\n")
    return sidecar
