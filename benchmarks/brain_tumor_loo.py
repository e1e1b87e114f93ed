"""Benchmark: whole-tumour segmentation on the real BraTS cases, leave one out, from scratch or from a checkpoint.

    python benchmarks/brain_tumor_loo.py [--seeds 0 1 2] [--steps 300] [--checkpoint CKPT] [--arch tiny]

For each of the three BraTS cases in ``shared/data/brain_mri_brats`` (FLAIR + T1c; whole tumour = label > 0): train
on the other two with ``medhub finetune``'s code (``--task tumor``, 48³ crops, half of them on the tumour, Dice +
CE), then segment the held-out case with sliding windows on its preprocessed grid and score Dice against the expert
labels. Without ``--checkpoint`` the network starts from random weights (the supervised baseline); with one, from a
``medhub pretrain`` checkpoint, at the same budget. Prints per-case Dice, the mean per seed and over all runs with a
95 % bootstrap CI, and the wall time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dicom_load import machine

#: The three BraTS cases: ../shared/data beside the clone, or where MEDHUB_BRATS points.
BRATS = Path(os.environ.get("MEDHUB_BRATS", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
                            / "brain_mri_brats"))


def loo_dice(cases: list[Path], held: Path, *, seed: int, steps: int, checkpoint: Path | None, arch: str,
             work: Path, cache: Path) -> float:
    """Train ``medhub finetune --task tumor`` on ``cases`` but ``held`` (from ``checkpoint``, or from scratch) and
    return the whole-tumour Dice on ``held``."""
    from medhub.brain.cache import cache_sessions
    from medhub.brain.finetuning import TASKS, FinetuneConfig, evaluate, finetune, load_finetuned
    from medhub.brain.layout import brats_finetuning_layout, find_sessions
    from medhub.learn.trainer import TrainingConfig
    from medhub.learn.unet3d import preset

    train = brats_finetuning_layout([c for c in cases if c != held], work / "train")
    test = brats_finetuning_layout([held], work / "test")
    config = FinetuneConfig(task="tumor", shots=len(cases) - 1, seed=seed, from_scratch=checkpoint is None, crop=48,
                            batch_size=2)
    training = TrainingConfig(steps=steps, lr=2e-3, warmup_steps=20, checkpoint_every=10**9, seed=seed)
    finetune(checkpoint, train, work / "out", config, arch_config=preset(arch), training=training, cache=cache,
             progress=False)
    net, settings = load_finetuned(work / "out")
    sessions = cache_sessions(find_sessions(test), cache, sequences=TASKS["tumor"].sequences, progress=False)
    return float(evaluate(net, sessions, settings)["summary"]["dice_mean"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--arch", default="tiny")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "medhub-bench-brats")
    args = parser.parse_args()
    from medhub.metrics.bootstrap import bootstrap_ci

    cases = sorted(p for p in BRATS.resolve().iterdir() if p.is_dir())
    origin = f"from {args.checkpoint}" if args.checkpoint else "from scratch"
    lines = [f"Machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; {args.arch} {origin}, "
             f"{args.steps} steps, 48^3 crops, batch 2, lr 2e-3", "",
             "| seed | held out | Dice | wall s |", "|---:|---|---:|---:|"]
    all_dice: list[float] = []
    for seed in args.seeds:
        seed_dice = []
        for held in cases:
            start = time.perf_counter()
            dice = loo_dice(cases, held, seed=seed, steps=args.steps, checkpoint=args.checkpoint, arch=args.arch,
                            work=args.work / f"{origin.split()[0]}-{seed}-{held.name}", cache=args.work / "cache")
            seed_dice.append(dice)
            lines.append(f"| {seed} | {held.name} | {dice:.3f} | {time.perf_counter() - start:.0f} |")
            print(lines[-1], file=sys.stderr)
        all_dice += seed_dice
        lines.append(f"| {seed} | mean | **{np.mean(seed_dice):.3f}** | |")
    low, high = bootstrap_ci(all_dice)
    lines += ["", f"All runs: Dice {np.mean(all_dice):.3f} [95 % bootstrap CI {low:.3f}, {high:.3f}] over "
              f"{len(all_dice)} held-out segmentations."]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
