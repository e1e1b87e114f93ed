"""Train the candidate classifier (:mod:`.classifier`) on phantoms and on real anatomy with inserted plaques.

    medhub cac train-classifier [--phantoms 240] [--lidc-trials 40] [--out weights/cac_candidates.txt.gz]
                                [--leave-out-lidc DIR] [--workers 2] [--members 5] [--seed 0] [--aortic-wall 0]

Examples come from two sources, each run through the model's own steps (:func:`~.model.prepare_scan`: our heart,
region, metal and noise; then :func:`~.candidates.find_candidates`), so the classifier learns from exactly what it
will see:

1. **Phantoms** (:mod:`medhub.synth.cac_phantom`, seeds :data:`PHANTOM_FIRST_SEED` on, inside ``TRAIN_SEEDS`` and
   apart from every seed the lesion network, the restoration and the validation sets use): the held-out
   distribution's scanner draw (:func:`~medhub.synth.cac_phantom.random_phantom_params`; no contrast), with varied
   coronary courses, base fat, heavy plaques and calcified lymph nodes round the aortic root in a share of them,
   half resampled to DeepCAC's 3 mm grid (and of those, :data:`INSERT_SHARE` with 1-3 plaques inserted into their
   epicardial fat at any depth, as in source 2) and a third shifted by a calibration offset of up to ±25 HU. Each
   candidate's class is the phantom's truth: the calcification (coronary, aortic wall, valve or annulus) holding
   most of its voxels, else "other" (noise, bone, a lymph node, a stent's remains).
2. **Real chest CT** (the shared LIDC scans, ``../shared/data/lidc_chest_ct``): 3 plaques per trial inserted into
   epicardial fat (:mod:`medhub.synth.plaque_insertion`; heavy calcifications in a quarter of the trials, sites at
   any depth in DeepCAC's heart mask), a calibration offset of up to ±20 HU. Candidates on an inserted plaque or on
   DeepCAC's calcium mask are coronary; every other candidate is "other" (on these two scans: ribs, sternum,
   costal cartilage). The scan's own background candidates repeat in every trial, so they weigh
   :data:`REPEAT_WEIGHT` each; the inserted plaques weigh :data:`REAL_PLAQUE_WEIGHT` each, because the phantoms'
   coronaries seldom run deep in the heart's base fat while their valve calcium does, and real anatomy must
   outvote that (leave one scan out: weight 1 detects 79 % of the visible inserted plaques, 5 detects 90 %).
   Each trial also gets :data:`OUTSIDE_SPECKS` calcifications of the same draw, without a vessel, 6-21 mm outside
   the heart mask in fat or soft tissue (:func:`outside_pericardium_sites`), as class "other": no coronary runs
   outside the pericardium, and without these a classifier that never saw LIDC 0187 called a 168 HU speck behind
   its sternum coronary in every trial. ``aortic_wall=N`` (``--aortic-wall N``; 0, off, for the shipped
   classifier) also inserts N calcifications a trial into the wall of the descending aorta where it passes
   within :data:`AORTIC_NEAR_MM` of the heart (:func:`aortic_wall_sites`), as class "aortic". With 2, the
   classifier counted fewer of them as coronary but fewer deep coronary plaques too, with or without the distance
   to the aorta as a feature, as its calibration moved (benchmarks/RESULTS-history.md, 2026-12-07, sixth session);
   it stays off, and a rule calls calcium in that wall aortic instead (:data:`.classifier.AORTIC_WALL_MM`).

The insertion benchmark (``benchmarks/cac_lesion_insertion.py``) draws its plaques from other seeds; to measure on
a real scan the classifier has not seen, ``--leave-out-lidc DIR`` also fits ``DIR/without_<case>.txt`` for each
LIDC case, on everything but that scan.

The examples are gathered in job order whatever the number of workers, and the members' bagging draws rows by
position, so the same command gives the same model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from medhub.io.orientation import apply_canonical, canonical_volume
from medhub.io.volume import Volume
from medhub.masks import dilate_mm
from medhub.models.cac.classifier import CLASSES, MEMBERS, CandidateClassifier
from medhub.models.cac.model import prepare_scan

FOLDER = Path(__file__).resolve().parent
DEFAULT_OUT = FOLDER / "weights" / "cac_candidates.txt.gz"
LIDC = FOLDER.parents[3].parent / "shared" / "data" / "lidc_chest_ct"
LIDC_CASES = ("0187", "0987")
#: First phantom seed: the 0.x lesion network (removed in 0.14.0) used 0-679, the restoration 1,300-2,899,
#: validation 5,000-6,059.
PHANTOM_FIRST_SEED = 7000
#: Weight of a real scan's own background candidates, which come back in every trial.
REPEAT_WEIGHT = 0.2
#: Weight of a plaque inserted into a real scan (see the module docstring, source 2).
REAL_PLAQUE_WEIGHT = 5.0
#: Kind codes of the phantom's calcifications and the class each stands for.
KIND_CLASS = {"coronary": "coronary", "aortic": "aortic", "valve": "valve", "annulus": "valve"}
#: Calcifications inserted per LIDC trial outside the pericardium (class "other"; see the module docstring, source
#: 2), how far outside DeepCAC's heart mask (which holds the epicardial fat) they lie (mm), the HU of the tissue
#: they go into, and the weight of each.
OUTSIDE_SPECKS, OUTSIDE_MM, OUTSIDE_HU, OUTSIDE_WEIGHT = 2, (6.0, 21.0), (-200.0, 100.0), 1.0
#: Weight of a calcification inserted into the wall of the descending aorta (class "aortic"; ``--aortic-wall``, off
#: in the shipped classifier: see the module docstring, source 2).
AORTIC_WALL_WEIGHT = 1.0


def candidate_examples(volume: Volume, truth: np.ndarray, class_of_code: dict[int, str], scan: str,
                       weight_of_code: dict[int, float] | None = None) -> pd.DataFrame:
    """The candidates of ``volume`` (any orientation) with their features, ``class`` and ``weight``.

    ``truth`` is an int code map on the volume's grid; a candidate takes the class of the code holding most of its
    voxels (codes dilated by one voxel, as the PSF spreads calcium past its edge), "other" when no code does.
    """
    canonical, transform = canonical_volume(volume)
    codes = np.asarray(apply_canonical(truth, transform))
    hu = canonical.array
    candidates = prepare_scan(hu, canonical.spacing, canonical.direction).candidates(hu, canonical.spacing)
    table = candidates.table.copy()
    if not len(table):
        return table
    codes = codes[candidates.box]
    grown = ndi.grey_dilation(codes, size=(3, 3, 3)) if codes.any() else codes
    classes, weights = [], []
    for index, box in enumerate(ndi.find_objects(candidates.labels), start=1):
        values = grown[box][candidates.labels[box] == index]
        values = values[values > 0]
        code = int(np.bincount(values).argmax()) if len(values) else 0
        classes.append(class_of_code.get(code, "other"))
        weights.append((weight_of_code or {}).get(code, 1.0))
    table["class"] = classes
    table["weight"] = weights
    table["scan"] = scan
    return table.drop(columns=["centroid_index"])


def phantom_examples(seed: int) -> pd.DataFrame:
    """Candidates of one training phantom (see the module docstring, source 1)."""
    from medhub.io.nifti import resample_isotropic
    from medhub.synth.cac_phantom import TRAIN_SEEDS, make_cac_phantom, random_phantom_params

    if seed not in TRAIN_SEEDS:
        raise ValueError(f"seed {seed} is not a training seed")
    rng = np.random.default_rng([seed, 0xCA7D])
    params = {**random_phantom_params(seed), "contrast": False,
              "coronary_variation": bool(rng.random() < 0.5), "base_fat": bool(rng.random() < 0.4),
              "large_plaques": bool(rng.random() < 0.3), "nodes": bool(rng.random() < 0.5)}
    phantom = make_cac_phantom(**params)
    codes = np.zeros(phantom.hu.shape, np.uint8)
    names = list(dict.fromkeys(KIND_CLASS.values()))
    for plaque in phantom.truth["plaques"]:
        if plaque["kind"] in KIND_CLASS:
            voxels = np.asarray(plaque["voxels"])
            codes[tuple(voxels.T)] = names.index(KIND_CLASS[plaque["kind"]]) + 1
    hu = phantom.hu.astype(np.float32)
    if rng.random() < 1 / 3:
        hu += float(rng.uniform(-25.0, 25.0))
    volume = Volume(np.rint(hu).astype(np.int16), phantom.affine, modality="CT",
                    meta={"nominal_slice_thickness_mm": phantom.slice_thickness_mm})
    if rng.random() < 0.5:
        volume, masks = resample_isotropic(volume, 3.0, [phantom.heart_mask,
                                                         *(codes == i + 1 for i in range(len(names)))])
        heart, masks = masks[0], masks[1:]
        # nearest neighbour can miss a plaque smaller than a 3 mm voxel: _add_missed marks its nearest voxels
        codes = np.zeros(volume.shape, np.uint8)
        for i, mask in enumerate(masks):
            codes[mask] = i + 1
        codes = _add_missed(codes, phantom, volume, names)
        if rng.random() < INSERT_SHARE:
            volume, codes = _with_inserted_plaques(volume, heart, codes, names.index("coronary") + 1, rng)
    return candidate_examples(volume, codes, {i + 1: n for i, n in enumerate(names)}, f"phantom {seed}")


#: Share of the 3 mm phantoms that also get plaques inserted into their epicardial fat at any depth, as the real
#: scans do (the phantoms' own plaques follow their coronary paths only).
INSERT_SHARE = 0.6


def _with_inserted_plaques(volume: Volume, heart: np.ndarray, codes: np.ndarray, code: int,
                           rng: np.random.Generator) -> tuple[Volume, np.ndarray]:
    """1-3 plaques inserted into the epicardial fat of a 3 mm phantom (:mod:`medhub.synth.plaque_insertion`),
    marked ``code`` in ``codes``."""
    from medhub.synth.plaque_insertion import (
        HALF_BOX_LARGE,
        MIN_APART_MM,
        SITE_CLEAR_MM,
        SITE_LUNG_CLEAR_MM,
        insert_plaques,
        insertion_sites,
        pick_sites,
    )

    hu = volume.array.astype(np.float32)
    sites = insertion_sites(hu, heart, (hu >= 130) | (codes > 0), volume.spacing, clear_mm=SITE_CLEAR_MM,
                            lung_clear_mm=SITE_LUNG_CLEAR_MM)
    # a plaque's block must fit inside the phantom's smaller field of view
    sites = sites[np.all((sites >= HALF_BOX_LARGE) & (sites < np.array(hu.shape) - HALF_BOX_LARGE), axis=1)]
    chosen = pick_sites(sites, volume.spacing, int(rng.integers(1, 4)), MIN_APART_MM, rng)
    inserted = insert_plaques(hu, volume.spacing, chosen, rng, large=bool(rng.random() < 0.25))
    codes = codes.copy()
    for footprint in inserted.footprints:
        codes[footprint & (codes == 0)] = code
    return volume.with_array(inserted.hu), codes


def _add_missed(codes: np.ndarray, phantom: Any, volume: Volume, names: list[str]) -> np.ndarray:
    """Mark each phantom calcification at the resampled voxels nearest its own voxels (so that a plaque smaller
    than a 3 mm voxel still has a code)."""
    inverse = np.linalg.inv(volume.affine)
    for plaque in phantom.truth["plaques"]:
        if plaque["kind"] not in KIND_CLASS:
            continue
        voxels = np.asarray(plaque["voxels"], float)
        mm = voxels @ phantom.affine[:3, :3].T + phantom.affine[:3, 3]
        index = np.rint(mm @ inverse[:3, :3].T + inverse[:3, 3]).astype(int)
        index = index[np.all((index >= 0) & (index < volume.shape), axis=1)]
        if len(index):
            target = codes[tuple(index.T)]
            codes[tuple(index[target == 0].T)] = names.index(KIND_CLASS[plaque["kind"]]) + 1
    return codes


def lidc_examples(case: str, trial: int, seed: int = 1, aortic_wall: int = 0) -> pd.DataFrame:
    """Candidates of one LIDC scan with three inserted plaques and ``aortic_wall`` aortic wall calcifications (see
    the module docstring, source 2)."""
    from medhub.io.nifti import read_volume
    from medhub.synth.plaque_insertion import (
        MIN_APART_MM,
        PLAQUES_PER_TRIAL,
        SITE_CLEAR_MM,
        SITE_LUNG_CLEAR_MM,
        insert_plaques,
        insertion_sites,
        pick_sites,
    )

    rng = np.random.default_rng([seed, int(case), trial, 0x11DC])
    volume = read_volume(LIDC / f"{case}_ct_3mm.nrrd")
    labels = read_volume(LIDC / f"{case}_labels_3mm.nrrd").array
    hu0 = volume.array.astype(np.float32)
    heart, calcium = labels == 1, labels == 3
    sites = insertion_sites(hu0, heart, (hu0 >= 130) | calcium, volume.spacing, clear_mm=SITE_CLEAR_MM,
                            lung_clear_mm=SITE_LUNG_CLEAR_MM)
    chosen = pick_sites(sites, volume.spacing, PLAQUES_PER_TRIAL, MIN_APART_MM, rng)
    inserted = insert_plaques(hu0, volume.spacing, chosen, rng, large=bool(rng.random() < 0.25))
    codes = np.where(calcium, 1, 0).astype(np.uint8)
    for footprint in inserted.footprints:
        codes[footprint & (codes == 0)] = 2
    outside = pick_sites(outside_pericardium_sites(hu0, heart, (hu0 >= 130) | calcium | (codes > 0),
                                                   volume.spacing), volume.spacing, OUTSIDE_SPECKS,
                         MIN_APART_MM / 2, rng)
    specks = insert_plaques(inserted.hu, volume.spacing, outside, rng, vessel=False)
    for footprint in specks.footprints:
        codes[footprint & (codes == 0)] = 3
    hu = specks.hu
    if aortic_wall:  # from their own generator, so that the draws above stay the same with them or without
        wall_rng = np.random.default_rng([seed, int(case), trial, 0xA0A7])
        wall = insert_plaques(hu, volume.spacing, pick_sites(aortic_wall_sites(hu0, heart, volume.spacing),
                                                             volume.spacing, aortic_wall, MIN_APART_MM / 2, wall_rng),
                              wall_rng, vessel=False, large=bool(wall_rng.random() < 0.25))
        for footprint in wall.footprints:
            codes[footprint & (codes == 0)] = 4
        hu = wall.hu
    hu = hu.astype(np.float32) + float(rng.uniform(-20.0, 20.0))
    # the scan's own candidates (code 0 or 1) repeat in every trial
    table = candidate_examples(Volume(np.rint(hu).astype(np.int16), volume.affine, modality="CT"), codes,
                               {1: "coronary", 2: "coronary", 3: "other", 4: "aortic"}, f"lidc {case}",
                               weight_of_code={0: REPEAT_WEIGHT, 1: REPEAT_WEIGHT, 2: REAL_PLAQUE_WEIGHT,
                                               3: OUTSIDE_WEIGHT, 4: AORTIC_WALL_WEIGHT})
    table["trial"] = trial
    return table


def outside_pericardium_sites(hu: np.ndarray, heart: np.ndarray, dense: np.ndarray,
                              spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Voxel indices ``(N, 3)`` of fat and soft tissue (:data:`OUTSIDE_HU`) :data:`OUTSIDE_MM` outside ``heart``
    (DeepCAC's heart mask, epicardial fat included), 6 mm clear of lung and of ``dense``, and a plaque block's
    half-size inside the image: the chest wall behind the sternum, costal cartilage, mediastinal fat and lymph
    nodes, the great vessels' walls, where calcium is common and no coronary runs."""
    from medhub.synth.plaque_insertion import HALF_BOX

    distance = ndi.distance_transform_edt(~heart, sampling=spacing_mm) if heart.any() else np.zeros(heart.shape)
    keep = (distance >= OUTSIDE_MM[0]) & (distance <= OUTSIDE_MM[1]) & (hu >= OUTSIDE_HU[0]) & (hu <= OUTSIDE_HU[1])
    keep &= ~dilate_mm((hu < -400.0) | dense, spacing_mm, 6.0)
    sites = np.argwhere(keep)
    return sites[np.all((sites >= HALF_BOX) & (sites < np.array(hu.shape) - HALF_BOX), axis=1)]


def aortic_wall_sites(hu: np.ndarray, heart: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Voxel indices ``(N, 3)`` on the wall of the descending aorta (:func:`.aorta.descending_aorta`; 1.5 mm inside its
    outer edge, every 15°), at most :data:`AORTIC_NEAR_MM` from ``heart`` and a large plaque block's half-size
    inside the image: where aortic wall calcium lies close enough to the heart to become a candidate. Empty when
    the aorta is not found."""
    from medhub.models.cac.aorta import descending_aorta
    from medhub.synth.plaque_insertion import HALF_BOX_LARGE

    aorta = descending_aorta(hu, heart, spacing_mm)
    if aorta is None:
        return np.zeros((0, 3), int)
    centres, radius = aorta
    angles = np.radians(np.arange(0.0, 360.0, 15.0))
    sites = np.array([(k, round(r + (radius - 1.5) * np.sin(a) / spacing_mm[1]),
                       round(c + (radius - 1.5) * np.cos(a) / spacing_mm[2]))
                      for k, (r, c) in centres.items() for a in angles], int)
    sites = sites[np.all((sites >= HALF_BOX_LARGE) & (sites < np.array(hu.shape) - HALF_BOX_LARGE), axis=1)]
    outside = ndi.distance_transform_edt(~heart, sampling=spacing_mm)
    return sites[outside[tuple(sites.T)] <= AORTIC_NEAR_MM]


#: How far outside DeepCAC's heart mask inserted aortic wall calcium may lie (mm): farther, it is seldom a
#: candidate (the candidate region is our own heart mask grown by 10 mm).
AORTIC_NEAR_MM = 15.0


def collect(phantom_seeds: Iterable[int], lidc_trials: int, workers: int = 1, progress: bool = True,
            aortic_wall: int = 0) -> pd.DataFrame:
    """Every example, from ``workers`` processes (each one thread)."""
    jobs: list[tuple[Any, tuple]] = [(phantom_examples, (s,)) for s in phantom_seeds]
    if LIDC.is_dir():
        jobs += [(lidc_examples, (case, t, 1, aortic_wall)) for t in range(lidc_trials) for case in LIDC_CASES]
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    tables = []
    with Progress(TextColumn("[bold]candidate examples"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  disable=not progress) as bar:
        task = bar.add_task("examples", total=len(jobs))
        if workers <= 1:
            for job in jobs:
                tables.append(_run(job))
                bar.advance(task)
        else:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers, initializer=_one_thread) as pool:
                # in job order: the boosters' bagging draws rows by position, so the order is part of the model
                for table in pool.imap(_run, jobs):
                    tables.append(table)
                    bar.advance(task)
    return pd.concat([t for t in tables if len(t)], ignore_index=True)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _run(job: tuple[Any, tuple]) -> pd.DataFrame:
    """One job's examples; a scan the model refuses (no heart found) gives none, and says so."""
    from medhub.errors import MedhubError

    function, args = job
    try:
        return function(*args)
    except MedhubError as error:
        print(f"{function.__name__}{args}: skipped, {error}", flush=True)
        return pd.DataFrame()


def fit(examples: pd.DataFrame, record: dict[str, Any], members: int = MEMBERS, seed: int = 0
        ) -> CandidateClassifier:
    return CandidateClassifier({"seed": seed}, members=members).fit(
        examples, examples["class"].to_numpy(), examples["scan"].to_numpy(), examples["weight"].to_numpy(),
        record=record, sources=examples["scan"].str.split().str[0].to_numpy())


def train(out: Path | None = None, *, phantoms: int = 240, lidc_trials: int = 40, workers: int = 2,
          leave_out_lidc: Path | None = None, examples_csv: Path | None = None, members: int = MEMBERS,
          seed: int = 0, aortic_wall: int = 0, progress: bool = True) -> CandidateClassifier:
    """Collect the examples (or read them from ``examples_csv`` when it exists), fit, save to ``out`` (default:
    the model's shipped weights file); see the module docstring."""
    out = DEFAULT_OUT if out is None else out
    start = time.time()
    if examples_csv is not None and Path(examples_csv).exists():
        examples = pd.read_csv(examples_csv, float_precision="round_trip")
    else:
        seeds = range(PHANTOM_FIRST_SEED, PHANTOM_FIRST_SEED + phantoms)
        examples = collect(seeds, lidc_trials, workers, progress, aortic_wall)
        if examples_csv is not None:
            examples.to_csv(examples_csv, index=False)
    record = {"phantom_seeds": [PHANTOM_FIRST_SEED, PHANTOM_FIRST_SEED + phantoms - 1],
              "lidc_trials_per_case": lidc_trials if LIDC.is_dir() else 0,
              "command": f"medhub cac train-classifier --phantoms {phantoms} --lidc-trials {lidc_trials} "
                         f"--members {members} --seed {seed}"
                         + (f" --aortic-wall {aortic_wall}" if aortic_wall else ""),
              "collected_in_s": round(time.time() - start)}
    model = fit(examples, record, members, seed)
    model.save(out)
    if leave_out_lidc is not None:
        Path(leave_out_lidc).mkdir(parents=True, exist_ok=True)
        for case in LIDC_CASES:
            rest = examples[examples["scan"] != f"lidc {case}"]
            without = fit(rest, {**record, "left_out": f"lidc {case}"}, members, seed)
            without.save(Path(leave_out_lidc) / f"without_{case}.txt")
    return model


def summary(model: CandidateClassifier) -> str:
    report = model.record.get("out_of_fold", {})
    return (f"{model.record.get('rows')} candidates from {model.record.get('scans')} scans "
            f"({json.dumps(model.record.get('rows_per_class'))}); out of fold: {json.dumps(report)}, by source "
            f"{json.dumps(model.record.get('out_of_fold_by_source', {}))}; classes {', '.join(CLASSES)}")
