"""One-run privacy auditing of DP-SGD: an empirical lower bound on ε to test a claim.

T. Steinke, M. Nasr, M. Jagielski, "Privacy Auditing with One (1) Training Run",
NeurIPS 2023 (arXiv:2305.08846). Adversary/auditor: controls ``m`` canaries, each
included in training independently with probability ½, and observes the training's
output; in the white-box setting used here (the paper's federated-learning setting) the
canaries are gradients and the auditor sees the model weights, as a federated server
does. After training it scores every canary, guesses "in" for the ``k+`` highest
scores and "out" for the ``k-`` lowest and abstains on the rest. If ``v`` of its ``r``
guesses are right, an (ε, δ)-DP training run allows this only with probability at most

    p(ε, δ) = β + 2 m δ · α,
    β = P[Binomial(r, q) >= v],  q = e^ε / (1 + e^ε),
    α = max_{i = 1..v} P[v - i <= Binomial(r, q) < v] / i,

the paper's main result for approximate DP (Theorem 5.2, in the form of Corollary
5.4, of arXiv:2305.08846v1; for δ = 0 only the binomial tail β remains, their pure-DP
main theorem), evaluated exactly as their Appendix D code ``p_value_DP_audit`` does. The
lower bound is the largest ε rejected at the chosen confidence, ``p(ε, δ) < 1 -
confidence`` (their ``get_eps_audit``; root found here by Brent's method instead of
bisection). Check: the paper's worked examples, (m, r, v, δ) = (1000, 100, 75, 1e-4)
-> 0.673 and (100000, 1510, 1439, 1e-5) -> 2.675 at 95 %, are reproduced (tests).

The audited training is the project's MLP with Opacus DP-SGD through
:func:`privacy.dp.make_private`. Canaries are the paper's "Dirac" gradient canaries:
canary ``i`` is a per-sample gradient of norm C on one coordinate, Poisson-sampled into
each batch with the data's sample rate and then clipped and noised by Opacus like any
example. The coordinates are first-layer weights of the input features that are
(almost) always zero in the data, so the real examples leave them (nearly) untouched
and the score, the descent ``w_0 - w_T`` along the canary's coordinate (the sum of all
updates along it), sees only the canary and the noise. An included canary that Poisson
sampling never picked leaves no trace, so by default only "in" guesses are made
(``k- = 0``). The claim is ε of Opacus' RDP accountant for (σ_claimed, q, steps, δ);
the bug simulated by ``noise_multiplier_applied != claimed_noise_multiplier`` is an
optimizer that adds noise other than the configured one.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy import optimize, stats
from torch.utils.data import DataLoader, TensorDataset

from fl_app.data import Split, server_split
from fl_app.model import build_model
from privacy.accounting import epsilon_of
from privacy.dp import PrivacyBudget, make_private, quiet_opacus


def draw_inclusion(num_canaries: int, rng: np.random.Generator) -> np.ndarray:
    """Return which canaries are included: independent fair coins (bool array)."""
    if num_canaries < 1:
        raise ValueError(f"need at least one canary, got {num_canaries}")
    return rng.random(num_canaries) < 0.5


def make_guesses(scores: np.ndarray, k_plus: int, k_minus: int = 0) -> np.ndarray:
    """Return guesses: +1 ("in") for the ``k_plus`` highest scores, -1 for the ``k_minus`` lowest.

    All other canaries get 0 (abstain). Ties are broken by position (stable sort), so
    the guesses depend on the scores only, never on the inclusion.
    """
    scores = np.asarray(scores, float)
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > scores.size:
        raise ValueError(
            f"need 0 <= k_plus, k_minus and k_plus + k_minus <= {scores.size}, "
            f"got {k_plus}, {k_minus}"
        )
    order = np.argsort(-scores, kind="stable")
    guesses = np.zeros(scores.size, dtype=np.int8)
    guesses[order[:k_plus]] = 1
    if k_minus:
        guesses[order[-k_minus:]] = -1
    return guesses


def count_correct(guesses: np.ndarray, included: np.ndarray) -> tuple[int, int]:
    """Return ``(r, v)``: guesses made (non-abstentions) and correct guesses."""
    guesses = np.asarray(guesses)
    truth = np.where(np.asarray(included, bool), 1, -1)
    made = guesses != 0
    return int(made.sum()), int((guesses[made] == truth[made]).sum())


def p_value(
    num_canaries: int, num_guesses: int, num_correct: int, epsilon: float, delta: float
) -> float:
    """Return the bound on P[>= v correct of r guesses] under (ε, δ)-DP with m canaries.

    ``β + 2 m δ α`` with ``β`` the binomial tail and ``α`` the largest average of the
    binomial mass just below ``v`` (module docstring; Steinke et al. Appendix D).
    """
    m, r, v = num_canaries, num_guesses, num_correct
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct <= guesses <= canaries, got {v}, {r}, {m}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    q = 1.0 / (1.0 + math.exp(-epsilon)) if epsilon < 700 else 1.0
    beta = float(stats.binom.sf(v - 1, r, q))
    if delta == 0 or v == 0:
        return min(beta, 1.0)
    below = np.arange(1, v + 1)
    mass = stats.binom.cdf(v - 1, r, q) - stats.binom.cdf(v - below - 1, r, q)
    alpha = float(np.max(mass / below))
    return min(beta + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(
    num_guesses: int,
    num_correct: int,
    delta: float,
    confidence: float = 0.95,
    *,
    num_canaries: int | None = None,
) -> float:
    """Return the largest ε that ``v`` correct of ``r`` guesses refute at ``confidence``.

    Parameters
    ----------
    num_guesses : int
        ``r``, guesses made (abstentions excluded).
    num_correct : int
        ``v``, correct guesses.
    delta : float
        δ of the (ε, δ) claim under test.
    confidence : float
        1 minus the allowed probability that the bound overstates ε (0.95: p < 0.05).
    num_canaries : int, optional
        ``m``, all canaries including abstentions; enters the δ term. Default: ``r``
        (no abstention). Passing a smaller ``m`` than the real one overstates the bound.

    Returns
    -------
    float
        0 when no ε > 0 is refuted, else ε with ``p_value(m, r, v, ε, δ) = 1 - confidence``.
    """
    m = num_guesses if num_canaries is None else num_canaries
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    level = 1 - confidence
    if p_value(m, num_guesses, num_correct, 0.0, delta) >= level:
        return 0.0

    def excess(eps: float) -> float:
        return p_value(m, num_guesses, num_correct, eps, delta) - level

    high = 1.0
    while excess(high) < 0:
        high *= 2
        if high > 512:
            return math.inf
    root = optimize.brentq(excess, 0.0, high, xtol=1e-9, rtol=1e-12)
    return float(max(0.0, root - 1e-9))


@dataclass(frozen=True)
class AuditResult:
    """An audit of DP-SGD: the empirical lower bound against the claimed ε."""

    epsilon_lower_bound: float
    claimed_epsilon: float
    delta: float
    confidence: float
    num_canaries: int
    num_guesses: int
    num_correct: int
    noise_multiplier_applied: float
    claimed_noise_multiplier: float
    sample_rate: float
    steps: int
    seconds: float

    @property
    def violated(self) -> bool:
        """True when the audit refutes the claim: lower bound above the claimed ε."""
        return self.epsilon_lower_bound > self.claimed_epsilon

    def to_dict(self) -> dict[str, Any]:
        """Return the result as plain JSON types."""
        return {**asdict(self), "violated": self.violated}


def judge(
    guesses: np.ndarray,
    included: np.ndarray,
    *,
    mechanism: tuple[float, float, float, int],
    accountant: str,
    delta: float,
    confidence: float,
    started: float,
) -> AuditResult:
    """Score the guesses and set the lower bound they give against the claimed ε.

    ``mechanism`` is ``(z applied, z claimed, q, steps)``; the claim is ε of
    ``accountant`` over ``[(z claimed, q, steps)]`` at ``delta``.
    """
    applied, claimed_z, sample_rate, steps = mechanism
    r, v = count_correct(guesses, included)
    m = len(included)
    return AuditResult(
        epsilon_lower_bound=epsilon_lower_bound(r, v, delta, confidence, num_canaries=m),
        claimed_epsilon=epsilon_of(accountant, [(claimed_z, sample_rate, steps)], delta),
        delta=delta,
        confidence=confidence,
        num_canaries=m,
        num_guesses=r,
        num_correct=v,
        noise_multiplier_applied=applied,
        claimed_noise_multiplier=claimed_z,
        sample_rate=sample_rate,
        steps=steps,
        seconds=time.perf_counter() - started,
    )


def canary_coordinates(x: np.ndarray, hidden: int, num_canaries: int) -> np.ndarray:
    """Return flat indices into the MLP's first weight ``(hidden, features)`` for canaries.

    Takes whole columns of the least active input features (fewest non-zero values,
    then smallest mean magnitude), so that real examples barely move these weights.
    """
    flat = np.abs(x.reshape(len(x), -1))
    features = flat.shape[1]
    if num_canaries > hidden * features:
        raise ValueError(f"at most {hidden * features} canaries fit, got {num_canaries}")
    activity = np.lexsort((flat.mean(axis=0), (flat > 0).mean(axis=0)))
    columns = activity[: math.ceil(num_canaries / hidden)]
    rows = np.arange(hidden)
    coordinates = (rows[:, None] * features + columns[None, :]).T.ravel()
    return coordinates[:num_canaries]


def audit_dp_sgd(
    noise_multiplier_applied: float,
    claimed_noise_multiplier: float,
    *,
    num_canaries: int = 640,
    k_plus: int | None = None,
    k_minus: int = 0,
    delta: float = 1e-5,
    confidence: float = 0.95,
    batch_size: int = 32,
    epochs: int = 1,
    learning_rate: float = 0.1,
    max_grad_norm: float = 1.0,
    data: Split | None = None,
    rng: np.random.Generator | None = None,
) -> AuditResult:
    """Audit Opacus DP-SGD on the project's MLP with white-box gradient canaries.

    Parameters
    ----------
    noise_multiplier_applied : float
        σ the optimizer really adds (0 = the bug "no noise").
    claimed_noise_multiplier : float
        σ the run is configured and accounted with.
    num_canaries : int
        ``m`` Dirac gradient canaries (at most 64 x features).
    k_plus, k_minus : int
        "In" and "out" guesses; ``k_plus`` defaults to ``m / 4``, fewer than the about
        ``0.32 m`` included canaries that one epoch of Poisson sampling picks at least once.
    delta, confidence : float
        The δ of the claim and the confidence of the lower bound.
    batch_size, epochs, learning_rate, max_grad_norm
        DP-SGD settings: sample rate ``q = 1 / ceil(N / batch_size)``, plain SGD.
    data : Split, optional
        Training data; default: the digits client pool (80 %).
    rng : np.random.Generator, optional
        Draws the inclusion coins and seeds sampling, noise and initial weights.

    Returns
    -------
    AuditResult
        The lower bound, the claimed ε, and the counts behind them.
    """
    started = time.perf_counter()
    rng = rng if rng is not None else np.random.default_rng(0)
    data = data if data is not None else server_split("digits", 0.2, 0)[0]
    included = draw_inclusion(num_canaries, rng)
    seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=4)]
    with torch.random.fork_rng():
        torch.manual_seed(seeds[0])
        model = build_model("mlp", tuple(data.x.shape[1:]), int(data.y.max()) + 1)
    first = next(p for p in model.parameters() if p.ndim == 2)
    hidden = first.shape[0]
    coordinates = canary_coordinates(data.x, hidden, num_canaries)
    start_weights = first.detach().flatten()[coordinates].clone()

    loader = DataLoader(
        TensorDataset(torch.from_numpy(data.x), torch.from_numpy(data.y)),
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(seeds[1]),
    )
    budget = PrivacyBudget(
        target_epsilon=0.0,
        delta=delta,
        noise_multiplier=claimed_noise_multiplier,
        max_grad_norm=max_grad_norm,
    )
    training = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=learning_rate),
        loader,
        budget,
        epochs=epochs,
        grad_sample_mode="hooks",
        noise_seed=seeds[2],
    )
    training.optimizer.noise_multiplier = noise_multiplier_applied
    params = [p for p in training.module.parameters() if p.requires_grad]
    first_private = next(p for p in params if p.ndim == 2)
    canary_rows = _canary_gradients(params, first_private, coordinates, max_grad_norm)
    members = torch.from_numpy(np.flatnonzero(included))
    sampler = torch.Generator().manual_seed(seeds[3])
    steps = 0
    training.module.train()
    with quiet_opacus():
        for _ in range(epochs):
            for x, y in training.data_loader:
                training.optimizer.zero_grad(set_to_none=True)
                loss = training.criterion(training.module(x), y)
                loss.backward()
                picked = members[torch.rand(len(members), generator=sampler) < training.sample_rate]
                for p, rows in zip(params, canary_rows, strict=True):
                    seen = getattr(p, "grad_sample", None)  # None after an empty batch
                    extra = rows[picked]
                    p.grad_sample = extra if seen is None else torch.cat([seen, extra])
                training.optimizer.step()
                steps += 1
    trained = training.plain_state_dict()
    name = next(k for k, v in trained.items() if v.ndim == 2)
    scores = (start_weights - trained[name].flatten()[coordinates]).numpy()
    training.close()

    k_plus = num_canaries // 4 if k_plus is None else k_plus
    return judge(
        make_guesses(scores, k_plus, k_minus),
        included,
        mechanism=(noise_multiplier_applied, claimed_noise_multiplier, training.sample_rate, steps),
        accountant="rdp",
        delta=delta,
        confidence=confidence,
        started=started,
    )


def _canary_gradients(
    params: list[torch.nn.Parameter],
    first: torch.nn.Parameter,
    coordinates: np.ndarray,
    norm: float,
) -> list[torch.Tensor]:
    """Return, per parameter, the per-sample gradient rows of all canaries.

    Canary ``i`` is ``norm`` at ``coordinates[i]`` of the first weight, zero elsewhere.
    """
    count = len(coordinates)
    rows = []
    for p in params:
        block = torch.zeros((count, p.numel()), dtype=p.dtype)
        if p is first:
            block[torch.arange(count), torch.from_numpy(coordinates)] = norm
        rows.append(block.view(count, *p.shape))
    return rows


def client_level_canary_scores(
    noise_multiplier: float,
    *,
    sample_rate: float,
    rounds: int,
    num_clients: int,
    num_canaries: int,
    clipping_norm: float = 1.0,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Run client-level DP's rounds with Dirac canary clients; return scores and inclusion.

    See :func:`audit_client_level`. Returns the global model's total move along each
    canary's coordinate, and which canaries were included (connected).
    """
    from privacy.client_level import clip_delta, noisy_mean_delta, poisson_sample

    if rounds < 1 or num_clients < 0 or not 0 < sample_rate <= 1:
        raise ValueError(
            f"need rounds >= 1, num_clients >= 0 and 0 < sample_rate <= 1, got {rounds}, "
            f"{num_clients}, {sample_rate}"
        )
    included = draw_inclusion(num_canaries, rng)
    canaries = np.flatnonzero(included)
    population = num_clients + len(canaries)  # the connected clients: others, then canaries
    expected_clients = sample_rate * population
    start = np.zeros(num_canaries, dtype=np.float32)
    current = start.copy()
    for _ in range(rounds):
        clipped = []
        for client in poisson_sample(population, sample_rate, rng):
            update = current.astype(np.float64)
            if client >= num_clients:
                update[canaries[client - num_clients]] += 2.0 * clipping_norm
            clipped.append(clip_delta([update], [current], clipping_norm)[0])
        mean = noisy_mean_delta(
            clipped, [current], expected_clients, noise_multiplier * clipping_norm, rng
        )
        current = (current.astype(np.float64) + mean[0]).astype(np.float32)
    return (current - start).astype(np.float64), included


def audit_client_level(
    noise_multiplier_applied: float,
    claimed_noise_multiplier: float,
    *,
    sample_rate: float,
    rounds: int,
    num_clients: int,
    clipping_norm: float = 1.0,
    delta: float = 1e-5,
    accountant: str = "rdp",
    num_canaries: int = 2000,
    k_plus: int | None = None,
    confidence: float = 0.95,
    rng: np.random.Generator | None = None,
) -> AuditResult:
    """Audit client-level DP (``dp = "central"``) with Dirac canary clients.

    The mechanism is the one :class:`fl_app.dp.central.CentralDP` runs each round,
    through the same functions of :mod:`privacy.client_level`: Poisson sampling of the
    connected clients with rate ``q`` (:func:`~privacy.client_level.poisson_sample`),
    each update clipped to ``C`` (:func:`~privacy.client_level.clip_delta`), the sum
    divided by the expected clients ``q N`` plus Gaussian noise of std ``z C / (q N)``
    (:func:`~privacy.client_level.noisy_mean_delta`), added to the global model.

    Canaries: ``m`` extra clients, each connected (included) with probability ½. Canary
    ``i``'s update is ``2 C`` on coordinate ``i`` and 0 elsewhere (a Dirac; twice the
    clipping norm, so that missing clipping would show); the ``num_clients`` other
    clients send a zero update, which DP must hold for whatever the others send. Only
    the ``m`` canary coordinates are simulated: the other coordinates carry no canary
    signal, and clipping, sampling and noise are per client and per coordinate. The
    score of canary ``i`` is the global model's total move along coordinate ``i``; the
    auditor guesses "in" for the ``k_plus`` highest scores (default: a quarter of the
    included canaries that sampling is expected to pick at least once, a number that
    depends on ``q``, ``rounds`` and ``m`` only, never on the coins). The claim is ε of
    the accountant for ``[(z_claimed, q, rounds)]`` at ``delta``, as the server reports it.

    Parameters
    ----------
    noise_multiplier_applied : float
        ``z`` the aggregation really uses (0 = the bug "no noise").
    claimed_noise_multiplier : float
        ``z`` the run is accounted with.
    sample_rate, rounds, num_clients : float, int, int
        The run's ``q`` (``fraction-train``), rounds and clients.
    clipping_norm, delta, accountant
        The run's ``C``, δ and accountant.
    num_canaries, k_plus, confidence
        ``m``, the "in" guesses and the confidence of the lower bound.
    rng : np.random.Generator, optional
        Draws the inclusion coins, the sampling and the noise.
    """
    started = time.perf_counter()
    rng = rng if rng is not None else np.random.default_rng(0)
    scores, included = client_level_canary_scores(
        noise_multiplier_applied,
        sample_rate=sample_rate,
        rounds=rounds,
        num_clients=num_clients,
        num_canaries=num_canaries,
        clipping_norm=clipping_norm,
        rng=rng,
    )

    picked_once = 1.0 - (1.0 - sample_rate) ** rounds
    k_plus = max(1, int(num_canaries / 2 * picked_once / 4)) if k_plus is None else k_plus
    return judge(
        make_guesses(scores, k_plus),
        included,
        mechanism=(noise_multiplier_applied, claimed_noise_multiplier, sample_rate, rounds),
        accountant=accountant,
        delta=delta,
        confidence=confidence,
        started=started,
    )
