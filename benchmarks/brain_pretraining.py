"""Benchmark: does the pretraining loss fall, and how long does the `tiny` demo take on this machine?

    python benchmarks/brain_pretraining.py [--subjects 8] [--steps 300] [--seeds 3] [--cache DIR]

Generates ``--subjects`` brains (1 mm, ``medhub.synth.brain``: for plumbing and relative comparisons, not patients)
in the FOMO60K layout, then runs ``medhub.brain.pretraining.pretrain`` for each objective (MAE, contrastive,
hybrid) and seed with the `tiny` preset, 32^3 crops, batch 2, on the CPU. For each run it reports the mean loss of
the first and last 10 % of the steps, and across seeds the mean ratio last / first with a 95 % bootstrap CI; the
wall time of the whole demo (generation, preprocessing cache, every run) is printed with the machine.

No peer runs here: the FOMO25 baseline (yucca/AMAES) needs a GPU and its own data pipeline.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "medhub-bench-brain")
    args = parser.parse_args()
    from medhub.brain.pretraining import pretrain
    from medhub.learn.trainer import TrainingConfig
    from medhub.metrics.bootstrap import bootstrap_ci
    from medhub.synth.brain import make_brain, write_session

    start = time.perf_counter()
    data = args.cache / "pretrain"
    for n in range(args.subjects):
        if not (data / f"sub_{n:03d}").is_dir():
            write_session(data, f"{n:03d}", "1", make_brain(1000 + n, sequences=("t1", "t2", "flair")))
    generated = time.perf_counter() - start
    lines = [f"Machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; {args.subjects} generated "
             f"1 mm subjects x 3 sequences; tiny, 32^3 crops, batch 2, {args.steps} steps, lr 1e-3", "",
             "| objective | seed | first 10 % mean loss | last 10 % mean loss | last / first | wall s |",
             "|---|---:|---:|---:|---:|---:|"]
    ratios: dict[str, list[float]] = {}
    for objective in ("mae", "contrastive", "hybrid"):
        for seed in range(args.seeds):
            config = TrainingConfig(steps=args.steps, lr=1e-3, warmup_steps=args.steps // 10,
                                    checkpoint_every=args.steps, seed=seed)
            run_start = time.perf_counter()
            result = pretrain(data, args.cache / f"{objective}-{seed}", objective=objective, arch="tiny", crop=32,
                              batch_size=2, config=config, cache=args.cache / "cache", progress=False)
            wall = time.perf_counter() - run_start
            losses = np.array([row["loss"] for row in result["history"]])
            tenth = max(1, len(losses) // 10)
            first, last = losses[:tenth].mean(), losses[-tenth:].mean()
            ratios.setdefault(objective, []).append(last / first)
            lines.append(f"| {objective} | {seed} | {first:.4f} | {last:.4f} | {last / first:.3f} | {wall:.0f} |")
            print(lines[-1], file=sys.stderr)
    lines += ["", "| objective | last / first, mean over seeds [95 % bootstrap CI] |", "|---|---|"]
    for objective, values in ratios.items():
        low, high = bootstrap_ci(values)
        lines.append(f"| {objective} | {np.mean(values):.3f} [{low:.3f}, {high:.3f}] |")
    total = time.perf_counter() - start
    lines += ["", f"Generation {generated:.0f} s; whole demo {total:.0f} s ({total / 60:.1f} min) on this machine."]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
