"""Backbones under study (ViT, simplified Mamba, SS2D Vision Mamba) and the selective scan.

Build one by name with ``build_model(name, **overrides)``; ``list_models()`` lists the names.
Every backbone takes images (B, 3, H, W), default ``img_size=(256, 128)`` (re-ID) and
``patch_size=16``, and answers the same calls (docs/interfaces.md): ``forward``,
``forward_features`` -> (B, T, C), ``forward_head`` -> (B, num_features),
``forward_intermediates``, and the attributes ``num_features``, ``patch_size``, ``img_size``,
``grid_size``, ``blocks``, ``num_prefix_tokens``.

| name         | file          | what                                              | dim | depth | params at 256x128 |
|--------------|---------------|---------------------------------------------------|-----|-------|-------------------|
| `VIT-S`      | `vit.py`      | ViT-Small/16, cls token, 6 heads                  | 384 | 12    | 21.6 M            |
| `MAMBA-S`    | `mamba_s.py`  | the user's "simplified Mamba": softmax attention  | 384 | 12    | 32.2 M            |
|              |               | gated by silu(z). NOT an SSM (cautionary baseline)|     |       |                   |
| `MAMBA-V2`   | `vmamba.py`   | VMamba-style SS2D blocks, 4-direction cross-scan, | 384 | 12    | 28.8 M            |
|              |               | d_state 16, expand 2, d_conv 3, MLP ratio 4       |     |       |                   |
| `VIM-S`      | `vim.py`      | Vim-style bidirectional Mamba (bimamba v2), cls   | 384 | 24    | 25.4 M            |
|              |               | token in the middle, d_state 16, no MLP           |     |       |                   |
| `VIT-T`      | `vit.py`      | CPU preset of VIT-S, 3 heads                      | 96  | 4     | 0.53 M            |
| `MAMBA-S-T`  | `mamba_s.py`  | CPU preset of MAMBA-S                             | 96  | 4     | 0.75 M            |
| `MAMBA-V2-T` | `vmamba.py`   | CPU preset of MAMBA-V2, d_state 16                | 96  | 4     | 0.79 M            |
| `VIM-T`      | `vim.py`      | CPU preset of VIM-S, d_state 16                   | 96  | 4     | 0.41 M            |

Overrides are constructor arguments, e.g. ``build_model("MAMBA-V2-T", img_size=(64, 32),
depth=2, scan_backend="reference")``. The selective scan itself is `models.scan`.
"""

from __future__ import annotations

import torch.nn as nn

from models.layers import model_entrypoints, register_model
# Importing a family registers its variants; this order is `list_models()`'s order.
from models import vit  # noqa: F401  isort: skip
from models import mamba_s  # noqa: F401  isort: skip
from models import vmamba  # noqa: F401  isort: skip
from models import vim  # noqa: F401  isort: skip

__all__ = ["build_model", "list_models", "register_model"]


def list_models() -> list[str]:
    """Registered backbone names, in registration order."""
    return list(model_entrypoints())


def build_model(name: str, **overrides) -> nn.Module:
    """Build the backbone registered as `name`; `overrides` go to its constructor.

    Raises ValueError naming the known models when `name` is unknown.
    """
    entrypoints = model_entrypoints()
    if name not in entrypoints:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(entrypoints)}")
    return entrypoints[name](**overrides)
