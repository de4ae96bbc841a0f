"""Membership inference on a published model: which examples were trained on.

Adversary: anyone holding the trained model (``model.pt``), the examples to test, and
for LiRA also data from the same distribution and the training recipe, to train
shadow models the way the target was trained. No access to the training run itself.

Attacks, written from the papers:

- Loss threshold: S. Yeom, I. Giacomelli, M. Fredrikson, S. Jha, "Privacy Risk in
  Machine Learning: Analyzing the Connection to Overfitting", IEEE CSF 2018. The
  score is the negative loss; the ROC sweeps every threshold.
- LiRA: N. Carlini, S. Chien, M. Nasr, S. Song, A. Terzis, F. Tramèr, "Membership
  Inference Attacks From First Principles", IEEE S&P 2022. The statistic is the
  logit-scaled confidence φ = log(p / (1 - p)) of the true class; its distribution over
  shadow models trained with (IN) and without (OUT) the example is fitted by a
  Gaussian per example. Online: likelihood ratio N(φ; μ_in, σ_in²) / N(φ; μ_out, σ_out²).
  Offline: one-sided test against OUT only, Λ = Pr[Z < φ], Z ~ N(μ_out, σ_out²).
  With fewer than 64 shadow models the variances are global (pooled over examples),
  as the paper recommends for few shadows.

IBM's adversarial-robustness-toolbox (1.20.1, checked) was not used: its membership
attacks are trained attack classifiers, rule-based and label-only attacks, with no
LiRA, and it would add a dependency for two short functions.

Deviations from the paper: one query per example (our training uses no data
augmentation, so the paper's augmented queries do not apply); Gaussian means are
means (the paper's code uses medians); the global variance is the pooled variance
of φ around each example's own mean, separately for IN and OUT.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import stats
from sklearn.metrics import roc_curve
from torch import nn

from fl_app.data import Split
from fl_app.task import to_tensors

TrainFn = Callable[[Split, int], nn.Module]
"""Trains a fresh model on a split with a seed, the way the target was trained."""

GLOBAL_VARIANCE_BELOW = 64
"""Shadow-model count under which LiRA fits one variance for all examples, as the paper advises."""


@torch.no_grad()
def _logits(model: nn.Module, split: Split) -> torch.Tensor:
    x, _ = to_tensors(split)
    model.eval()
    return model(x).double()


def loss_threshold_scores(model: nn.Module, split: Split) -> np.ndarray:
    """Return the loss-threshold attack score of each example: its negative loss.

    Parameters
    ----------
    model : nn.Module
        The published model.
    split : Split
        The examples to score.

    Returns
    -------
    np.ndarray
        ``-cross_entropy`` per example; higher means "more likely a member" (Yeom et al.).
    """
    _, y = to_tensors(split)
    loss = nn.functional.cross_entropy(_logits(model, split), y, reduction="none")
    return (-loss).numpy()


def logit_confidence(model: nn.Module, split: Split) -> np.ndarray:
    """Return φ = log(p_y / (1 - p_y)) of the true class ``y`` for each example.

    Computed stably from the logits ``z`` as ``z_y - logsumexp_{j != y} z_j``, which is
    exactly ``log p_y - log(1 - p_y)`` without rounding ``p_y`` to 1.
    """
    logits = _logits(model, split)
    _, y = to_tensors(split)
    true = logits.gather(1, y[:, None])[:, 0]
    others = logits.scatter(1, y[:, None], float("-inf"))
    return (true - torch.logsumexp(others, dim=1)).numpy()


def _concat(first: Split, second: Split | None) -> Split:
    if second is None or len(second) == 0:
        return first
    return Split(np.concatenate([first.x, second.x]), np.concatenate([first.y, second.y]))


def _half_masks(num_shadows: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Return a ``(num_shadows, size)`` mask; each column is True in exactly half the rows."""
    order = rng.random((num_shadows, size)).argsort(axis=0)
    return order < num_shadows // 2


def _take(split: Split, mask: np.ndarray) -> Split:
    return Split(split.x[mask], split.y[mask])


def _gaussian_fit(phi: np.ndarray, mask: np.ndarray, pooled: bool) -> tuple[np.ndarray, np.ndarray]:
    """Return per-example mean and std of ``phi[mask]`` column by column.

    ``phi`` and ``mask`` are ``(shadows, examples)``; ``pooled`` = one std for all
    examples (the pooled within-example variance).
    """
    counts = mask.sum(axis=0)
    if np.any(counts == 0):
        raise ValueError("an example has no shadow model on this side; train more shadows")
    mean = np.where(mask, phi, 0.0).sum(axis=0) / counts
    residual = np.where(mask, phi - mean, 0.0)
    if pooled:
        dof = max(int(counts.sum() - counts.size), 1)
        std = np.full(counts.shape, np.sqrt((residual**2).sum() / dof))
    else:
        std = np.sqrt((residual**2).sum(axis=0) / np.maximum(counts - 1, 1))
    return mean, np.maximum(std, 1e-6)


def lira_scores(
    target: nn.Module,
    candidates: Split,
    train_fn: TrainFn,
    *,
    population: Split | None = None,
    num_shadows: int = 8,
    online: bool = True,
    global_variance: bool | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Return LiRA membership scores of ``candidates`` against ``target``.

    Parameters
    ----------
    target : nn.Module
        The published model.
    candidates : Split
        Examples to score.
    train_fn : Callable[[Split, int], nn.Module]
        Trains a shadow model on a split with a seed, as the target was trained.
    population : Split, optional
        Further data from the same distribution, never scored. Online: shadows train
        on random halves of ``candidates`` + ``population`` (size it so that half of
        it is about the target's training-set size). Offline: shadows train on random
        halves of ``population`` only (required).
    num_shadows : int
        Shadow models; even, at least 2 (online: each candidate is IN for exactly half).
    online : bool
        Online (IN and OUT Gaussians, likelihood ratio) or offline (OUT only).
    global_variance : bool, optional
        One variance for all examples; default: when ``num_shadows < 64``.
    seed : int
        Seeds the shadow data splits and the shadow training.

    Returns
    -------
    np.ndarray
        One score per candidate; higher means "more likely a member". Online: the log
        likelihood ratio; offline: ``log Pr[Z < φ]``, ``Z ~ N(μ_out, σ_out²)``.
    """
    if num_shadows < 2 or num_shadows % 2:
        raise ValueError(f"num_shadows must be even and >= 2, got {num_shadows}")
    if not online and (population is None or len(population) < 2):
        raise ValueError("offline LiRA trains shadows on population data: pass population")
    pooled = num_shadows < GLOBAL_VARIANCE_BELOW if global_variance is None else global_variance
    rng = np.random.default_rng(seed)
    pool = _concat(candidates, population) if online else population
    assert pool is not None
    keep = _half_masks(num_shadows, len(pool), rng)
    phi = np.empty((num_shadows, len(candidates)))
    for index in range(num_shadows):
        shadow = train_fn(_take(pool, keep[index]), seed * 1_000 + index)
        phi[index] = logit_confidence(shadow, candidates)
    observed = logit_confidence(target, candidates)
    if online:
        is_in = keep[:, : len(candidates)]
        mean_in, std_in = _gaussian_fit(phi, is_in, pooled)
        mean_out, std_out = _gaussian_fit(phi, ~is_in, pooled)
        return stats.norm.logpdf(observed, mean_in, std_in) - stats.norm.logpdf(
            observed, mean_out, std_out
        )
    mean_out, std_out = _gaussian_fit(phi, np.ones_like(phi, dtype=bool), pooled)
    return stats.norm.logcdf(observed, mean_out, std_out)


@dataclass(frozen=True)
class MembershipResult:
    """How well scores separate members from non-members.

    ``auc_low``/``auc_high`` is a bootstrap percentile interval (members and
    non-members resampled separately); TPRs are read off the exact ROC.
    """

    auc: float
    auc_low: float
    auc_high: float
    confidence: float
    tpr_at_0_1pct_fpr: float
    tpr_at_1pct_fpr: float
    num_members: int
    num_nonmembers: int

    def to_dict(self) -> dict[str, float | int]:
        """Return the result as plain JSON types."""
        return asdict(self)


def tpr_at_fpr(member_scores: np.ndarray, nonmember_scores: np.ndarray, fpr: float) -> float:
    """Return the highest TPR of a threshold ``score >= t`` whose FPR is at most ``fpr``.

    Read exactly off the ROC (every threshold, no interpolation). With ``n``
    non-members an FPR below ``1 / n`` means no false positive at all.
    """
    labels, scores = _labelled(member_scores, nonmember_scores)
    fprs, tprs, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(tprs[fprs <= fpr + 1e-12].max())


def _labelled(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    if members.size == 0 or nonmembers.size == 0:
        raise ValueError("need at least one member and one non-member score")
    if not (np.all(np.isfinite(members)) and np.all(np.isfinite(nonmembers))):
        raise ValueError("membership scores must be finite")
    labels = np.r_[np.ones(members.size), np.zeros(nonmembers.size)]
    return labels, np.r_[members, nonmembers]


def _auc_rows(members: np.ndarray, nonmembers: np.ndarray) -> np.ndarray:
    """Return the ROC AUC of each row (Mann-Whitney U with average ranks for ties)."""
    n1, n0 = members.shape[-1], nonmembers.shape[-1]
    ranks = stats.rankdata(np.concatenate([members, nonmembers], axis=-1), axis=-1)
    return (ranks[..., :n1].sum(axis=-1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def roc_summary(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    *,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> MembershipResult:
    """Summarise attack scores: ROC AUC with a bootstrap interval, TPR at 0.1% and 1% FPR.

    Parameters
    ----------
    member_scores, nonmember_scores : np.ndarray
        Scores of members and non-members; higher means "more likely a member".
    bootstrap : int
        Bootstrap resamples for the AUC interval.
    confidence : float
        Coverage of the percentile interval.
    seed : int
        Seeds the resampling.
    """
    members = np.asarray(member_scores, float)
    nonmembers = np.asarray(nonmember_scores, float)
    _labelled(members, nonmembers)
    rng = np.random.default_rng(seed)
    resampled = _auc_rows(
        members[rng.integers(0, members.size, (bootstrap, members.size))],
        nonmembers[rng.integers(0, nonmembers.size, (bootstrap, nonmembers.size))],
    )
    tail = (1 - confidence) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail])
    return MembershipResult(
        auc=float(_auc_rows(members, nonmembers)),
        auc_low=float(low),
        auc_high=float(high),
        confidence=confidence,
        tpr_at_0_1pct_fpr=tpr_at_fpr(members, nonmembers, 0.001),
        tpr_at_1pct_fpr=tpr_at_fpr(members, nonmembers, 0.01),
        num_members=int(members.size),
        num_nonmembers=int(nonmembers.size),
    )
