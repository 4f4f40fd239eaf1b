"""Re-identification head and losses: the "Bag of Tricks" strong baseline.

Luo et al., "Bag of Tricks and A Strong Baseline for Deep Person Re-identification" (CVPRW 2019,
code: michuanhaohao/reid-strong-baseline). A backbone's global feature ``f_t`` goes through a BNNeck:

    f_t --BatchNorm1d (bias frozen at 0)--> f_i --Linear (no bias)--> logits

* the triplet loss is applied to ``f_t`` (before the BN): metric learning works best on the
  unnormalised feature;
* the identity (cross-entropy with label smoothing) loss is applied to the logits from ``f_i``:
  after the BN the features lie near a hypersphere where a bias-free linear classifier separates
  identities by angle, so the two losses stop pulling the same feature in different directions;
* at test time ``f_i`` is the retrieval feature.

Public API::

    BNNeckHead(in_dim, num_classes)   # train: (global_feat, bn_feat, logits); eval: bn_feat
    CrossEntropyLabelSmooth(num_classes, epsilon=0.1)
    hard_example_mining(dist, labels) -> (dist_ap, dist_an)
    TripletLoss(margin=0.3)           # batch-hard; margin=None gives the soft margin
    ReIDLoss(num_classes, margin=0.3, epsilon=0.1, id_weight=1.0, triplet_weight=1.0)
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "BNNeckHead",
    "CrossEntropyLabelSmooth",
    "hard_example_mining",
    "TripletLoss",
    "ReIDLoss",
]

#: Label-smoothing epsilon of the strong baseline.
DEFAULT_EPSILON = 0.1
#: Triplet margin of the strong baseline (and of Hermans et al.'s batch-hard triplet loss).
DEFAULT_MARGIN = 0.3
#: Std of the classifier's initial weights in the strong baseline (``weights_init_classifier``):
#: small, so the initial logits are near zero and the first identity loss is ~log(num_classes).
CLASSIFIER_INIT_STD = 0.001
#: Squared distances are clamped here before the sqrt: the sqrt's gradient is infinite at 0
#: (an anchor's distance to itself), which would turn the whole backward pass into NaN.
MIN_SQ_DIST = 1e-12


class BNNeckHead(nn.Module):
    """BNNeck: ``BatchNorm1d`` bottleneck (bias frozen) then a bias-free linear classifier.

    Args:
        in_dim: dimension ``D`` of the backbone's global feature (``backbone.num_features``).
        num_classes: number of training identities ``C``.

    Forward:
        ``feat (B, D)`` ->
        training: ``(global_feat (B, D), bn_feat (B, D), logits (B, C))``;
        eval: ``bn_feat (B, D)``, the retrieval feature.
    """

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        if in_dim < 1 or num_classes < 1:
            raise ValueError(f"in_dim and num_classes must be >= 1; got {in_dim}, {num_classes}")
        self.in_dim = in_dim
        self.num_classes = num_classes
        self.bottleneck = nn.BatchNorm1d(in_dim)
        # The BN's shift is frozen at 0: a learnt shift would move the features off the
        # origin-centred hypersphere that the bias-free classifier relies on.
        self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(in_dim, num_classes, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The strong baseline's init: BN scale 1 / shift 0, classifier N(0, 0.001^2)."""
        nn.init.ones_(self.bottleneck.weight)
        nn.init.zeros_(self.bottleneck.bias)
        nn.init.normal_(self.classifier.weight, std=CLASSIFIER_INIT_STD)

    def forward(self, feat: torch.Tensor):
        bn_feat = self.bottleneck(feat)  # (B, D)
        if not self.training:
            return bn_feat
        logits = self.classifier(bn_feat)  # (B, C)
        return feat, bn_feat, logits


class CrossEntropyLabelSmooth(nn.Module):
    """Cross-entropy against smoothed targets ``q = (1 - eps) * onehot(y) + eps / C``.

    ``loss = mean_over_batch( -sum_c q_c * log_softmax(logits)_c )`` (Szegedy et al., 2016).
    Smoothing keeps the classifier from becoming over-confident on the training identities, which
    never reappear at test time.
    """

    def __init__(self, num_classes: int, epsilon: float = DEFAULT_EPSILON) -> None:
        super().__init__()
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"epsilon must be in [0, 1); got {epsilon}")
        self.num_classes = num_classes
        self.epsilon = epsilon

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits must be (B, {self.num_classes}); got {tuple(logits.shape)}"
            )
        log_probs = F.log_softmax(logits.float(), dim=1)  # (B, C)
        onehot = F.one_hot(targets.long(), self.num_classes).to(log_probs.dtype)  # (B, C)
        smoothed = (1.0 - self.epsilon) * onehot + self.epsilon / self.num_classes
        return -(smoothed * log_probs).sum(dim=1).mean()


def _euclidean_dist(x: torch.Tensor) -> torch.Tensor:
    """``(B, B)`` L2 distances between the rows of ``x (B, D)``, safe to differentiate."""
    x = x.float()
    sq = x.pow(2).sum(1, keepdim=True)  # (B, 1)
    d2 = sq + sq.t() - 2.0 * x @ x.t()  # (B, B)
    return d2.clamp_min(MIN_SQ_DIST).sqrt()


def hard_example_mining(dist: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-hard mining (Hermans et al., "In Defense of the Triplet Loss", 2017).

    For every anchor ``i``: its hardest positive (largest distance to a sample of the same label,
    the anchor itself included: distance ~0, so it only counts when the anchor is alone) and its
    hardest negative (smallest distance to a sample of another label).

    Args:
        dist: ``(B, B)`` pairwise distances.
        labels: ``(B,)`` identity labels.

    Returns:
        ``(dist_ap (B,), dist_an (B,))``. Anchors without any negative get ``dist_an = +inf``.
    """
    same = labels.view(-1, 1) == labels.view(1, -1)  # (B, B) bool
    # Masked max/min: fill the excluded entries with -inf/+inf instead of multiplying by the mask,
    # so no distance value can leak through.
    dist_ap = dist.masked_fill(~same, float("-inf")).max(dim=1).values  # (B,)
    dist_an = dist.masked_fill(same, float("inf")).min(dim=1).values  # (B,)
    return dist_ap, dist_an


class TripletLoss(nn.Module):
    """Batch-hard triplet loss on euclidean distances.

    ``margin`` set: ``mean(relu(d_ap - d_an + margin))`` (``nn.MarginRankingLoss``).
    ``margin=None``: the soft margin ``mean(softplus(d_ap - d_an))`` (``nn.SoftMarginLoss``).
    Anchors that have no negative in the batch (the batch holds a single identity) are left out;
    a batch where no anchor has a negative gives a loss of 0 (still attached to the graph).

    Forward: ``(features (B, D), labels (B,)) -> scalar``.
    """

    def __init__(self, margin: float | None = DEFAULT_MARGIN, normalize_feature: bool = False) -> None:
        super().__init__()
        if margin is not None and margin < 0:
            raise ValueError(f"margin must be >= 0 or None (soft margin); got {margin}")
        self.margin = margin
        self.normalize_feature = normalize_feature

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.normalize_feature:
            features = F.normalize(features, dim=1)
        dist = _euclidean_dist(features)  # (B, B)
        dist_ap, dist_an = hard_example_mining(dist, labels)  # (B,), (B,)
        valid = torch.isfinite(dist_an)
        if not valid.any():
            return features.sum() * 0.0
        diff = dist_ap[valid] - dist_an[valid]  # > 0 when the hardest negative is the closer one
        if self.margin is None:
            return F.softplus(diff).mean()
        return F.relu(diff + self.margin).mean()


class ReIDLoss(nn.Module):
    """The strong baseline's loss: ``id_weight * CE_ls(logits) + triplet_weight * Triplet(global)``.

    Forward:
        ``(global_feat (B, D), logits (B, C), targets (B,)) -> total`` or, with
        ``return_parts=True``, ``(total, {"id": id_loss, "triplet": triplet_loss})`` (unweighted
        parts, for logging).
    """

    def __init__(
        self,
        num_classes: int,
        margin: float | None = DEFAULT_MARGIN,
        epsilon: float = DEFAULT_EPSILON,
        id_weight: float = 1.0,
        triplet_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.id_loss = CrossEntropyLabelSmooth(num_classes, epsilon)
        self.triplet = TripletLoss(margin)
        self.id_weight = id_weight
        self.triplet_weight = triplet_weight

    def forward(
        self,
        global_feat: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        return_parts: bool = False,
    ):
        id_loss = self.id_loss(logits, targets)
        tri_loss = self.triplet(global_feat, targets)
        total = self.id_weight * id_loss + self.triplet_weight * tri_loss
        if return_parts:
            return total, {"id": id_loss, "triplet": tri_loss}
        return total
