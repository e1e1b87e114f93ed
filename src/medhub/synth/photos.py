"""Generated photos and simulated outcomes, for plumbing tests of the face models.

* :func:`write_labelled_photos`: PNG "photos" of a smooth head-like ellipse whose size, brightness and stripes
  follow an ``age`` label (so a network can learn it quickly), with a table of labels. They are not faces:
  the face detector finds nothing in them, so they are used as ready crops (``--no-detect``). For plumbing only.
* :func:`gompertz_outcomes`: survival times from a Gompertz hazard driven by age, with censoring: a simulated
  cohort where an older face means an earlier event. It says nothing about real mortality.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def gompertz_outcomes(ages: np.ndarray, rng: np.random.Generator, *, baseline: float = 1e-4,
                      age_slope: float = 0.085, shape: float = 0.1, follow_up: float = 10.0
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``(time, event)`` in years for people of ``ages``: hazard ``baseline * exp(age_slope * age) *
    exp(shape * t)`` (Gompertz in follow-up time; ``exp(age_slope)`` is the hazard ratio per year of age, 1.09 by
    default, about that of adult mortality), drawn by inverting the cumulative hazard; administrative censoring
    at ``follow_up`` years and uniform loss to follow-up over ``[0, 2 x follow_up]``."""
    ages = np.asarray(ages, dtype=np.float64)
    scale = baseline * np.exp(age_slope * ages)
    # cumulative hazard H(t) = scale / shape * (exp(shape t) - 1); t = log(1 + shape * E / scale) / shape
    draws = rng.exponential(1.0, ages.shape)
    times = np.log1p(shape * draws / scale) / shape
    censor = np.minimum(rng.uniform(0, 2 * follow_up, ages.shape), follow_up)
    event = (times <= censor).astype(int)
    return np.round(np.where(event == 1, times, censor), 4).clip(1e-3), event


def write_labelled_photos(folder: str | Path, count: int, *, size: int = 64, seed: int = 0) -> Path:
    """``count`` PNGs in ``folder/images/`` and ``folder/labels.csv`` (image, age, time, event, group); returns
    the table's path. Age is uniform in 20–90 years and drawn into each picture (see the module docstring)."""
    from PIL import Image

    from medhub.io import records

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ages = rng.uniform(20, 90, count).round(1)
    times, events = gompertz_outcomes(ages, rng)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    rows = []
    for i, age in enumerate(ages):
        t = (age - 20) / 70
        radius = 0.22 + 0.15 * t
        head = ((xx / (radius * 0.8)) ** 2 + (yy / radius) ** 2) < 1
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * yy * (3 + 6 * t))
        base = np.stack([0.75 - 0.3 * t, 0.55, 0.45 + 0.2 * t])[:, None, None]
        picture = 0.15 + head * (base * (0.7 + 0.3 * stripes)) + rng.normal(0, 0.03, (3, size, size))
        name = f"photo_{i:04d}.png"
        Image.fromarray((np.clip(picture, 0, 1).transpose(1, 2, 0) * 255).astype(np.uint8)).save(
            folder / "images" / name)
        rows.append({"image": name, "age": float(age), "time": float(times[i]), "event": int(events[i]),
                     "group": "A" if i % 2 else "B"})
    return records.write_csv(folder / "labels.csv", rows)
