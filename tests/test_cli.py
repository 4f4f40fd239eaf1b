"""The command line: help, `diagnose models`, and one-line errors."""

import subprocess
import sys

from diagnostics.cli import SUBCOMMANDS, main
from diagnostics.commands import model_table
from models import build_model, list_models


def test_help_lists_subcommands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


def test_models_table_counts_match_built_models():
    rows = {r["name"]: r for r in model_table()}
    assert set(rows) == set(list_models())
    for name in ("VIT-T", "MAMBA-S-T", "MAMBA-V2-T"):
        m = build_model(name)
        assert rows[name]["params_m"] * 1e6 == sum(p.numel() for p in m.parameters())
    # 256x128 at patch 16: a 16x8 grid; the ViT adds its cls token
    assert rows["VIT-S"]["tokens"] == 129 and rows["MAMBA-V2"]["tokens"] == 128
    assert rows["MAMBA-V2"]["ssm_layers"] == 12 and rows["MAMBA-V2"]["scan_backend"] == "fast"
    assert rows["MAMBA-S"]["ssm_layers"] == 0 and rows["MAMBA-S"]["scan_backend"] == "-"


def test_models_command_prints_every_backbone(capsys):
    assert main(["models", "--image-size", "128x64"]) == 0
    out = capsys.readouterr().out
    for name in list_models():
        assert name in out
    assert "128x64" in out


def test_bad_argument_is_one_line_exit_2():
    r = subprocess.run([sys.executable, "-m", "diagnostics.cli", "models", "--image-size", "big"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "HEIGHTxWIDTH" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
