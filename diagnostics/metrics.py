"""Re-identification retrieval metrics: CMC and mAP under the Market-1501 protocol.

The protocol (Zheng et al., "Scalable Person Re-identification: A Benchmark", ICCV 2015, and the
reference evaluation code every re-ID paper reuses, e.g. torchreid's ``eval_market1501``):

* every query is ranked against the whole gallery by distance (smallest first);
* gallery items showing the query's identity *from the query's own camera* are removed from that
  query's ranked list: re-ID asks for cross-camera matches, and a same-camera shot of the same
  person is nearly a duplicate of the query;
* a query left with no correct match (its identity appears in no other camera) is skipped: it has
  no defined rank or average precision;
* CMC@k is the fraction of (valid) queries whose first correct match is at rank <= k;
* AP is the mean, over the correct matches of the remaining list, of the precision at each
  correct match's rank; mAP is its mean over valid queries.

Ties in distance are broken by gallery order (a stable sort), as in the reference code.

Public API::

    pairwise_distance(qf, gf, metric="euclidean") -> torch.Tensor (num_q, num_g)
    evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50)
        -> (cmc: np.ndarray (max_rank,), mAP: float)          # fractions in [0, 1]
    extract_features(model_fn, loader, device=None) -> (feats (N, D), pids (N,), camids (N,))
    evaluate_features(model_fn, query_loader, gallery_loader, metric="euclidean")
        -> {"mAP", "rank1", "rank5", "rank10"}                  # percent, as in papers
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "METRICS",
    "pairwise_distance",
    "evaluate_rank",
    "extract_features",
    "evaluate_features",
]

#: Distance metrics understood by :func:`pairwise_distance`.
METRICS = ("euclidean", "cosine")

#: Ranks reported by :func:`evaluate_features` (CMC@k, the numbers re-ID papers quote).
REPORTED_RANKS = (1, 5, 10)


def _as_numpy(x: Any) -> np.ndarray:
    """A numpy view of a tensor / array / sequence (tensors are detached and moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def pairwise_distance(qf: torch.Tensor, gf: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """Distance between every query feature and every gallery feature.

    Args:
        qf: query features ``(num_q, D)``.
        gf: gallery features ``(num_g, D)``.
        metric: ``"euclidean"`` (L2 distance) or ``"cosine"`` (``1 - cosine similarity``, in
            ``[0, 2]``).

    Returns:
        ``(num_q, num_g)`` float tensor on the features' device; smaller means more similar.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    qf = torch.as_tensor(qf).float()
    gf = torch.as_tensor(gf).float()
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(
            f"features must be (num_q, D) and (num_g, D); got {tuple(qf.shape)} and {tuple(gf.shape)}"
        )
    if metric == "cosine":
        return 1.0 - F.normalize(qf, dim=1) @ F.normalize(gf, dim=1).t()
    # ||q - g||^2 = ||q||^2 + ||g||^2 - 2 q.g : one matrix product instead of a (num_q, num_g, D)
    # difference tensor (Market-1501's test set is 3368 x 19732). Rounding can make the squared
    # distance of near-identical vectors slightly negative, hence the clamp before the sqrt.
    sq = qf.pow(2).sum(1, keepdim=True) + gf.pow(2).sum(1).unsqueeze(0) - 2.0 * qf @ gf.t()
    return sq.clamp_min(0.0).sqrt()


def evaluate_rank(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
) -> tuple[np.ndarray, float]:
    """CMC curve and mAP under the Market-1501 protocol (see the module docstring).

    Args:
        distmat: ``(num_q, num_g)`` distances (tensor or array); smaller = more similar.
        q_pids, q_camids: ``(num_q,)`` identity and camera of each query.
        g_pids, g_camids: ``(num_g,)`` identity and camera of each gallery item.
        max_rank: length of the returned CMC curve. When a query's ranked list is shorter, the
            curve is continued with its last value (it is cumulative, so that is exact).

    Returns:
        ``(cmc, mAP)``: ``cmc`` is a float array ``(max_rank,)`` with ``cmc[k-1]`` = CMC@k as a
        fraction in ``[0, 1]``; ``mAP`` is a float in ``[0, 1]``. Multiply by 100 for the
        percentages papers report.

    Raises:
        ValueError: on shape mismatches, ``max_rank < 1``, or when no query has a valid match
            (every query's identity is missing from the gallery's other cameras).
    """
    dist = _as_numpy(distmat).astype(np.float64, copy=False)
    q_pids, g_pids = _as_numpy(q_pids).ravel(), _as_numpy(g_pids).ravel()
    q_camids, g_camids = _as_numpy(q_camids).ravel(), _as_numpy(g_camids).ravel()
    if dist.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_q, num_g); got shape {dist.shape}")
    num_q, num_g = dist.shape
    if len(q_pids) != num_q or len(q_camids) != num_q:
        raise ValueError(
            f"distmat has {num_q} query rows but q_pids/q_camids have {len(q_pids)}/{len(q_camids)}"
        )
    if len(g_pids) != num_g or len(g_camids) != num_g:
        raise ValueError(
            f"distmat has {num_g} gallery columns but g_pids/g_camids have "
            f"{len(g_pids)}/{len(g_camids)}"
        )
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1; got {max_rank}")

    # Rank the whole gallery once: (num_q, num_g) gallery indices, nearest first. A stable sort
    # makes ties deterministic (gallery order), as in the reference implementation.
    order = np.argsort(dist, axis=1, kind="stable")
    ranked_pids = g_pids[order]  # (num_q, num_g)
    ranked_camids = g_camids[order]  # (num_q, num_g)
    matches = ranked_pids == q_pids[:, None]  # (num_q, num_g) bool

    all_cmc: list[np.ndarray] = []
    all_ap: list[float] = []
    for qi in range(num_q):
        # Same identity seen by the same camera: not a cross-camera match, drop it from the list.
        same_view = matches[qi] & (ranked_camids[qi] == q_camids[qi])
        hits = matches[qi][~same_view]  # (n_kept,) bool, in rank order
        if not hits.any():
            continue  # no correct match left: rank and AP are undefined for this query

        cmc = np.cumsum(hits) >= 1  # (n_kept,) "a match was found at rank <= k"
        if len(cmc) >= max_rank:
            cmc = cmc[:max_rank]
        else:  # short list: cumulative curve stays at its last value
            cmc = np.concatenate([cmc, np.full(max_rank - len(cmc), cmc[-1])])
        all_cmc.append(cmc.astype(np.float64))

        # precision@k at every rank k, averaged over the ranks that hold a correct match.
        ranks = np.arange(1, len(hits) + 1)
        precision_at_k = np.cumsum(hits) / ranks
        all_ap.append(float(precision_at_k[hits].mean()))

    if not all_ap:
        raise ValueError(
            f"no valid query: none of the {num_q} queries has a match in the gallery from another "
            "camera (check that query identities appear in the gallery under other cameras)"
        )
    return np.mean(all_cmc, axis=0), float(np.mean(all_ap))


def extract_features(
    model_fn: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Run ``model_fn`` over a loader of ``(images, pids, camids, ...)`` batches.

    Args:
        model_fn: maps images ``(B, 3, H, W)`` to features ``(B, D)``. It is called under
            ``torch.no_grad()``; putting the model in eval mode is the caller's job (a BNNeck head
            returns its BN feature only in eval mode).
        loader: yields batches whose first three items are images, pids and camids (extra items,
            e.g. masks, are ignored).
        device: where images are moved before ``model_fn`` (default: leave them where they are).

    Returns:
        ``(features (N, D) float32 on the CPU, pids (N,) int64, camids (N,) int64)``.
    """
    feats: list[torch.Tensor] = []
    pids: list[np.ndarray] = []
    camids: list[np.ndarray] = []
    with torch.no_grad():
        for batch in loader:
            images, batch_pids, batch_camids = batch[0], batch[1], batch[2]
            if device is not None:
                images = images.to(device)
            out = model_fn(images)
            if isinstance(out, (tuple, list)):  # tolerate heads that return (feat, ...) tuples
                out = out[0]
            feats.append(out.detach().float().cpu().reshape(len(images), -1))
            pids.append(_as_numpy(batch_pids).astype(np.int64).ravel())
            camids.append(_as_numpy(batch_camids).astype(np.int64).ravel())
    if not feats:
        raise ValueError("the loader yielded no batches")
    return torch.cat(feats), np.concatenate(pids), np.concatenate(camids)


def evaluate_features(
    model_fn: Callable[[torch.Tensor], torch.Tensor],
    query_loader: Iterable,
    gallery_loader: Iterable,
    metric: str = "euclidean",
    *,
    device: torch.device | str | None = None,
    max_rank: int = 50,
) -> dict[str, float]:
    """Extract query and gallery features and score the retrieval.

    Returns:
        ``{"mAP", "rank1", "rank5", "rank10"}`` in percent (0-100), the columns of the run
        format's ``eval`` table.
    """
    qf, q_pids, q_camids = extract_features(model_fn, query_loader, device)
    gf, g_pids, g_camids = extract_features(model_fn, gallery_loader, device)
    distmat = pairwise_distance(qf, gf, metric)
    cmc, mAP = evaluate_rank(
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max(max_rank, max(REPORTED_RANKS))
    )
    result = {"mAP": 100.0 * mAP}
    for k in REPORTED_RANKS:
        result[f"rank{k}"] = 100.0 * float(cmc[k - 1])
    return result
