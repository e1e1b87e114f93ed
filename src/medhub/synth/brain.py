"""Generated brain MRI sessions with known labels, built from the real MNI152 template that nilearn ships.

**These brains are for plumbing and for relative comparisons** (does pretraining help at a fixed budget, does the
pipeline run end to end, does the inverse preprocessing land a mask where it belongs). They are not patients:
their contrasts are tissue mixtures with invented intensities, their lesions are shapes, and no figure measured on
them says how a model does on real scans.

A subject is the ICBM152 2009a template's grey matter, white matter and CSF fractions (1 mm, RAS), then:

* a random smooth deformation (a Gaussian-smoothed displacement field, a few mm);
* atrophy driven by ``age`` (20-90 years): grey and white matter shrink into CSF, most at the ventricles and sulci,
  so brain age is learnable from the image;
* pseudo-sequences ``t1``, ``t2``, ``flair``, ``dwi_b1000``, ``adc``, ``t2s`` (and, on request, ``t1c``: T1 after
  gadolinium, the mass enhancing) as mixtures of per-tissue intensities, each subject with its own contrast jitter;
* optionally an **infarct** in a vascular territory (the lateral cortex and white matter of one middle cerebral
  artery territory): bright on DWI, dark on ADC, bright on T2/FLAIR;
* optionally an **extra-axial mass** (meningioma-like): a dural-based ellipsoid at the brain's surface that
  displaces the cortex, bright on FLAIR and T2;
* a smooth multiplicative bias field, Rician noise and motion ghosting;
* an **out-of-domain clinical** variant: thick slices (e.g. 0.9 x 0.9 x 6 mm, each slice the mean over its
  thickness) and changed contrasts.

Arrays are NIfTI-ordered ``(x, y, z)`` with a RAS affine in mm, as FOMO60K stores them; :func:`write_session` writes
the FOMO layout.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from medhub.masks import block_mean

#: Sequences a session has by default (FOMO60K's names); ``t1c`` (post-contrast T1, the mass enhancing) on request.
SEQUENCES = ("t1", "t2", "flair", "dwi_b1000", "adc", "t2s")
#: Per-tissue intensities (GM, WM, CSF, lesion multiplier for infarct, mass) of each pseudo-sequence.
_TISSUE = {
    #           GM     WM     CSF   infarct  mass
    "t1":       (0.62, 0.95, 0.22, 0.80, 0.70),
    "t2":       (0.62, 0.45, 1.00, 1.50, 0.80),
    "flair":    (0.70, 0.55, 0.08, 1.60, 1.15),
    "dwi_b1000": (0.72, 0.62, 0.20, 2.60, 0.75),
    "adc":      (0.80, 0.72, 3.00, 0.50, 0.90),  # x 1e-3 mm^2/s
    "t2s":      (0.60, 0.50, 0.90, 1.20, 0.70),
    "t1c":      (0.62, 0.95, 0.22, 0.80, 1.45),  # post-gadolinium T1: the mass enhances
}
AGE_RANGE = (20.0, 90.0)


@dataclass(frozen=True)
class Atlas:
    """The template's tissue fractions (GM, WM, CSF in [0, 1]), brain mask and RAS affine, at some resolution."""

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    mask: np.ndarray
    affine: np.ndarray


@functools.lru_cache(maxsize=4)
def load_atlas(resolution_mm: float = 1.0) -> Atlas:
    """ICBM152 2009a (nilearn's copy) at ``resolution_mm`` (1 mm native; coarser by averaging, for fast tests)."""
    from nilearn.datasets import (
        load_mni152_brain_mask,
        load_mni152_gm_template,
        load_mni152_template,
        load_mni152_wm_template,
    )

    t1 = load_mni152_template(resolution=1)
    gm = np.asarray(load_mni152_gm_template(resolution=1).dataobj, np.float32)
    wm = np.asarray(load_mni152_wm_template(resolution=1).dataobj, np.float32)
    mask = np.asarray(load_mni152_brain_mask(resolution=1).dataobj) > 0
    total = np.clip(gm + wm, 0, 1)
    gm, wm = gm / np.maximum(gm + wm, 1), wm / np.maximum(gm + wm, 1)
    csf = np.where(mask, 1.0 - total, 0.0).astype(np.float32)
    affine = t1.affine.astype(np.float64)
    # The template's field of view is two-thirds background: keep the brain's box and a 6 mm margin.
    box = tuple(slice(max(0, s.start - 6), s.stop + 6) for s in ndi.find_objects(mask.astype(np.uint8))[0])
    gm, wm, csf, mask = gm[box], wm[box], csf[box], mask[box]
    affine[:3, 3] += affine[:3, :3] @ np.array([s.start for s in box], dtype=np.float64)
    factor = round(resolution_mm)
    if factor > 1:
        gm, wm, csf = (block_mean(a, factor).astype(np.float32) for a in (gm, wm, csf))
        mask = block_mean(mask.astype(np.float32), factor) > 0.5
        affine = affine.copy()
        affine[:3, :3] *= factor
        affine[:3, 3] += (factor - 1) / 2 * np.diag(t1.affine)[:3]
    return Atlas(gm=gm, wm=wm, csf=csf, mask=mask, affine=affine)


@dataclass
class SyntheticBrain:
    """One generated session: sequences, label masks, targets and the RAS affine (mm)."""

    sequences: dict[str, np.ndarray]
    affine: np.ndarray
    infarct: np.ndarray | None
    mass: np.ndarray | None
    brain_mask: np.ndarray
    age: float
    seed: int
    out_of_domain: bool = False
    targets: dict[str, float] = field(default_factory=dict)


def make_brain(seed: int, *, age: float | None = None, infarct: bool | None = None, mass: bool | None = None,
               sequences: tuple[str, ...] = SEQUENCES, resolution_mm: float = 1.0, out_of_domain: bool = False,
               thick_spacing_mm: tuple[float, float, float] = (0.9, 0.9, 6.0), noise: float = 0.03) -> SyntheticBrain:
    """Generate one session. Unset ``age``, ``infarct`` and ``mass`` are drawn from ``seed`` (age uniform over
    :data:`AGE_RANGE`, each lesion present with probability 1/2); the same arguments give the same arrays."""
    rng = np.random.default_rng(seed)
    atlas = load_atlas(resolution_mm)
    age = float(rng.uniform(*AGE_RANGE)) if age is None else float(age)
    has_infarct = bool(rng.random() < 0.5) if infarct is None else infarct
    has_mass = bool(rng.random() < 0.5) if mass is None else mass
    voxel = float(np.linalg.norm(atlas.affine[:3, 0]))

    gm, wm, csf, mask = atlas.gm.copy(), atlas.wm.copy(), atlas.csf.copy(), atlas.mask.copy()
    gm, wm, csf = _atrophy(gm, wm, csf, mask, age, voxel)
    displacement = _smooth_field(rng, mask.shape, sigma_mm=12.0, amplitude_mm=3.0, voxel_mm=voxel)
    mass_mask = _extra_axial_mass(rng, mask, voxel) if has_mass else None
    if mass_mask is not None:
        # the mass pushes the cortex away from it: a radial displacement around its centre
        displacement += _push_from(mass_mask, voxel)
    gm, wm, csf, mask_f = (_warp(a, displacement) for a in (gm, wm, csf, mask.astype(np.float32)))
    brain = mask_f > 0.5
    infarct_mask = _infarct(rng, gm, wm, brain, voxel) if has_infarct else None
    if mass_mask is not None:
        gm[mass_mask] = wm[mass_mask] = csf[mass_mask] = 0.0

    out: dict[str, np.ndarray] = {}
    bias = np.exp(_smooth_field(rng, mask.shape, sigma_mm=40.0, amplitude_mm=0.15 * voxel, voxel_mm=voxel,
                                components=1)[0])
    for name in sequences:
        g, w, c, infarct_gain, mass_level = _TISSUE[name]
        jitter = rng.normal(1.0, 0.05, 3)
        image = g * jitter[0] * gm + w * jitter[1] * wm + c * jitter[2] * csf
        if infarct_mask is not None:
            image[infarct_mask] *= infarct_gain
        if mass_mask is not None:
            image[mass_mask] = mass_level * rng.normal(1.0, 0.03)
        image = image * bias
        image = _rician(rng, image, noise * float(image[brain].mean()))
        if rng.random() < 0.3:
            image = _ghost(rng, image)
        out[name] = np.where(brain | (mass_mask if mass_mask is not None else False), image, 0.0).astype(np.float32)

    affine = atlas.affine.copy()
    brain_out = brain | (mass_mask if mass_mask is not None else False)
    if out_of_domain:
        out = {k: _reshape_contrast(rng, v) for k, v in out.items()}
        factors = np.asarray(thick_spacing_mm) / voxel
        out = {k: _thick_slices(v, factors) for k, v in out.items()}
        infarct_mask = _thick_slices(infarct_mask.astype(np.float32), factors) > 0.5 if infarct_mask is not None \
            else None
        mass_mask = _thick_slices(mass_mask.astype(np.float32), factors) > 0.5 if mass_mask is not None else None
        brain_out = _thick_slices(brain_out.astype(np.float32), factors) > 0.5
        affine = _thick_affine(affine, factors)
    return SyntheticBrain(sequences=out, affine=affine, infarct=infarct_mask, mass=mass_mask, brain_mask=brain_out,
                          age=age, seed=seed, out_of_domain=out_of_domain,
                          targets={"infarct": float(has_infarct), "mass": float(has_mass), "age": age})


# ----------------------------------------------------------------------------------------------- pieces


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], *, sigma_mm: float, amplitude_mm: float,
                  voxel_mm: float, components: int = 3) -> np.ndarray:
    """Smooth random components (voxels) with a standard deviation of ``amplitude_mm``: noise on a coarse grid
    (about two points per ``sigma_mm``), smoothed, then interpolated linearly to ``shape``."""
    sigma = sigma_mm / voxel_mm
    coarse = tuple(max(4, int(n / sigma * 2)) for n in shape)
    out = np.empty((components, *shape), np.float32)
    for axis in range(components):
        noise = ndi.gaussian_filter(rng.normal(size=coarse), 1.0)
        noise /= noise.std() + 1e-9
        out[axis] = ndi.zoom(noise.astype(np.float32), [n / c for n, c in zip(shape, coarse, strict=True)],
                             order=1)[: shape[0], : shape[1], : shape[2]] * (amplitude_mm / voxel_mm)
    return out


def _warp(array: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    grid = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in array.shape), indexing="ij")
    coords = [g + d for g, d in zip(grid, displacement, strict=True)]
    return ndi.map_coordinates(array, coords, order=1, mode="constant", cval=0.0).astype(np.float32)


def _atrophy(gm: np.ndarray, wm: np.ndarray, csf: np.ndarray, mask: np.ndarray, age: float, voxel_mm: float
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Move tissue into CSF in proportion to age: a little everywhere, most next to CSF (sulci widen, ventricles
    grow). At 90 years about a quarter of the grey matter is gone."""
    t = float(np.clip((age - AGE_RANGE[0]) / (AGE_RANGE[1] - AGE_RANGE[0]), 0, 1))
    near_csf = ndi.gaussian_filter((csf > 0.5).astype(np.float32), 3.0 / voxel_mm)
    weight = np.clip(near_csf * 3.0, 0, 1) * mask
    lost_gm = gm * t * (0.12 + 0.45 * weight)
    lost_wm = wm * t * (0.04 + 0.25 * weight)
    return gm - lost_gm, wm - lost_wm, csf + lost_gm + lost_wm


def _infarct(rng: np.random.Generator, gm: np.ndarray, wm: np.ndarray, brain: np.ndarray, voxel_mm: float
             ) -> np.ndarray:
    """A blob in one middle cerebral artery territory: lateral, mid-height, in grey or white matter."""
    shape = brain.shape
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    side = rng.choice([-1.0, 1.0])
    territory = (side * x > 0.25) & (np.abs(y - rng.uniform(-0.2, 0.2)) < 0.45) & (z > -0.2) & (z < 0.55)
    noise = ndi.gaussian_filter(rng.normal(size=shape), 4.0 / voxel_mm)
    tissue = (gm + wm) > 0.5
    candidate = territory & tissue & brain
    threshold = np.quantile(noise[candidate], 1 - rng.uniform(0.02, 0.08)) if candidate.any() else np.inf
    blob = candidate & (noise > threshold)
    labels, count = ndi.label(blob)
    if count == 0:
        return blob
    sizes = ndi.sum(blob, labels, range(1, count + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def _extra_axial_mass(rng: np.random.Generator, mask: np.ndarray, voxel_mm: float) -> np.ndarray:
    """A dural-based ellipsoid centred just outside the brain surface, reaching into it."""
    surface = mask & ~ndi.binary_erosion(mask, iterations=2)
    points = np.argwhere(surface)
    upper = points[points[:, 2] > np.percentile(points[:, 2], 40)]  # convexity or falx, not the skull base
    centre = upper[rng.integers(len(upper))].astype(np.float64)
    inward = np.asarray(mask.shape) / 2 - centre
    centre -= inward / np.linalg.norm(inward) * 4.0 / voxel_mm  # mostly outside: dural-based
    radii = rng.uniform(10, 20, 3) / voxel_mm
    grid = np.ogrid[tuple(slice(0, n) for n in mask.shape)]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0
    return inside & ndi.binary_dilation(mask, iterations=int(6 / voxel_mm) + 1)


def _push_from(mass: np.ndarray, voxel_mm: float) -> np.ndarray:
    """A displacement (voxels) that samples tissue from nearer the mass's centre: the cortex is pushed aside.

    It decays as ``exp(-(d / 2r)^2)`` with the distance ``d`` from the centre (``r`` the mass's radius), so it is
    computed within ``4 r`` only."""
    centre = np.argwhere(mass).mean(axis=0)
    radius = (mass.sum() * 3 / (4 * np.pi)) ** (1 / 3)
    box = tuple(slice(max(0, int(c - 4 * radius)), min(n, int(c + 4 * radius) + 1))
                for c, n in zip(centre, mass.shape, strict=True))
    grid = np.meshgrid(*(np.arange(b.start, b.stop, dtype=np.float32) for b in box), indexing="ij")
    offset = np.stack([g - c for g, c in zip(grid, centre, strict=True)])
    distance = np.sqrt((offset**2).sum(axis=0)) + 1e-3
    strength = radius * 0.6 * np.exp(-((distance / (2 * radius)) ** 2))
    out = np.zeros((3, *mass.shape), np.float32)
    out[(slice(None), *box)] = -offset / distance * strength
    return out


def _rician(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.sqrt(real**2 + imaginary**2).astype(np.float32)


def _ghost(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Motion: random phase errors on a few k-space lines along the phase-encoding axis ghost the image."""
    axis = int(rng.integers(0, 2))
    spectrum = np.fft.fft(image, axis=axis)
    lines = rng.choice(image.shape[axis], size=max(1, image.shape[axis] // 12), replace=False)
    phases = np.ones(image.shape[axis], np.complex64)
    phases[lines] = np.exp(1j * rng.uniform(-np.pi, np.pi, len(lines)))
    shape = [1, 1, 1]
    shape[axis] = -1
    return np.abs(np.fft.ifft(spectrum * phases.reshape(shape), axis=axis)).astype(np.float32)


def _reshape_contrast(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Another scanner's contrast: a random gamma and gain."""
    scale = float(np.percentile(image[image > 0], 99)) if (image > 0).any() else 1.0
    return (scale * rng.uniform(0.7, 1.4) * (np.clip(image / scale, 0, None) ** rng.uniform(0.7, 1.4))).astype(
        np.float32)


def _thick_slices(image: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Resample to ``factors`` x the voxel size: along an axis with a factor of 1.5 or more each new voxel is the
    mean over ``round(factor)`` voxels (a thick slice integrates its thickness); along the others voxel ``j`` is
    the old position ``j * factor``, linearly interpolated. :func:`_thick_affine` gives the matching affine."""
    out = image
    for axis, factor in enumerate(factors):
        if factor >= 1.5:
            step = round(factor)
            n = out.shape[axis] // step * step
            shape = list(out.shape)
            shape[axis : axis + 1] = [n // step, step]
            out = np.take(out, np.arange(n), axis=axis).reshape(shape).mean(axis=axis + 1)
        elif abs(factor - 1) > 1e-6:
            matrix = np.ones(3)
            matrix[axis] = factor
            shape = list(out.shape)
            shape[axis] = int(np.floor((out.shape[axis] - 1) / factor)) + 1
            out = ndi.affine_transform(out, matrix, output_shape=tuple(shape), order=1)
    return out.astype(np.float32)


def _thick_affine(affine: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """The affine of :func:`_thick_slices`'s grid: a block's centre is the mean of its voxels' centres."""
    out = affine.copy()
    for axis, factor in enumerate(factors):
        if factor >= 1.5:
            step = round(factor)
            out[:3, 3] += (step - 1) / 2 * affine[:3, axis]
            out[:3, axis] = affine[:3, axis] * step
        else:
            out[:3, axis] = affine[:3, axis] * factor
    return out


# ----------------------------------------------------------------------------------------------- FOMO layout


def write_session(root: str | Path, subject: str, session: str, brain: SyntheticBrain, *,
                  labels_root: str | Path | None = None, label: str | None = None) -> Path:
    """Write ``ROOT/sub_<subject>/ses_<session>/<sequence>.nii.gz`` (FOMO60K's layout); with ``labels_root``, also
    ``LABELS/sub_<subject>/ses_<session>/``: ``label.txt`` holding the target ``label`` (``infarct``, ``mass`` or
    ``age``) or, for ``label='seg'``, ``seg.nii.gz`` (the infarct, else the mass). Returns the session folder."""
    import nibabel as nib

    folder = Path(root) / f"sub_{subject}" / f"ses_{session}"
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in brain.sequences.items():
        nib.save(nib.Nifti1Image(image, brain.affine), folder / f"{name}.nii.gz")
    if labels_root is not None and label is not None:
        target = Path(labels_root) / f"sub_{subject}" / f"ses_{session}"
        target.mkdir(parents=True, exist_ok=True)
        if label == "seg":
            mask = brain.infarct if brain.infarct is not None else brain.mass
            if mask is None:
                mask = np.zeros(next(iter(brain.sequences.values())).shape, bool)
            nib.save(nib.Nifti1Image(mask.astype(np.uint8), brain.affine), target / "seg.nii.gz")
        else:
            value = brain.targets[label]
            (target / "label.txt").write_text(f"{value:g}\n" if label == "age" else f"{int(value)}\n")
    return folder



#: The label each finetuning task reads from a generated session (:func:`write_session`'s ``label``).
TASK_LABELS = {"infarct": "infarct", "meningioma": "seg", "brain-age": "age"}


def write_task_dataset(root: str | Path, task: str, sequences: tuple[str, ...], count: int, *, first_seed: int = 0,
                       first_index: int = 0, resolution_mm: float = 1.0, out_of_domain: float = 0.0) -> Path:
    """``count`` generated sessions for a finetuning ``task`` (``infarct``: every other one has an infarct, no mass;
    ``meningioma``: each has a mass, no infarct; ``brain-age``: ages drawn) in the finetuning layout
    ``ROOT/preprocessed/sub_NNN/ses_1/`` and ``ROOT/labels/``. A share ``out_of_domain`` of them (every k-th) is
    the thick-slice clinical variant. Session ``i`` (from ``first_index``, so that parts of one dataset can be
    written in parallel) has seed ``first_seed + i``; returns ``root``."""
    root = Path(root)
    every = round(1 / out_of_domain) if out_of_domain > 0 else 0
    for i in range(first_index, first_index + count):
        lesions = {"infarct": {"infarct": i % 2 == 0, "mass": False},
                   "meningioma": {"infarct": False, "mass": True}}.get(task, {"infarct": False, "mass": False})
        brain = make_brain(first_seed + i, resolution_mm=resolution_mm, sequences=sequences,
                           out_of_domain=bool(every) and i % every == every - 1, **lesions)
        write_session(root / "preprocessed", f"{i:03d}", "1", brain, labels_root=root / "labels",
                      label=TASK_LABELS[task])
    return root

#: SeriesDescription of each pseudo-sequence when a session is written as DICOM (:func:`write_dicom_session`).
DICOM_DESCRIPTIONS = {"t1": "AX T1 MPRAGE", "t2": "AX T2 TSE", "flair": "AX T2 FLAIR",
                      "dwi_b1000": "AX DWI b1000 TRACE", "adc": "AX DWI ADC", "t2s": "AX T2* GRE",
                      "t1c": "AX T1 MPRAGE POST GD"}


def write_dicom_session(folder: str | Path, brain: SyntheticBrain, *, seed: int = 0, scale: float = 1000.0,
                        transfer_syntax: str | None = None, patient_id: str = "MEDHUB-SYNTH-BRAIN") -> dict[str, Path]:
    """Write every sequence of ``brain`` as one DICOM MR series of one study (``FOLDER/<sequence>/``), named by
    :data:`DICOM_DESCRIPTIONS`, values times ``scale`` in 16 bits. Returns the series folders by sequence."""
    from pydicom.uid import ExplicitVRLittleEndian

    from medhub.io.orientation import volume_from_ras
    from medhub.synth.dicom_series import write_series

    folder = Path(folder)
    study = f"1.2.826.0.1.3680043.8.498.{9000 + seed}"
    frame_of_reference = f"{study}.1"
    written = {}
    for number, (name, image) in enumerate(brain.sequences.items(), start=1):
        volume = volume_from_ras(np.clip(image * scale, 0, 32000), brain.affine, modality="MR")
        write_series(volume.array, volume.affine, folder / name, modality="MR", seed=seed * 100 + number,
                     transfer_syntax=transfer_syntax or ExplicitVRLittleEndian, study_uid=study,
                     frame_of_reference_uid=frame_of_reference, series_number=number, patient_id=patient_id,
                     patient_name="Synthetic^Brain", study_description="Generated brain MRI (medhub.synth.brain)",
                     series_description=DICOM_DESCRIPTIONS.get(name, name), file_names="numbered")
        written[name] = folder / name
    return written
