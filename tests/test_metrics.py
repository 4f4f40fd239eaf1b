"""Retrieval metrics (diagnostics.metrics) and re-ID head / losses (diagnostics.reid).

Each number is checked against a hand-worked example and an independent, slower computation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diagnostics.metrics import evaluate_features, evaluate_rank, pairwise_distance
from diagnostics.reid import (
    BNNeckHead,
    CrossEntropyLabelSmooth,
    ReIDLoss,
    TripletLoss,
    hard_example_mining,
)

# ----------------------------------------------------------------------------------------------
# evaluate_rank: hand-worked example
# ----------------------------------------------------------------------------------------------
#
# Gallery:   g0 (pid 1, cam 0)  g1 (pid 2, cam 1)  g2 (pid 1, cam 1)
#            g3 (pid 3, cam 0)  g4 (pid 1, cam 2)  g5 (pid 2, cam 0)
#
# Query A (pid 1, cam 0), ranking by distance: g0 g1 g2 g3 g4 g5
#   g0 is pid 1 seen by cam 0, the query's own camera: removed from A's list.
#   Remaining list: g1 (x) g2 (hit) g3 (x) g4 (hit) g5 (x)
#   first hit at rank 2 -> CMC@1 = 0, CMC@k>=2 = 1
#   AP = mean(precision at the hits) = (1/2 + 2/4) / 2 = 0.5
# Query B (pid 2, cam 2), ranking: g5 g0 g1 g2 g3 g4   (no pid-2 item in cam 2: nothing removed)
#   list: g5 (hit) g0 (x) g1 (hit) g2 g3 g4
#   CMC@1 = 1;  AP = (1/1 + 2/3) / 2 = 5/6
# Query C (pid 3, cam 0): its only gallery image g3 is from cam 0 -> no valid match, skipped.
# Query D (pid 4, cam 1): pid 4 is not in the gallery -> skipped.
#
# mAP = (0.5 + 5/6) / 2 = 2/3;  CMC@1 = (0 + 1) / 2 = 0.5;  CMC@2.. = 1.

G_PIDS = np.array([1, 2, 1, 3, 1, 2])
G_CAMS = np.array([0, 1, 1, 0, 2, 0])
Q_PIDS = np.array([1, 2, 3, 4])
Q_CAMS = np.array([0, 2, 0, 1])


def _distmat_from_rankings(rankings: list[list[int]], num_g: int) -> np.ndarray:
    """Distances that produce the given gallery orders (rank r gets distance r + 1)."""
    dist = np.zeros((len(rankings), num_g))
    for q, order in enumerate(rankings):
        for r, g in enumerate(order):
            dist[q, g] = r + 1.0
    return dist


HAND_DIST = _distmat_from_rankings(
    [[0, 1, 2, 3, 4, 5], [5, 0, 1, 2, 3, 4], [3, 0, 1, 2, 4, 5], [0, 1, 2, 3, 4, 5]], 6
)


def test_evaluate_rank_hand_worked_example():
    cmc, mAP = evaluate_rank(HAND_DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=5)
    assert mAP == pytest.approx(2.0 / 3.0)
    np.testing.assert_allclose(cmc, [0.5, 1.0, 1.0, 1.0, 1.0])


def test_evaluate_rank_per_query_ap():
    # Each valid query alone gives its own AP.
    for q, expected_ap, expected_r1 in [(0, 0.5, 0.0), (1, 5.0 / 6.0, 1.0)]:
        cmc, mAP = evaluate_rank(HAND_DIST[q : q + 1], Q_PIDS[q : q + 1], G_PIDS, Q_CAMS[q : q + 1], G_CAMS)
        assert mAP == pytest.approx(expected_ap)
        assert cmc[0] == expected_r1


def test_evaluate_rank_all_invalid_raises():
    with pytest.raises(ValueError, match="no valid query"):
        evaluate_rank(HAND_DIST[2:], Q_PIDS[2:], G_PIDS, Q_CAMS[2:], G_CAMS)


def test_evaluate_rank_pads_short_gallery_and_accepts_tensors():
    cmc, mAP = evaluate_rank(torch.tensor(HAND_DIST), torch.tensor(Q_PIDS), torch.tensor(G_PIDS),
                             torch.tensor(Q_CAMS), torch.tensor(G_CAMS), max_rank=50)
    assert cmc.shape == (50,)
    assert np.all(cmc[1:] == 1.0) and mAP == pytest.approx(2.0 / 3.0)


def test_evaluate_rank_shape_errors():
    with pytest.raises(ValueError):
        evaluate_rank(HAND_DIST, Q_PIDS[:3], G_PIDS, Q_CAMS, G_CAMS)
    with pytest.raises(ValueError):
        evaluate_rank(HAND_DIST, Q_PIDS, G_PIDS[:5], Q_CAMS, G_CAMS)
    with pytest.raises(ValueError):
        evaluate_rank(HAND_DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=0)


# ----------------------------------------------------------------------------------------------
# evaluate_rank: against a brute-force implementation on random data
# ----------------------------------------------------------------------------------------------

def _brute_force_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank):
    """Plain-python Market-1501 protocol: sort, filter, walk the list."""
    aps, cmcs = [], []
    for q in range(len(q_pids)):
        order = sorted(range(len(g_pids)), key=lambda g: (dist[q][g], g))
        kept = [g for g in order if not (g_pids[g] == q_pids[q] and g_cams[g] == q_cams[q])]
        hits = [g_pids[g] == q_pids[q] for g in kept]
        if not any(hits):
            continue
        found, precisions = 0, []
        for rank, hit in enumerate(hits, start=1):
            if hit:
                found += 1
                precisions.append(found / rank)
        aps.append(sum(precisions) / len(precisions))
        first = hits.index(True) + 1
        cmcs.append([1.0 if first <= k else 0.0 for k in range(1, max_rank + 1)])
    return np.mean(cmcs, axis=0), float(np.mean(aps))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_rank_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    num_q, num_g = 25, 70
    q_pids, g_pids = rng.integers(0, 8, num_q), rng.integers(0, 8, num_g)
    q_cams, g_cams = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    dist = rng.random((num_q, num_g))
    cmc, mAP = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    cmc_ref, mAP_ref = _brute_force_rank(dist.tolist(), q_pids.tolist(), g_pids.tolist(),
                                         q_cams.tolist(), g_cams.tolist(), 20)
    assert mAP == pytest.approx(mAP_ref, abs=1e-12)
    np.testing.assert_allclose(cmc, cmc_ref, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# pairwise_distance and evaluate_features
# ----------------------------------------------------------------------------------------------

def test_pairwise_distance_against_loops():
    torch.manual_seed(0)
    qf, gf = torch.randn(5, 7), torch.randn(4, 7)
    eu = pairwise_distance(qf, gf, "euclidean")
    cos = pairwise_distance(qf, gf, "cosine")
    for i in range(5):
        for j in range(4):
            assert eu[i, j].item() == pytest.approx((qf[i] - gf[j]).norm().item(), abs=1e-5)
            c = (qf[i] @ gf[j] / (qf[i].norm() * gf[j].norm())).item()
            assert cos[i, j].item() == pytest.approx(1.0 - c, abs=1e-5)
    assert pairwise_distance(qf, qf).diagonal().abs().max() < 1e-3  # clamped, never NaN
    with pytest.raises(ValueError, match="unknown metric"):
        pairwise_distance(qf, gf, "manhattan")


def test_evaluate_features_perfect_and_percent():
    # Features are one-hot pids: every query's nearest gallery items are its own identity.
    def batches(pids, cams):
        imgs = torch.nn.functional.one_hot(torch.tensor(pids), 5).float().view(-1, 1, 1, 5)
        return [(imgs[:3], torch.tensor(pids[:3]), torch.tensor(cams[:3])),
                (imgs[3:], torch.tensor(pids[3:]), torch.tensor(cams[3:]))]

    query = batches([0, 1, 2, 3], [0, 0, 0, 0])
    gallery = batches([0, 1, 2, 3, 4, 0, 1], [1, 1, 1, 1, 1, 2, 2])
    res = evaluate_features(lambda x: x.flatten(1), query, gallery, metric="cosine")
    assert set(res) == {"mAP", "rank1", "rank5", "rank10"}
    assert res["mAP"] == pytest.approx(100.0) and res["rank1"] == pytest.approx(100.0)


# ----------------------------------------------------------------------------------------------
# Re-ID head and losses
# ----------------------------------------------------------------------------------------------

def test_bnneck_head_modes():
    head = BNNeckHead(8, 5)
    x = torch.randn(6, 8)
    head.train()
    global_feat, bn_feat, logits = head(x)
    assert global_feat is x and bn_feat.shape == (6, 8) and logits.shape == (6, 5)
    assert not head.bottleneck.bias.requires_grad and head.classifier.bias is None
    logits.sum().backward()
    assert head.bottleneck.bias.grad is None and head.classifier.weight.grad is not None
    head.eval()
    out = head(x)
    assert isinstance(out, torch.Tensor) and out.shape == (6, 8)


def test_label_smoothing_matches_formula():
    # C = 3, eps = 0.1, logits [1, 2, 3], target 2:
    # q = [eps/3, eps/3, 1 - eps + eps/3] = [0.0333, 0.0333, 0.9333]
    # log p_c = z_c - log(e^1 + e^2 + e^3);  loss = -sum q_c log p_c
    eps = 0.1
    logz = math.log(math.exp(1) + math.exp(2) + math.exp(3))
    logp = [1 - logz, 2 - logz, 3 - logz]
    q = [eps / 3, eps / 3, 1 - eps + eps / 3]
    expected = -sum(qc * lp for qc, lp in zip(q, logp))
    loss = CrossEntropyLabelSmooth(3, eps)(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([2]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # eps = 0 is the ordinary cross-entropy.
    logits, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    plain = CrossEntropyLabelSmooth(3, 0.0)(logits, y)
    assert plain.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-6)


# A hand-made batch: three identities, two samples each, in 2-D.
TRI_FEATS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.5, 2.5], [3.0, 0.0], [2.0, 1.0]])
TRI_LABELS = torch.tensor([0, 0, 1, 1, 2, 2])


def _brute_force_hard(feats, labels):
    """Hardest positive / negative per anchor by explicit loops."""
    n = len(labels)
    d = [[math.dist(feats[i].tolist(), feats[j].tolist()) for j in range(n)] for i in range(n)]
    ap = [max(d[i][j] for j in range(n) if labels[j] == labels[i]) for i in range(n)]
    an = [min(d[i][j] for j in range(n) if labels[j] != labels[i]) for i in range(n)]
    return ap, an


def test_batch_hard_mining_matches_brute_force():
    ap_ref, an_ref = _brute_force_hard(TRI_FEATS, TRI_LABELS)
    x = TRI_FEATS
    dist = (x[:, None] - x[None]).norm(dim=-1)
    dist_ap, dist_an = hard_example_mining(dist, TRI_LABELS)
    np.testing.assert_allclose(dist_ap.numpy(), ap_ref, atol=1e-6)
    np.testing.assert_allclose(dist_an.numpy(), an_ref, atol=1e-6)

    margin = 0.3
    expected = np.mean([max(0.0, a - b + margin) for a, b in zip(ap_ref, an_ref)])
    assert TripletLoss(margin)(TRI_FEATS, TRI_LABELS).item() == pytest.approx(expected, abs=1e-5)
    soft = np.mean([math.log1p(math.exp(a - b)) for a, b in zip(ap_ref, an_ref)])
    assert TripletLoss(None)(TRI_FEATS, TRI_LABELS).item() == pytest.approx(soft, abs=1e-5)


def test_triplet_loss_gradients_finite_and_single_identity_batch():
    x = TRI_FEATS.clone().requires_grad_(True)
    TripletLoss(0.3)(x, TRI_LABELS).backward()
    assert torch.isfinite(x.grad).all()  # the anchor-to-itself sqrt(0) must not produce NaN
    y = torch.randn(4, 3, requires_grad=True)
    loss = TripletLoss(0.3)(y, torch.zeros(4, dtype=torch.long))  # no negatives anywhere
    assert loss.item() == 0.0
    loss.backward()


def test_reid_loss_is_sum_of_parts():
    torch.manual_seed(0)
    feat, logits = torch.randn(6, 4), torch.randn(6, 3)
    total, parts = ReIDLoss(3)(feat, logits, TRI_LABELS, return_parts=True)
    expected = CrossEntropyLabelSmooth(3)(logits, TRI_LABELS) + TripletLoss(0.3)(feat, TRI_LABELS)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(parts) == {"id", "triplet"}
    weighted = ReIDLoss(3, id_weight=0.5, triplet_weight=2.0)(feat, logits, TRI_LABELS)
    assert weighted.item() == pytest.approx(0.5 * parts["id"].item() + 2.0 * parts["triplet"].item(), rel=1e-6)
