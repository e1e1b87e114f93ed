"""The candidate classifier: which calcium candidates are coronary, with a calibrated probability.

A fitter object in the lifelines style: :meth:`CandidateClassifier.fit` on a feature table
(:data:`medhub.models.cac.candidates.FEATURES`) with one class per row, then :meth:`~CandidateClassifier.predict`.
Gradient-boosted trees (LightGBM, one thread, deterministic) read the features: an ensemble of ``members``
boosters that differ only in their bagging seed, averaged. One booster's decision on a borderline candidate turns
on which rows its bagging drew (the same examples in another order gave a real LIDC scan false calcium in every
trial, or none); an average of several varies less. The probability of "coronary" is then calibrated by isotonic
regression on out-of-fold predictions, folds grouped by scan, so that a candidate of a scan never calibrates its
own score. The other classes say what a rejected candidate most likely is: aortic wall calcium, valve calcium
(aortic valve or mitral annulus), or other (bone, noise, anything else). Two rules of anatomy sit on top: a
candidate mostly outside the heart mask needs a higher probability (:data:`OUTSIDE_HEART_THRESHOLD`), and one in
the wall of the descending aorta (:data:`AORTIC_WALL_MM`) is aortic whatever its probability.

Saved as LightGBM's own text models (one gzip-compressed file, the members one after another,
:data:`MEMBER_SEPARATOR` between them) plus a JSON sidecar (features, classes, the calibration curve, the
training record): no pickle, so a shipped file is data, not code.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medhub.io.files import sidecar_path
from medhub.models.cac.candidates import FEATURES

#: The classes, in the model's order. ``valve`` is aortic valve or mitral annulus calcium.
CLASSES = ("coronary", "aortic", "valve", "other")
#: What each class means in a rejected candidate's reason.
CLASS_WORDS = {"coronary": "coronary", "aortic": "aortic wall calcium", "valve": "valve or annulus calcium",
               "other": "bone, noise or other"}
#: Accept a candidate as coronary at this calibrated probability ...
THRESHOLD = 0.5
#: ... or at this one when it lies mostly outside the heart mask proper (``heart_fraction < 0.5``): the margin
#: round the heart also holds the aortic wall, the valve rings, bone, lymph nodes and the organs under the
#: diaphragm, more of them in patients than in any training set. The same level as the 0.x lesion network's rule
#: (:data:`medhub.models.cac.lesions.OUTSIDE_HEART_THRESHOLD`, chosen on validation phantoms).
OUTSIDE_HEART_THRESHOLD = 0.75
#: A candidate mostly outside the heart mask whose centre lies within this distance (mm) of the descending aorta's
#: outer wall, or inside it (``aorta_distance_mm`` of :func:`~.candidates.find_candidates`), is aortic wall
#: calcium whatever its probability: no coronary runs there. Calcium inserted into that wall of the two LIDC scans
#: lies at -2.9 to +0.4 mm, the plaques inserted into their epicardial fat at 15.3 mm or more, and a classifier that
#: never saw the scan called 9 of 98 such wall candidates coronary (benchmarks/cac_lesion_insertion.py
#: --aortic-wall).
AORTIC_WALL_MM = 5.0
#: Boosters of a fitted classifier (bagging seeds ``seed`` ... ``seed + MEMBERS - 1``).
MEMBERS = 5
#: The line between two members' LightGBM text models in a saved classifier.
MEMBER_SEPARATOR = "### medhub: next member ###\n"

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "multiclass", "num_class": len(CLASSES), "learning_rate": 0.05, "num_leaves": 15,
    "min_data_in_leaf": 10, "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1,
    "lambda_l2": 1.0, "num_threads": 1, "deterministic": True, "force_row_wise": True, "seed": 0, "verbose": -1,
}


class CandidateClassifier:
    """Coronary vs not, per calcium candidate, with a calibrated probability; see the module docstring."""

    def __init__(self, params: dict[str, Any] | None = None, rounds: int = 300, folds: int = 5,
                 members: int = MEMBERS) -> None:
        self.params = {**DEFAULT_PARAMS, **(params or {})}
        self.rounds = rounds
        self.folds = folds
        self.members = members
        self.boosters: list[Any] = []
        self.calibration: tuple[np.ndarray, np.ndarray] | None = None
        self.record: dict[str, Any] = {}

    # -- fitting ---------------------------------------------------------------------------------------------
    def _train(self, features: pd.DataFrame, classes: np.ndarray, weights: np.ndarray | None) -> list[Any]:
        import lightgbm as lgb

        data = lgb.Dataset(features[list(FEATURES)].to_numpy(np.float64), label=classes, weight=weights,
                           feature_name=list(FEATURES), free_raw_data=False)
        seed = int(self.params.get("seed", 0))
        return [lgb.train({**self.params, "seed": seed + k}, data, num_boost_round=self.rounds)
                for k in range(self.members)]

    @staticmethod
    def _raw(boosters: list[Any], features: pd.DataFrame) -> np.ndarray:
        """The members' class probabilities, averaged: ``(candidates, classes)``."""
        x = features[list(FEATURES)].to_numpy(np.float64)
        return np.mean([booster.predict(x) for booster in boosters], axis=0)

    def fit(self, features: pd.DataFrame, classes: Sequence[str], groups: Sequence[Any],
            weights: Sequence[float] | None = None, record: dict[str, Any] | None = None,
            sources: Sequence[str] | None = None) -> CandidateClassifier:
        """Fit on ``features`` (a table with :data:`FEATURES` columns), ``classes`` (one of :data:`CLASSES` per
        row) and ``groups`` (the scan each row comes from, for the calibration's folds). ``sources`` (a label per
        row, e.g. "phantom" or "lidc") adds the out-of-fold report of each source to the record."""
        from sklearn.isotonic import IsotonicRegression
        from sklearn.model_selection import GroupKFold

        codes = np.array([CLASSES.index(c) for c in classes])
        groups = np.asarray(groups)
        w = None if weights is None else np.asarray(weights, float)
        out_of_fold = np.zeros(len(codes))
        for train, test in GroupKFold(n_splits=self.folds).split(features, codes, groups):
            boosters = self._train(features.iloc[train], codes[train], None if w is None else w[train])
            out_of_fold[test] = self._raw(boosters, features.iloc[test])[:, 0]
        coronary = (codes == 0).astype(float)
        isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(out_of_fold, coronary,
                                                                                       sample_weight=w)
        self.calibration = (np.asarray(isotonic.X_thresholds_, float), np.asarray(isotonic.y_thresholds_, float))
        calibrated = self._calibrate(out_of_fold)
        self.boosters = self._train(features, codes, w)
        self.record = {**(record or {}), "rows": len(codes), "members": self.members,
                       "rows_per_class": {c: int((codes == i).sum()) for i, c in enumerate(CLASSES)},
                       "scans": len(np.unique(groups)),
                       "out_of_fold": calibration_report(calibrated, coronary)}
        if sources is not None:
            sources = np.asarray(sources)
            self.record["out_of_fold_by_source"] = {
                str(name): calibration_report(calibrated[sources == name], coronary[sources == name])
                for name in np.unique(sources)}
        return self

    def _calibrate(self, raw: np.ndarray) -> np.ndarray:
        if self.calibration is None:
            return np.asarray(raw, float)
        x, y = self.calibration
        return np.interp(raw, x, y)

    # -- prediction ------------------------------------------------------------------------------------------
    def predict(self, features: pd.DataFrame) -> pd.DataFrame:
        """One row per candidate: ``p_coronary`` (calibrated), the raw class probabilities ``p_<class>``, the most
        likely non-coronary ``kind``, ``accepted`` (``p_coronary >= THRESHOLD``, or :data:`OUTSIDE_HEART_THRESHOLD`
        for a candidate mostly outside the heart mask; never on the descending aorta's wall, :data:`AORTIC_WALL_MM`,
        when ``features`` has ``aorta_distance_mm``) and ``reason`` in words."""
        if not self.boosters:
            raise RuntimeError("the classifier is not fitted")
        columns = ["p_coronary", *(f"p_{c}" for c in CLASSES[1:]), "kind", "accepted", "reason"]
        if not len(features):
            return pd.DataFrame(columns=columns)
        raw = self._raw(self.boosters, features)
        p_coronary = self._calibrate(raw[:, 0])
        kind = np.array(CLASSES[1:])[raw[:, 1:].argmax(axis=1)]
        outside = features["heart_fraction"].to_numpy(float) < 0.5
        aorta_mm = features["aorta_distance_mm"].to_numpy(float) if "aorta_distance_mm" in features \
            else np.full(len(features), np.nan)
        on_aorta = outside & (aorta_mm <= AORTIC_WALL_MM)  # NaN (no aorta found) compares false
        accepted = (p_coronary >= np.where(outside, OUTSIDE_HEART_THRESHOLD, THRESHOLD)) & ~on_aorta
        kind = np.where(on_aorta, "aortic", kind)
        short = f" < {OUTSIDE_HEART_THRESHOLD:g} outside the heart mask"
        reason = [f"coronary (p {p:.2f})" if ok else
                  f"not coronary (p {p:.2f}): on the descending aorta's wall ({d:.0f} mm from it)" if wall else
                  f"not coronary (p {p:.2f}{short if p >= THRESHOLD else ''}): most like {CLASS_WORDS[k]}"
                  for p, ok, k, wall, d in zip(p_coronary, accepted, kind, on_aorta, aorta_mm, strict=True)]
        table = pd.DataFrame({"p_coronary": p_coronary, **{f"p_{c}": raw[:, i] for i, c in enumerate(CLASSES)
                                                            if i > 0},
                              "kind": np.where(accepted, "coronary", kind), "accepted": accepted, "reason": reason},
                             index=features.index)
        return table[columns]

    # -- files -----------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the members' LightGBM text models to ``path`` (gzip-compressed when it ends in ``.gz``) and the
        sidecar beside it (:func:`~medhub.io.files.sidecar_path`)."""
        from medhub.io.files import atomic_path

        path = Path(path)
        text = MEMBER_SEPARATOR.join(b.model_to_string() for b in self.boosters).encode()
        with atomic_path(path) as tmp:
            # mtime 0: the same model gives the same bytes, so its sha256 in the card holds
            Path(tmp).write_bytes(gzip.compress(text, mtime=0) if path.suffix == ".gz" else text)
        sidecar = {"schema": "medhub.cac.candidate_classifier/1", "features": list(FEATURES), "classes": CLASSES,
                   "threshold": THRESHOLD, "params": self.params, "rounds": self.rounds,
                   "members": len(self.boosters),
                   "calibration": {"raw": self.calibration[0].round(6).tolist(),
                                   "calibrated": self.calibration[1].round(6).tolist()} if self.calibration else None,
                   "training": self.record}
        with atomic_path(sidecar_path(path)) as tmp:
            Path(tmp).write_text(json.dumps(sidecar, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> CandidateClassifier:
        import lightgbm as lgb

        path = Path(path)
        sidecar = json.loads(sidecar_path(path).read_text())
        if list(sidecar["features"]) != list(FEATURES):
            raise ValueError(f"{path}: trained on features {sidecar['features']}, this version computes "
                             f"{list(FEATURES)}")
        model = cls(sidecar["params"], sidecar["rounds"], members=int(sidecar.get("members", 1)))
        data = path.read_bytes()
        text = (gzip.decompress(data) if path.suffix == ".gz" else data).decode()
        model.boosters = [lgb.Booster(model_str=part) for part in text.split(MEMBER_SEPARATOR)]
        if len(model.boosters) != model.members:
            raise ValueError(f"{path}: holds {len(model.boosters)} boosters, its sidecar says {model.members}")
        if sidecar.get("calibration"):
            model.calibration = (np.asarray(sidecar["calibration"]["raw"]),
                                 np.asarray(sidecar["calibration"]["calibrated"]))
        model.record = sidecar.get("training", {})
        return model


def calibration_report(probability: np.ndarray, truth: np.ndarray, bins: int = 10) -> dict[str, float]:
    """Brier score, expected calibration error (equal-width bins) and, at :data:`THRESHOLD`, precision and recall
    of "coronary"."""
    probability, truth = np.asarray(probability, float), np.asarray(truth, float)
    edges = np.minimum((probability * bins).astype(int), bins - 1)
    ece = sum(abs(probability[edges == b].mean() - truth[edges == b].mean()) * (edges == b).mean()
              for b in range(bins) if (edges == b).any())
    predicted = probability >= THRESHOLD
    hits = float((predicted & (truth > 0.5)).sum())
    return {"brier": round(float(np.mean((probability - truth) ** 2)), 4), "ece": round(float(ece), 4),
            "precision": round(hits / max(predicted.sum(), 1), 4),
            "recall": round(hits / max((truth > 0.5).sum(), 1), 4)}
