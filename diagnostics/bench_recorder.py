"""What the Recorder costs, measured side by side in one run.

    python -m diagnostics.bench_recorder [--backbone MAMBA-V2-T] [--steps 100] [--rounds 3]

Trains one copy of the same model per configuration (no recorder, the recorder at
probe_every=50 and at probe_every=1, and any other `--probe-every` values) on the same random
batches, in lockstep: step i of every configuration runs before step i + 1 of any, in an order
that rotates from step to step, and each step is timed on its own. Drift in the machine's load
(other tenants, frequency changes) therefore hits every configuration alike, step by step; timing
whole configurations one after another left differences of ~5% between two runs of the same
configuration on a quiet 2-core machine, as large as what is measured. Each configuration is
reported by its median round.
The anchor (issue 4): Cockpit's cheapest preset costs ~1.0x at intervals of 16 and above, its
full preset 21x at every step; the target here is <= 1.05x at probe_every=50.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Sequence

import torch
import torch.nn.functional as F

from diagnostics.recorder import Recorder
from models import build_model


def lockstep_steps_per_s(backbone, img, patch, batch, steps, configs: Sequence[int | None],
                         seed=0, device="cpu") -> dict:
    """Training steps/s of `backbone` on random data for each configuration (a probe_every for
    the Recorder, None: no recorder), trained in lockstep after one untimed warm-up step each.
    Every copy starts from the same weights and sees the same batches, so all do the same
    arithmetic; the recorder's probe steps fall on the same step indices."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    torch.manual_seed(seed)
    data = [torch.randn(batch, 3, *img, device=device) for _ in range(4)]
    elapsed = {c: 0.0 for c in configs}
    with tempfile.TemporaryDirectory() as d:
        arms = []
        for i, c in enumerate(configs):
            torch.manual_seed(seed)
            model = build_model(backbone, img_size=img, patch_size=patch).to(device)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            rec = Recorder(model, f"{d}/run{i}", probe_every=c) if c is not None else None
            arms.append((c, model, opt, rec))
        target = torch.randn(batch, arms[0][1].num_features, device=device,
                             generator=torch.Generator(device).manual_seed(seed))
        for i in range(steps + 1):
            k = i % len(arms)
            for c, model, opt, rec in arms[k:] + arms[:k]:     # rotate who goes first
                sync()
                t0 = time.perf_counter()
                loss = F.mse_loss(model(data[i % len(data)]), target)
                loss.backward()
                if rec:
                    rec.step(loss, optimizer=opt, clip_grad=1.0)
                else:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad()
                sync()
                if i:                    # step 0 is the warm-up (allocator, first-call costs)
                    elapsed[c] += time.perf_counter() - t0
        for _, _, _, rec in arms:
            if rec:
                rec.close()
    return {c: steps / elapsed[c] for c in configs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="MAMBA-V2-T")
    p.add_argument("--image-size", default="64x32")
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--probe-every", type=int, nargs="+", default=[50, 1])
    a = p.parse_args(argv)
    from diagnostics.bench import bench_recorder     # the rounds, medians and ratios

    img = tuple(int(v) for v in a.image_size.split("x"))
    df = bench_recorder(backbone=a.backbone, image_size=img, patch_size=a.patch_size,
                        batch=a.batch_size, steps=a.steps, rounds=a.rounds,
                        probe_every=a.probe_every)
    print(f"recorder overhead: {a.backbone} at {a.image_size} patch {a.patch_size}, batch "
          f"{a.batch_size}, {a.steps} steps in lockstep x {a.rounds} rounds (median), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'configuration':>22} {'steps/s':>9} {'overhead':>9}")
    for row in df.itertuples():
        print(f"{row.configuration:>22} {row.steps_per_s:>9.2f} {row.overhead:>8.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
