"""Benchmark (GPU): `unet_b` pretraining throughput at 96^3 in bf16, in volumes per second.

    python benchmarks/brain_gpu_throughput.py [--arch unet_b] [--crop 96] [--batch 4] [--steps 30]

Runs the real pretraining step (:class:`medhub.learn.objectives.PretrainingNet`, MAE and hybrid) on random
tensors already on the GPU, so it measures the network, not data loading: a few warm-up steps, then ``--steps``
timed steps (CUDA synchronised), for each objective. Prints volumes/s and peak GPU memory. On a machine without a
GPU it says so and exits 0. Run it as one short script on the lent device machine (about a minute).
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="unet_b")
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"gpu": None, "note": "no CUDA device: nothing measured"}))
        return
    results = [_measure(objective, args) for objective in ("mae", "hybrid")]
    print(json.dumps({"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "results": results},
                     indent=1))


def _measure(objective: str, args: argparse.Namespace) -> dict:
    """Warm up, then time ``args.steps`` bf16 pretraining steps of ``objective`` on random GPU tensors."""
    import torch

    from medhub.learn.objectives import PretrainingNet, cube_mask
    from medhub.learn.unet3d import preset

    device = torch.device("cuda")
    torch.manual_seed(0)
    net = PretrainingNet(preset(args.arch, in_channels=1, out_channels=1)).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 1, args.crop, args.crop, args.crop, device=device)
    y = torch.randn_like(x)
    mask = cube_mask((args.crop,) * 3, 16, 0.6, device=device)
    torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = net(objective, x, y, mask=mask)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"objective": objective, "arch": args.arch, "crop": args.crop, "batch": args.batch,
            "volumes_per_s": round(args.steps * args.batch / seconds, 2),
            "step_ms": round(1000 * seconds / args.steps, 1),
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "parameters": sum(p.numel() for p in net.parameters())}


if __name__ == "__main__":
    main()
