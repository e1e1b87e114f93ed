"""How much a photo model's prediction moves when the photo changes in ways that should not matter.

Each perturbation is a plain function on ``(H, W, 3)`` uint8 RGB pixels (seeded where it is random). For every photo
the model predicts on the original and on each perturbed copy; the report gives, per perturbation, the mean and the
95th percentile of the absolute change of the prediction (in the model's unit, years for ``face-age``), and how
many perturbed photos failed (e.g. no face found any more). The FAHR-FaceAge paper tests the same kinds of change.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Perturbation = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def brightness(delta: float) -> Perturbation:
    """Add ``delta`` × 255 to every channel."""
    return lambda image, rng: np.clip(image.astype(np.float32) + 255 * delta, 0, 255).astype(np.uint8)


def contrast(factor: float) -> Perturbation:
    """Scale the distance of every pixel from the photo's mean grey by ``factor``."""
    def apply(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = image.astype(np.float32)
        return np.clip((x - x.mean()) * factor + x.mean(), 0, 255).astype(np.uint8)
    return apply


def gamma(value: float) -> Perturbation:
    """``255 × (x / 255) ** value``."""
    table = np.clip(255 * (np.arange(256) / 255) ** value + 0.5, 0, 255).astype(np.uint8)
    return lambda image, rng: table[image]


def blur(sigma_fraction: float) -> Perturbation:
    """Gaussian blur with sigma ``sigma_fraction`` × the photo's shorter side (scale-free across photo sizes)."""
    def apply(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from scipy.ndimage import gaussian_filter

        sigma = sigma_fraction * min(image.shape[:2])
        return gaussian_filter(image, sigma=(sigma, sigma, 0), mode="nearest")
    return apply


def jpeg(quality: int) -> Perturbation:
    """Re-encode as JPEG at ``quality``."""
    def apply(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return apply


def rotation(degrees: float) -> Perturbation:
    """Rotate counter-clockwise on screen by ``degrees`` about the centre, edges repeated."""
    def apply(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        import cv2

        h, w = image.shape[:2]
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
        return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return apply


def flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirror left-right."""
    return np.ascontiguousarray(image[:, ::-1])


def occlusion(side_fraction: float) -> Perturbation:
    """A mid-grey square of ``side_fraction`` × the shorter side at a random place in the middle of the photo."""
    def apply(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = image.shape[:2]
        side = max(1, int(side_fraction * min(h, w)))
        y = int(rng.integers(h // 4, max(h // 4 + 1, 3 * h // 4 - side)))
        x = int(rng.integers(w // 4, max(w // 4 + 1, 3 * w // 4 - side)))
        out = image.copy()
        out[y:y + side, x:x + side] = 128
        return out
    return apply


#: The default set: name -> perturbation.
PERTURBATIONS: dict[str, Perturbation] = {
    "brightness -20%": brightness(-0.2), "brightness +20%": brightness(0.2),
    "contrast 0.7": contrast(0.7), "contrast 1.3": contrast(1.3),
    "gamma 0.7": gamma(0.7), "gamma 1.4": gamma(1.4),
    "blur 0.5%": blur(0.005), "blur 1.5%": blur(0.015),
    "JPEG q30": jpeg(30), "JPEG q10": jpeg(10),
    "rotate -15°": rotation(-15), "rotate +15°": rotation(15),
    "flip": flip,
    "occlusion 20%": occlusion(0.2),
}


@dataclass
class RobustnessReport:
    """Per photo, the prediction on the original and on each perturbation (NaN where it failed)."""

    value_name: str
    photos: list[str]
    original: np.ndarray  # (photos,)
    perturbed: dict[str, np.ndarray]  # name -> (photos,)
    failures: dict[str, str]

    def table(self) -> list[dict[str, Any]]:
        rows = []
        for name, values in self.perturbed.items():
            change = np.abs(values - self.original)
            ok = np.isfinite(change)
            rows.append({"perturbation": name, "photos": int(ok.sum()), "failed": int((~ok).sum()),
                         "mean_abs_change": float(change[ok].mean()) if ok.any() else math.nan,
                         "p95_abs_change": float(np.percentile(change[ok], 95)) if ok.any() else math.nan,
                         "mean_change": float((values - self.original)[ok].mean()) if ok.any() else math.nan})
        return rows


def assess(model: Any, photos: list[Path], perturbations: dict[str, Perturbation] | None = None, *,
           seed: int = 0, progress: bool = True) -> RobustnessReport:
    """Predict with ``model`` (a hub photo model) on each photo and each perturbed copy."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from medhub.errors import MedhubError
    from medhub.io.photo import Photo, read_photo

    perturbations = perturbations or PERTURBATIONS
    value_name = model.card.outputs.values[0].name
    original = np.full(len(photos), math.nan)
    perturbed = {name: np.full(len(photos), math.nan) for name in perturbations}
    failures: dict[str, str] = {}
    with Progress(TextColumn("[bold]robustness"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  disable=not progress, transient=True) as bar:
        task = bar.add_task("photos", total=len(photos))
        for i, path in enumerate(photos):
            try:
                pixels = read_photo(path)
                original[i] = model.predict(Photo(pixels, path.name)).values[value_name]
            except MedhubError as e:
                failures[str(path)] = e.reason
                bar.advance(task)
                continue
            for k, (name, perturb) in enumerate(perturbations.items()):
                rng = np.random.default_rng([seed, i, k])
                try:
                    perturbed[name][i] = model.predict(Photo(perturb(pixels, rng), path.name)).values[value_name]
                except MedhubError as e:
                    failures[f"{path} ({name})"] = e.reason
            bar.advance(task)
    return RobustnessReport(value_name, [str(p) for p in photos], original, perturbed, failures)


def write_report(report: RobustnessReport, output: str | Path, *, unit: str = "") -> dict[str, Path]:
    """``robustness.csv`` (per perturbation), ``predictions.csv`` (per photo), ``robustness.md`` and
    ``robustness.png`` (mean and p95 absolute change per perturbation) in ``output``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medhub.io import records
    from medhub.io.files import atomic_path, ensure_writable_dir, write_text_atomic

    output = ensure_writable_dir(output)
    rows = report.table()
    paths = {"table": records.write_csv(output / "robustness.csv", rows)}
    per_photo = [{"photo": p, report.value_name: report.original[i],
                  **{name: values[i] for name, values in report.perturbed.items()}}
                 for i, p in enumerate(report.photos)]
    paths["predictions"] = records.write_csv(output / "predictions.csv", per_photo)
    shown = f" ({unit})" if unit else ""
    lines = [f"# Robustness of `{report.value_name}`", "",
             f"{int(np.isfinite(report.original).sum())} photos; absolute change of the prediction{shown} from the "
             "original photo.", "",
             "| perturbation | photos | failed | mean abs change | p95 abs change | mean signed change |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['perturbation']} | {r['photos']} | {r['failed']} | {r['mean_abs_change']:.2f} | "
              f"{r['p95_abs_change']:.2f} | {r['mean_change']:+.2f} |" for r in rows]
    if report.failures:
        lines += ["", f"{len(report.failures)} failures, e.g. " + "; ".join(
            f"{k}: {v}" for k, v in list(report.failures.items())[:3])]
    paths["markdown"] = write_text_atomic(output / "robustness.md", "\n".join(lines) + "\n")
    figure, axis = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    positions = np.arange(len(rows))
    axis.barh(positions + 0.2, [r["p95_abs_change"] for r in rows], 0.4, label="p95", color="#f4a261")
    axis.barh(positions - 0.2, [r["mean_abs_change"] for r in rows], 0.4, label="mean", color="#264653")
    axis.set_yticks(positions, [r["perturbation"] for r in rows])
    axis.invert_yaxis()
    axis.set_xlabel(f"absolute change of {report.value_name}{shown}")
    axis.legend(loc="lower right")
    figure.tight_layout()
    with atomic_path(output / "robustness.png") as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    paths["plot"] = output / "robustness.png"
    return paths
