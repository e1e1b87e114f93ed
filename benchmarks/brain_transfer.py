"""Benchmark: does self-supervised pretraining help few-shot finetuning? Pretrained against from scratch, same budget.

    python benchmarks/brain_transfer.py [--seeds 0 1 2] [--jobs 1] [--pretrain-steps 600] [--finetune-steps 200]

1. **Pretraining data**: ``--subjects`` generated 1 mm subjects (all six FOMO sequences) and the three real BraTS
   cases (FLAIR, T1c) as unlabeled sessions, in the FOMO60K layout.
2. **Pretraining**: ``medhub pretrain``'s code, ``tiny``, MAE and hybrid (MAE + NT-Xent), one run each.
3. **Generated out-of-domain tasks** (thick slices of 0.9 x 0.9 x 6 mm and changed contrasts, none of them seen in
   pretraining): ``infarct`` (classification, AUC), ``meningioma`` (extra-axial mass segmentation, Dice),
   ``brain-age`` (regression, MAE in years); ``--shots`` training sessions drawn per seed, the rest
   (``--sessions`` minus shots) scored.
4. **Real BraTS whole tumour, leave one out**: :func:`brain_tumor_loo.loo_dice`.

Every finetuning runs from scratch, from the MAE checkpoint and from the hybrid checkpoint with the same steps,
learning rate, shots and seed. Prints one table per task: each condition's mean over seeds with a 95 % bootstrap
CI, the per-seed values, and the wall time. ``--jobs`` runs that many trainings at once (each with
``--threads`` threads; on a GPU machine they share the GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from brain_tumor_loo import BRATS, loo_dice
from dicom_load import machine

TASK_METRICS = {"infarct": "auc", "meningioma": "dice_mean", "brain-age": "mae"}
CONDITIONS = ("scratch", "mae", "hybrid")


def _init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _generate(args: tuple) -> None:
    from medhub.brain.finetuning import TASKS
    from medhub.synth.brain import make_brain, write_session, write_task_dataset

    kind, root, index, first_seed = args
    if kind == "pretrain":
        write_session(root, f"{index:03d}", "1", make_brain(first_seed + index))
    else:
        write_task_dataset(root, kind, TASKS[kind].sequences, 1, first_seed=first_seed, first_index=index,
                           out_of_domain=1.0)


def _pretrain(args: tuple) -> tuple[str, float, list[float]]:
    from medhub.brain.pretraining import pretrain
    from medhub.learn.trainer import TrainingConfig

    objective, data, work, steps = args
    start = time.perf_counter()
    config = TrainingConfig(steps=steps, lr=1e-3, warmup_steps=steps // 10, checkpoint_every=steps, seed=0)
    result = pretrain(data, Path(work) / objective, objective=objective, arch="tiny", crop=32, batch_size=4,
                      config=config, cache=Path(work) / "cache-pretrain", progress=False)
    losses = [row["loss"] for row in result["history"]]
    tenth = max(1, len(losses) // 10)
    return objective, time.perf_counter() - start, [float(np.mean(losses[:tenth])), float(np.mean(losses[-tenth:]))]


def _finetune(args: tuple) -> tuple[str, str, int, float, float]:
    from medhub.brain.finetuning import FinetuneConfig, finetune
    from medhub.learn.trainer import TrainingConfig
    from medhub.learn.unet3d import preset

    task, condition, seed, data, work, checkpoints, steps, shots = args
    start = time.perf_counter()
    if task == "tumor":
        value = loo_dice(sorted(p for p in BRATS.resolve().iterdir() if p.is_dir()), Path(data), seed=seed,
                         steps=steps, checkpoint=checkpoints.get(condition), arch="tiny",
                         work=Path(work) / f"tumor-{condition}-{seed}-{Path(data).name}",
                         cache=Path(work) / "cache-tumor")
        return task, condition, seed, value, time.perf_counter() - start
    config = FinetuneConfig(task=task, shots=shots, seed=seed, from_scratch=condition == "scratch", crop=32)
    training = TrainingConfig(steps=steps, lr=1e-3, warmup_steps=steps // 10, checkpoint_every=10**9, seed=seed)
    result = finetune(checkpoints.get(condition), data, Path(work) / f"{task}-{condition}-{seed}", config,
                      arch_config=preset("tiny"), training=training, cache=Path(work) / f"cache-{task}",
                      progress=False)
    value = result["evaluation"]["summary"][TASK_METRICS[task]]
    return task, condition, seed, float(value), time.perf_counter() - start


def _written(kind: str, root: Path, index: int, _seed: int) -> bool:
    return (root / ("" if kind == "pretrain" else "preprocessed") / f"sub_{index:03d}").is_dir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--subjects", type=int, default=16)
    parser.add_argument("--sessions", type=int, default=24, help="generated sessions per out-of-domain task")
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--finetune-steps", type=int, default=200)
    parser.add_argument("--tumor-steps", type=int, default=300)
    parser.add_argument("--tasks", nargs="+", default=[*TASK_METRICS, "tumor"])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "medhub-bench-transfer")
    parser.add_argument("--json", type=Path, help="also write every result here")
    args = parser.parse_args()
    from medhub.brain.layout import find_sessions
    from medhub.metrics.bootstrap import bootstrap_ci

    start = time.perf_counter()
    work = args.work
    pool = ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn"), initializer=_init,
                               initargs=(args.threads,))
    pretrain_data = work / "pretrain"
    jobs = [("pretrain", pretrain_data, n, 5000) for n in range(args.subjects)]
    for task in [t for t in args.tasks if t != "tumor"]:
        jobs += [(task, work / f"task-{task}", i, 6000 + 100 * list(TASK_METRICS).index(task))
                 for i in range(args.sessions)]
    list(pool.map(_generate, [j for j in jobs if not _written(*j)]))
    brats = sorted(p for p in BRATS.resolve().iterdir() if p.is_dir())
    for n, case in enumerate(brats):
        session = pretrain_data / f"sub_brats{n}" / "ses_1"
        session.mkdir(parents=True, exist_ok=True)
        for name, file in (("flair", "Flair_subtrMeanDivStd.nii.gz"), ("t1c", "T1c_subtrMeanDivStd.nii.gz")):
            if not (session / f"{name}.nii.gz").exists():
                (session / f"{name}.nii.gz").symlink_to(case / file)
    generated = time.perf_counter() - start
    sessions = len(find_sessions(pretrain_data))

    pretrained = list(pool.map(_pretrain, [(o, pretrain_data, work, args.pretrain_steps) for o in ("mae", "hybrid")]))
    print(json.dumps({"generated_s": round(generated), "pretrained": pretrained}), file=sys.stderr, flush=True)
    checkpoints = {objective: work / objective / "checkpoint.safetensors" for objective, *_ in pretrained}
    pretrained_at = time.perf_counter()

    runs = []
    for task in args.tasks:
        for seed in args.seeds:
            for condition in CONDITIONS:
                if task == "tumor":
                    runs += [(task, condition, seed, held, work, checkpoints, args.tumor_steps, 2) for held in brats]
                else:
                    runs.append((task, condition, seed, work / f"task-{task}", work, checkpoints,
                                 args.finetune_steps, args.shots))
    results = []
    for result in pool.map(_finetune, runs):  # in order, as they finish: a cut-short run keeps what it has
        results.append(result)
        print(json.dumps(result, default=str), file=sys.stderr, flush=True)
    pool.shutdown()
    total = time.perf_counter() - start

    lines = [f"Machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; {args.jobs} trainings at "
             f"once, {args.threads} threads each", "",
             f"Pretraining: {sessions} sessions ({args.subjects} generated 1 mm subjects x 6 sequences + 3 BraTS x 2), "
             f"tiny, 32^3 crops, batch 4, {args.pretrain_steps} steps, lr 1e-3:", ""]
    for objective, seconds, (first, last) in pretrained:
        lines.append(f"- {objective}: loss {first:.4f} -> {last:.4f} ({last / first:.3f}), {seconds:.0f} s")
    lines += ["", f"Finetuning: tiny, {args.finetune_steps} steps (BraTS: {args.tumor_steps}), lr 1e-3 (BraTS 2e-3), "
              f"{args.shots} shots of {args.sessions} out-of-domain generated sessions (BraTS: 2 of 3, leave one out)",
              "", "| task (metric) | condition | mean over seeds [95 % bootstrap CI] | per seed | wall s per run |",
              "|---|---|---|---|---:|"]
    for task in args.tasks:
        metric = TASK_METRICS.get(task, "dice")
        for condition in CONDITIONS:
            rows = [r for r in results if r[0] == task and r[1] == condition]
            per_seed = [float(np.mean([r[3] for r in rows if r[2] == seed])) for seed in args.seeds]
            values = [r[3] for r in rows]
            low, high = bootstrap_ci(values)
            lines.append(f"| {task} ({metric}) | {condition} | {np.mean(values):.3f} [{low:.3f}, {high:.3f}] | "
                         f"{', '.join(f'{v:.3f}' for v in per_seed)} | {np.mean([r[4] for r in rows]):.0f} |")
    lines += ["", f"Generation {generated:.0f} s, pretraining {pretrained_at - start - generated:.0f} s, whole "
              f"benchmark {total:.0f} s."]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"pretraining": pretrained, "finetuning": results}, indent=1, default=str))


if __name__ == "__main__":
    main()
