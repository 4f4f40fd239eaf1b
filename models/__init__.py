"""Backbones under study (ViT, simplified Mamba, SS2D Vision Mamba) and the selective scan."""
