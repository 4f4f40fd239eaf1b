"""Scale-out: the recorder and `diagnose train` under torchrun, two CPU processes, gloo, DDP.

Both tests start `python -m torch.distributed.run --standalone --nproc-per-node 2` (torchrun)
with a wall-clock timeout, so a deadlock fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from diagnostics import load_run

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gloo over TCP, POSIX paths")


def _torchrun(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           *args]
    try:
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:  # the process tree is killed by run()
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s (deadlock?): {e.stderr!s:.2000}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


# Each rank trains a tiny MAMBA-V2-T on its own batch, probing every step. An audit hook lists
# every file operation under the run directory, so the test can tell which rank wrote.
WORKER = textwrap.dedent("""
    import json, os, sys
    run_dir, out_dir = os.path.abspath(sys.argv[1]), sys.argv[2]
    writes = []
    WRITE_EVENTS = {"os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree",
                    "os.truncate", "os.symlink", "os.link", "os.chmod"}

    def audit(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        elif event == "os.rename":                      # rename and replace: the target
            path, writing = args[1], True
        elif event in WRITE_EVENTS:
            path, writing = args[0], True
        else:
            return
        if writing and isinstance(path, (str, bytes, os.PathLike)):
            p = os.path.abspath(os.fsdecode(path))
            if p == run_dir or p.startswith(run_dir + os.sep):
                writes.append([event, p])

    sys.addaudithook(audit)

    import torch, torch.distributed as dist, torch.nn as nn, torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP
    from diagnostics.recorder import Recorder
    from models import build_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    backbone = build_model("MAMBA-V2-T", img_size=(32, 16), patch_size=8, depth=2)

    class Net(nn.Module):
        def __init__(self, backbone):
            super().__init__()
            self.backbone, self.head = backbone, nn.Linear(backbone.num_features, 4)

        def forward(self, x):
            return self.head(self.backbone(x))

    net = DDP(Net(backbone))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(100 + rank)          # each rank its own data
    losses, norms = [], []
    with Recorder(backbone, run_dir, probe_every=1, layer_every=1, probe_batch=2,
                  backbone="MAMBA-V2-T", config={"world": world}, flush_every_s=0.0) as rec:
        for step in range(3):
            x, y = torch.randn(4, 3, 32, 16, generator=g), torch.randint(0, 4, (4,), generator=g)
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            norms.append(rec.step(loss, optimizer=opt, clip_grad=1.0, epoch=0))
            opt.step()
            opt.zero_grad()
            losses.append(float(loss))
    dist.barrier()
    dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "world": world, "writes": writes, "losses": losses,
                   "norms": norms, "enabled": rec.enabled}, f)
""")


def test_recorder_under_torchrun_ddp_probes_every_step_rank0_writes(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    run_dir, out = tmp_path / "runs" / "ddp", tmp_path / "out"
    out.mkdir()
    _torchrun([str(script), str(run_dir), str(out)], tmp_path)
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["world"], r0["enabled"], r1["enabled"]) == (2, True, False)
    assert r1["writes"] == []                          # rank 1 touched nothing in the run
    written = {(Path(p).relative_to(run_dir).parts or ("",))[0] for _, p in r0["writes"]}
    assert {"", "manifest.json", "steps", "layers", "ssm", "ssm_state"} <= written

    run = load_run(run_dir)
    assert run.status == "finished" and run.manifest["world_size"] == 2 and not run.warnings
    assert run.steps.step.tolist() == [0, 1, 2]
    # the loss is the mean over ranks; the gradient norm (after DDP's all-reduce) is the same
    # on every rank, and it is what was recorded
    mean = [(a + b) / 2 for a, b in zip(r0["losses"], r1["losses"])]
    assert run.steps.loss.tolist() == pytest.approx(mean, rel=1e-6)
    assert r0["losses"] != r1["losses"]
    assert r0["norms"] == pytest.approx(r1["norms"], rel=1e-6)
    assert run.steps.grad_norm.tolist() == pytest.approx(r0["norms"], rel=1e-6)
    # probes on every step (rank 0's own batch), no collective on probe steps: no deadlock
    assert sorted(set(run.ssm.step)) == [0, 1, 2]
    assert set(run.ssm.direction) == {"h", "v", "h_rev", "v_rev"}
    assert sorted(set(run.layers.step)) == [0, 1, 2]


def test_diagnose_train_under_torchrun(tmp_path):
    run_dir = tmp_path / "runs" / "vit"
    # `-m --`: torchrun's own parser would take --run for its --run-path otherwise
    proc = _torchrun(["-m", "--", "diagnostics.cli", "train", "--backbone", "VIT-T", "--run",
                      str(run_dir), "--dataset", "synthetic:16", "--image-size", "32x16",
                      "--patch-size", "8", "--batch-size", "8", "--epochs", "2",
                      "--warmup-epochs", "0", "--max-steps", "2", "--probe-every", "1",
                      "--quiet"], tmp_path)
    assert proc.stdout.count("run written to") == 1  # rank 0 alone speaks
    run = load_run(run_dir)
    assert run.status == "finished" and not run.warnings
    assert run.steps.step.tolist() == [0, 1]
    assert run.manifest["world_size"] == 2 and run.manifest["config"]["world_size"] == 2
    # 8 PK batches an epoch for one process: 4 for each of two ranks
    assert run.manifest["config"]["steps_per_epoch"] == 4
    assert len(run.eval) == 1 and len(run.attention) and (run_dir / "checkpoint.pt").is_file()
    assert (run.steps.samples_per_s > 0).all()
