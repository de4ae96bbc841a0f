"""The privacy-audit attack library: membership inference, gradient inversion, canaries."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.datasets import load_digits

from fl_app.data import Split
from fl_app.model import build_model
from fl_app.task import full_batch_gradient, train
from privacy.he import encrypt_arrays, generate_key
from tools.audit.canary import (
    audit_client_level,
    audit_dp_sgd,
    client_level_canary_scores,
    count_correct,
    draw_inclusion,
    epsilon_lower_bound,
    make_guesses,
    p_value,
)
from tools.audit.inversion import (
    CIPHERTEXT_PREFIX,
    InversionResult,
    NothingToInvert,
    invert_update,
    match_to_real,
    psnr,
    save_grid,
    ssim,
)
from tools.audit.membership import (
    lira_scores,
    logit_confidence,
    loss_threshold_scores,
    roc_summary,
    tpr_at_fpr,
)

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Time the attacks as on one CPU thread; other modules get their threads back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> Split:
    """All 1,797 digits, shuffled once (x in [0, 1], shaped like the model input)."""
    bunch = load_digits()
    order = np.random.default_rng(0).permutation(len(bunch.target))
    x = (bunch.images / 16.0)[:, None, :, :].astype(np.float32)[order]
    return Split(np.ascontiguousarray(x), bunch.target.astype(np.int64)[order])


def _part(data: Split, start: int, stop: int) -> Split:
    return Split(data.x[start:stop], data.y[start:stop])


def _join(*parts: Split) -> Split:
    return Split(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))


def _overfit(split: Split, seed: int) -> torch.nn.Module:
    """The shadow and target recipe: the project's MLP, far too many epochs for 50 examples."""
    torch.manual_seed(seed)
    model = build_model("mlp", SHAPE, 10)
    train(model, split, epochs=150, batch_size=25, learning_rate=0.1, momentum=0.9, seed=seed)
    return model


# --------------------------------------------------------------------------- membership


def test_roc_summary_on_a_hand_made_case() -> None:
    members = np.array([5.0, 4.0, 3.0, 2.0])
    nonmembers = np.array([3.5, 1.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0])
    # threshold above 3.5: no false positive, 2 of 4 members; down to 2: 1 of 10 FP, all 4
    assert tpr_at_fpr(members, nonmembers, 0.0) == 0.5
    assert tpr_at_fpr(members, nonmembers, 0.01) == 0.5
    assert tpr_at_fpr(members, nonmembers, 0.1) == 1.0
    result = roc_summary(members, nonmembers, bootstrap=500, seed=1)
    assert result.auc == pytest.approx(38 / 40)  # 3.5 beats two members of 40 pairs
    assert result.tpr_at_0_1pct_fpr == 0.5 and result.tpr_at_1pct_fpr == 0.5
    assert result.auc_low <= result.auc <= result.auc_high <= 1.0
    assert result.to_dict() == roc_summary(members, nonmembers, bootstrap=500, seed=1).to_dict()
    assert set(result.to_dict()) >= {"auc", "auc_low", "auc_high", "tpr_at_1pct_fpr"}
    tied = roc_summary(np.zeros(5), np.zeros(7), bootstrap=50)
    assert tied.auc == 0.5 and tied.tpr_at_1pct_fpr == 0.0


def test_logit_confidence_is_the_logit_of_the_true_class_probability(digits: Split) -> None:
    torch.manual_seed(0)
    model = build_model("mlp", SHAPE, 10)
    split = _part(digits, 0, 20)
    with torch.no_grad():
        p = torch.softmax(model(torch.from_numpy(split.x)).double(), dim=1)
    p_true = p[torch.arange(20), torch.from_numpy(split.y)].numpy()
    np.testing.assert_allclose(logit_confidence(model, split), np.log(p_true / (1 - p_true)))
    np.testing.assert_allclose(loss_threshold_scores(model, split), np.log(p_true), rtol=1e-6)


@pytest.fixture(scope="module")
def overfit_target(digits: Split) -> tuple[torch.nn.Module, Split, Split]:
    members, nonmembers = _part(digits, 0, 50), _part(digits, 50, 100)
    return _overfit(members, seed=1), members, nonmembers


def test_overfit_model_gives_its_members_away(
    overfit_target: tuple[torch.nn.Module, Split, Split], digits: Split
) -> None:
    target, members, nonmembers = overfit_target
    loss = roc_summary(
        loss_threshold_scores(target, members), loss_threshold_scores(target, nonmembers)
    )
    assert loss.auc > 0.7 and loss.auc_low > 0.6  # measured 0.82 [0.71, 0.90]

    candidates = _join(members, nonmembers)
    online = lira_scores(target, candidates, _overfit, num_shadows=8, seed=2)
    lira = roc_summary(online[:50], online[50:])
    assert lira.auc > 0.75 and lira.auc_low > 0.65  # measured 0.85 [0.77, 0.92]
    assert lira.tpr_at_1pct_fpr > 0.15  # measured 0.36, loss attack 0.06: the paper's point

    offline = lira_scores(
        target, candidates, _overfit, population=_part(digits, 100, 200), online=False, seed=3
    )
    assert roc_summary(offline[:50], offline[50:]).auc > 0.65  # measured 0.78


def test_a_model_that_never_saw_the_members_scores_chance(
    overfit_target: tuple[torch.nn.Module, Split, Split], digits: Split
) -> None:
    target = overfit_target[0]
    members, nonmembers = _part(digits, 200, 500), _part(digits, 500, 800)  # both unseen
    loss = roc_summary(
        loss_threshold_scores(target, members), loss_threshold_scores(target, nonmembers)
    )
    assert 0.4 < loss.auc < 0.6
    assert loss.auc_low < 0.5 < loss.auc_high
    scores = lira_scores(
        target,
        _join(members, nonmembers),
        _overfit,
        population=_part(digits, 100, 200),
        online=False,
        seed=4,
    )
    lira = roc_summary(scores[:300], scores[300:])
    assert 0.4 < lira.auc < 0.6


def test_lira_rejects_what_it_cannot_fit(digits: Split) -> None:
    model = build_model("mlp", SHAPE, 10)
    with pytest.raises(ValueError, match="even"):
        lira_scores(model, _part(digits, 0, 4), _overfit, num_shadows=3)
    with pytest.raises(ValueError, match="population"):
        lira_scores(model, _part(digits, 0, 4), _overfit, online=False)


# ------------------------------------------------------------------------------ canary


def test_epsilon_lower_bound_reproduces_the_papers_examples() -> None:
    # Steinke, Nasr & Jagielski (arXiv:2305.08846v1): Appendix D's example and §7's
    assert epsilon_lower_bound(100, 75, 1e-4, num_canaries=1000) == pytest.approx(0.673, abs=1e-3)
    bound = epsilon_lower_bound(1510, 1439, 1e-5, num_canaries=100_000)
    assert bound == pytest.approx(2.6758, abs=1e-3)


def test_epsilon_lower_bound_known_answers_and_monotonicity() -> None:
    assert epsilon_lower_bound(100, 0, 0.0) == 0.0  # all wrong
    assert epsilon_lower_bound(0, 0, 1e-5) == 0.0  # no guess
    assert epsilon_lower_bound(100, 50, 0.0) == 0.0  # chance
    # all correct, delta = 0: q^r = 0.05 exactly, so eps = logit(0.05^(1/r))
    for r in (10, 100):
        q = 0.05 ** (1 / r)
        assert epsilon_lower_bound(r, r, 0.0) == pytest.approx(math.log(q / (1 - q)), abs=1e-6)
    all_correct = [epsilon_lower_bound(r, r, 1e-5, num_canaries=1000) for r in (10, 30, 100, 1000)]
    assert all_correct == sorted(all_correct) and all_correct[0] > 0
    by_correct = [epsilon_lower_bound(200, v, 1e-5, num_canaries=1000) for v in range(90, 201, 10)]
    assert all(a <= b for a, b in itertools.pairwise(by_correct))
    assert by_correct[-1] > by_correct[3] > 0
    # more delta, more canaries or more confidence can only lower the bound
    assert epsilon_lower_bound(200, 180, 1e-3, num_canaries=1000) < epsilon_lower_bound(
        200, 180, 1e-6, num_canaries=1000
    )
    assert epsilon_lower_bound(200, 180, 1e-4, num_canaries=10_000) < epsilon_lower_bound(
        200, 180, 1e-4, num_canaries=200
    )
    assert epsilon_lower_bound(200, 180, 0.0, confidence=0.99) < epsilon_lower_bound(
        200, 180, 0.0, confidence=0.9
    )
    # at the bound, the p-value is the significance level
    eps = epsilon_lower_bound(200, 180, 1e-5, num_canaries=500)
    assert p_value(500, 200, 180, eps, 1e-5) == pytest.approx(0.05, abs=1e-6)
    with pytest.raises(ValueError):
        epsilon_lower_bound(10, 11, 0.0)


def test_epsilon_lower_bound_is_valid_for_randomized_response() -> None:
    """ε = 2 randomized response on every canary: the bound may exceed 2 only 5 % of the time."""
    epsilon, m = 2.0, 1000
    q = math.exp(epsilon) / (1 + math.exp(epsilon))
    rng = np.random.default_rng(7)
    bounds = []
    for _ in range(200):
        included = draw_inclusion(m, rng)
        answer = np.where(rng.random(m) < q, included, ~included)  # the mechanism's output
        r, v = count_correct(np.where(answer, 1, -1), included)
        bounds.append(epsilon_lower_bound(r, v, 1e-6, num_canaries=m))
    bounds_array = np.array(bounds)
    assert np.mean(bounds_array <= epsilon) >= 0.95
    assert np.median(bounds_array) > 1.5 and np.mean(bounds_array > 0.5) > 0.95
    # and exactly: the probability of v correct guesses whose bound exceeds ε is <= 5 %
    v_all = np.arange(800, 950)
    too_high = [v for v in v_all if epsilon_lower_bound(m, int(v), 0.0) > epsilon]
    assert stats.binom.pmf(too_high, m, q).sum() <= 0.05


def test_guesses_abstain_on_all_but_the_most_confident() -> None:
    scores = np.array([0.9, -2.0, 0.1, 3.0, -0.5, 0.0])
    guesses = make_guesses(scores, k_plus=2, k_minus=1)
    assert guesses.tolist() == [1, -1, 0, 1, 0, 0]
    included = np.array([True, False, True, False, False, True])
    assert count_correct(guesses, included) == (3, 2)
    with pytest.raises(ValueError):
        make_guesses(scores, k_plus=4, k_minus=3)
    first = draw_inclusion(1000, np.random.default_rng(3))
    assert first.tolist() == draw_inclusion(1000, np.random.default_rng(3)).tolist()
    assert 400 < first.sum() < 600


def test_canary_audit_detects_dp_sgd_without_noise() -> None:
    broken = audit_dp_sgd(0.0, 1.0, rng=np.random.default_rng(11))
    assert broken.violated, broken.to_dict()
    assert broken.epsilon_lower_bound > broken.claimed_epsilon + 1.0
    assert broken.num_correct == broken.num_guesses > 0
    assert broken.to_dict()["violated"] is True


def test_canary_audit_of_correct_dp_sgd_stays_below_the_claim() -> None:
    honest = audit_dp_sgd(1.0, 1.0, rng=np.random.default_rng(11))
    assert not honest.violated, honest.to_dict()
    assert 0.0 <= honest.epsilon_lower_bound <= honest.claimed_epsilon
    assert honest.claimed_epsilon == pytest.approx(
        audit_dp_sgd(0.0, 1.0, rng=np.random.default_rng(11)).claimed_epsilon
    )
    assert honest.steps == 45 and honest.num_guesses == 160


def test_client_level_canary_audit_detects_central_dp_without_noise() -> None:
    """Claimed z = 1.0, applied 0.0: the canaries' lower bound exceeds the claimed ε."""
    setting = {"sample_rate": 0.1, "rounds": 10, "num_clients": 10, "delta": 1e-5}
    broken = audit_client_level(0.0, 1.0, **setting, rng=np.random.default_rng(3))
    assert broken.violated, broken.to_dict()
    assert broken.num_correct == broken.num_guesses > 0
    assert broken.epsilon_lower_bound > broken.claimed_epsilon
    honest = audit_client_level(1.0, 1.0, **setting, rng=np.random.default_rng(3))
    assert not honest.violated, honest.to_dict()
    assert 0.0 <= honest.epsilon_lower_bound <= honest.claimed_epsilon
    assert honest.claimed_epsilon == pytest.approx(broken.claimed_epsilon)
    assert honest.steps == 10 and honest.num_canaries == 2000


def test_client_level_canaries_move_by_the_clipped_update_over_the_expected_clients() -> None:
    """Without noise each pick moves a canary by C / (q N), its 2 C update clipped to C."""
    scores, included = client_level_canary_scores(
        0.0, sample_rate=1.0, rounds=3, num_clients=5, num_canaries=40,
        clipping_norm=0.5, rng=np.random.default_rng(2),
    )  # fmt: skip
    expected = 5 + included.sum()
    np.testing.assert_allclose(scores[included], 3 * 0.5 / expected, rtol=1e-5)
    assert np.all(scores[~included] == 0.0)
    noisy, inside = client_level_canary_scores(
        2.0, sample_rate=1.0, rounds=1, num_clients=0, num_canaries=2000,
        rng=np.random.default_rng(4),
    )  # fmt: skip
    # noise on a coordinate of the mean: z C / (q N), N = the included canaries
    assert np.std(noisy[~inside]) * inside.sum() == pytest.approx(2.0, rel=0.1)


# --------------------------------------------------------------------------- inversion


def _one_step_update(
    kind: str, data: Split, seed: int
) -> tuple[torch.nn.Module, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A client's plain reply: one local SGD step (lr 0.05, momentum 0.9) from the global model."""
    torch.manual_seed(seed)
    model = build_model(kind, SHAPE, 10)
    sent = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    train(model, data, epochs=1, batch_size=len(data), learning_rate=0.05, momentum=0.9, seed=0)
    received = {k: v.detach().numpy() - sent[k] for k, v in model.state_dict().items()}
    return build_model(kind, SHAPE, 10), sent, received


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_server_reconstructs_a_digit_from_a_one_step_update(
    kind: str, digits: Split, tmp_path: Path
) -> None:
    real = _part(digits, 3, 4)
    architecture, sent, received = _one_step_update(kind, real, seed=5)
    result = invert_update(
        architecture,
        sent,
        received,
        batch_size=1,
        input_shape=SHAPE,
        learning_rate=0.05,
        real=real.x,
        restarts=2,
        iterations=200,
    )
    assert isinstance(result, InversionResult)
    assert result.labels.tolist() == real.y.tolist()  # recovered by iDLG, not given
    noise = np.random.default_rng(0).random(real.x.shape)
    assert psnr(real.x, noise) < 8 and ssim(real.x[0], noise[0]) < 0.2
    assert result.psnr is not None and result.psnr > 20, result.to_dict()
    assert result.ssim is not None and result.ssim > 0.8, result.to_dict()
    assert result.seconds < 20
    png = save_grid(real.x, result.reconstruction, tmp_path / "grid.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_batch_reconstruction_from_a_gradient_is_matched_to_the_real_examples(
    digits: Split,
) -> None:
    real = _part(digits, 10, 14)
    torch.manual_seed(6)
    model = build_model("mlp", SHAPE, 10)
    sent = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    gradient = full_batch_gradient(model, real)
    result = invert_update(
        model,
        sent,
        gradient,
        batch_size=4,
        input_shape=SHAPE,
        kind="gradient",
        labels=real.y,
        real=real.x,
        restarts=1,
        iterations=300,
    )
    assert isinstance(result, InversionResult)
    assert result.psnr is not None and result.psnr > 15, result.to_dict()
    assert len(result.per_example_psnr or ()) == 4
    with pytest.raises(ValueError, match="batch size 1"):
        invert_update(model, sent, gradient, batch_size=4, input_shape=SHAPE, kind="gradient")


def test_an_encrypted_reply_is_refused_not_scored(digits: Split) -> None:
    architecture, sent, received = _one_step_update("mlp", _part(digits, 3, 4), seed=5)
    ciphertexts = encrypt_arrays(generate_key(), list(received.values()))
    as_record = {
        f"{CIPHERTEXT_PREFIX}{i:05d}": np.frombuffer(c, dtype=np.uint8)
        for i, c in enumerate(ciphertexts)
    }
    for update in (as_record, ciphertexts, ciphertexts[0]):
        result = invert_update(
            architecture, sent, update, batch_size=1, input_shape=SHAPE, learning_rate=0.05
        )
        assert isinstance(result, NothingToInvert)
        assert "nothing to invert" in result.reason and "ciphertexts" in result.reason
        values = result.to_dict().values()
        assert not any(isinstance(v, int | float) for v in values)


def test_image_metrics_and_matching() -> None:
    rng = np.random.default_rng(0)
    images = rng.random((3, 1, 8, 8))
    assert psnr(images[0], images[0]) == math.inf
    assert ssim(images[0], images[0]) == pytest.approx(1.0)
    assert ssim(images[0], 1 - images[0]) < 0
    assert psnr(np.zeros((8, 8)), np.full((8, 8), 0.1)) == pytest.approx(20.0)
    shuffled = images[[2, 0, 1]] + 0.01
    order = match_to_real(images, shuffled)
    np.testing.assert_allclose(shuffled[order], images + 0.01)
