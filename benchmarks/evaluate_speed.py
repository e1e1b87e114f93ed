"""Benchmark: `medhub evaluate` on 1,000 cases of each of the three FOMO25 tasks with 10,000 bootstrap resamples.

    python benchmarks/evaluate_speed.py [--cases 1000] [--submissions 2] [--resamples 10000] [--mask-side 32]

Generates the truth (labels, ages, and ``--mask-side``³ masks of a random ellipsoid) and, per submission, a folder
of predictions (noisy scores and ages, masks with a shifted ellipsoid), then times the whole of ``evaluate`` +
``write_evaluation``: reading and validating every file, per-case metrics, bootstrap CIs and tiers, pairwise
permutation tests and the outputs. Target: ≤ 60 s on 2 cores.

Peer: the bootstrap as challenge scripts commonly write it, a Python loop over resamples calling scikit-learn's
``roc_auc_score`` and scipy's ``pearsonr`` per resample; timed on the same values (AUROC and Pearson r, one
submission) and compared with medhub's vectorised rows; the ratio is printed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dicom_load import machine


def _write_truth_and_predictions(root: Path, cases: int, submissions: int, side: int, seed: int = 0) -> None:
    import nibabel as nib

    rng = np.random.default_rng(seed)
    grid = np.indices((side,) * 3).transpose(1, 2, 3, 0)
    image = np.zeros((side,) * 3, np.float32)
    for task in ("t1", "t2", "t3"):
        for i in range(cases):
            session = root / "truth" / task / "preprocessed" / f"sub_{i:04d}" / "ses_1"
            labels = root / "truth" / task / "labels" / f"sub_{i:04d}" / "ses_1"
            session.mkdir(parents=True)
            labels.mkdir(parents=True)
            nib.save(nib.Nifti1Image(image, np.eye(4)), session / ("t1.nii.gz" if task == "t3" else "flair.nii.gz"))
            if task == "t2":
                centre, radius = rng.uniform(side / 3, 2 * side / 3, 3), rng.uniform(3, side / 5, 3)
                mask = (((grid - centre) / radius) ** 2).sum(-1) <= 1
                nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)), labels / "seg.nii.gz")
                for s in range(submissions):
                    shifted = (((grid - centre - rng.normal(0, 1 + s, 3)) / radius) ** 2).sum(-1) <= 1
                    folder = root / f"sub{s}" / task
                    folder.mkdir(parents=True, exist_ok=True)
                    nib.save(nib.Nifti1Image(shifted.astype(np.uint8), np.eye(4)), folder / f"sub_{i:04d}.nii.gz")
            else:
                truth = float(rng.integers(0, 2)) if task == "t1" else float(rng.uniform(20, 90))
                (labels / "label.txt").write_text(f"{truth:g}\n")
                for s in range(submissions):
                    value = (truth + rng.normal(0, 0.4 + 0.2 * s)) if task == "t1" else truth + rng.normal(0, 5 + s)
                    folder = root / f"sub{s}" / task
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / f"sub_{i:04d}.txt").write_text(f"{value}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--submissions", type=int, default=2)
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--mask-side", type=int, default=32)
    parser.add_argument("--peer-resamples", type=int, default=1000, help="resamples of the (slow) peer loop")
    args = parser.parse_args()
    from medhub.challenge.evaluate import evaluate, write_evaluation
    from medhub.challenge.submissions import FolderSubmission
    from medhub.challenge.tasks import FOMO25
    from medhub.metrics.agreement import pearson_rows
    from medhub.metrics.classification import auroc_rows

    with tempfile.TemporaryDirectory(prefix="medhub-bench-evaluate-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        _write_truth_and_predictions(root, args.cases, args.submissions, args.mask_side)
        generated = time.perf_counter() - start
        submissions = [FolderSubmission(name=f"sub{s}", folder=root / f"sub{s}") for s in range(args.submissions)]
        start = time.perf_counter()
        evaluation = evaluate(FOMO25, submissions, root / "truth", root / "out", n_resamples=args.resamples)
        write_evaluation(evaluation, root / "out")
        ours = time.perf_counter() - start

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, args.cases)
    scores = labels + rng.normal(0, 0.5, args.cases)
    index = rng.integers(0, args.cases, (args.resamples, args.cases))
    start = time.perf_counter()
    auroc_rows(scores[index], labels[index])
    pearson_rows(scores[index], labels[index] + scores[index])
    vectorised = time.perf_counter() - start
    from scipy.stats import pearsonr
    from sklearn.metrics import roc_auc_score

    start = time.perf_counter()
    for row in index[: args.peer_resamples]:
        roc_auc_score(labels[row], scores[row])
        pearsonr(scores[row], labels[row] + scores[row])
    peer = (time.perf_counter() - start) * args.resamples / args.peer_resamples
    print(f"Machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC")
    print(f"{args.cases} cases x 3 tasks x {args.submissions} submissions ({args.mask_side}^3 masks), "
          f"{args.resamples} resamples: evaluate + write {ours:.1f} s (target <= 60 s); generation {generated:.0f} s")
    print(f"bootstrap of AUROC + Pearson r, one submission: medhub {vectorised:.2f} s, per-resample loop "
          f"(scikit-learn + scipy, {args.peer_resamples} timed, scaled) {peer:.1f} s: loop / medhub = "
          f"{peer / vectorised:.1f}x")


if __name__ == "__main__":
    main()
