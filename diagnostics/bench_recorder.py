"""What the Recorder costs, measured side by side in one run.

    python -m diagnostics.bench_recorder [--backbone MAMBA-V2-T] [--steps 100] [--rounds 3]

Trains the same model on the same random batches with no recorder, with the recorder at
probe_every=50 and at probe_every=1 (and any other `--probe-every` values), and prints steps/s
and the overhead ratio against no recorder. The configurations are interleaved round by round
and each is reported by its median round, so that drift in the machine's load hits all alike.
The anchor (issue 4): Cockpit's cheapest preset costs ~1.0x at intervals of 16 and above, its
full preset 21x at every step; the target here is <= 1.05x at probe_every=50.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from diagnostics.recorder import Recorder
from models import build_model


def steps_per_s(backbone, img, patch, batch, steps, probe_every, seed=0, device="cpu") -> float:
    """Training steps/s of `backbone` on random data, with the Recorder at `probe_every`
    (None: no recorder), after one untimed warm-up step."""
    torch.manual_seed(seed)
    model = build_model(backbone, img_size=img, patch_size=patch).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = [torch.randn(batch, 3, *img, device=device) for _ in range(4)]
    target = torch.randn(batch, model.num_features, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as d:
        rec = Recorder(model, f"{d}/run", probe_every=probe_every) if probe_every is not None else None
        # one warm-up step, not timed (allocator, first-call costs)
        for i in range(steps + 1):
            if i == 1:
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
        elapsed = time.perf_counter() - t0
        if rec:
            rec.close()
    return steps / elapsed


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
    img = tuple(int(v) for v in a.image_size.split("x"))
    configs = [None] + a.probe_every
    results = {c: [] for c in configs}
    for _ in range(a.rounds):
        for c in configs:
            results[c].append(steps_per_s(a.backbone, img, a.patch_size, a.batch_size, a.steps, c))
    base = statistics.median(results[None])
    print(f"recorder overhead: {a.backbone} at {a.image_size} patch {a.patch_size}, batch "
          f"{a.batch_size}, {a.steps} steps x {a.rounds} rounds (median), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'configuration':>22} {'steps/s':>9} {'overhead':>9}")
    for c in configs:
        sps = statistics.median(results[c])
        label = "no recorder" if c is None else f"probe_every={c}"
        print(f"{label:>22} {sps:>9.2f} {base / sps:>8.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
