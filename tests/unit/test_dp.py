"""privacy/: DP-SGD with a cumulative accountant, the ledger, client-level DP math (no Flower)."""

import json
import math

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from torch.utils.data import DataLoader, TensorDataset

from fl_app.model import build_model
from privacy.accounting import auto_delta, calibrate_noise, epsilon_of
from privacy.client_level import (
    add_gaussian_noise,
    aggregate_noise_std,
    client_level_epsilon,
    clip_update,
    l2_norm,
)
from privacy.dp import BudgetExceededError, PrivacyBudget, make_private, train_private
from privacy.ledger import LedgerError, LedgerRecord, ledger_path, read_ledger, write_ledger

N, BATCH = 96, 32


def loader(seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(123)
    x = torch.rand(N, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (N,), generator=g)
    return DataLoader(
        TensorDataset(x, y), batch_size=BATCH, generator=torch.Generator().manual_seed(seed)
    )


def session(state, budget, seed=0, epochs=1, kind="mlp"):
    torch.manual_seed(seed)
    model = build_model(kind, (1, 8, 8), 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    training = make_private(
        model, optimizer, loader(seed), budget, state, epochs=epochs, noise_seed=seed
    )
    train_private(training, epochs, max_physical_batch_size=16)
    training.close()
    return training


def independent_epsilon(sigma, q, steps, delta):
    accountant = RDPAccountant()
    accountant.history = [(sigma, q, steps)]
    return accountant.get_epsilon(delta=delta)


def test_cumulative_epsilon_equals_an_independent_opacus_computation():
    budget = PrivacyBudget(target_epsilon=0.0, delta=1e-5, noise_multiplier=1.1)
    state, epsilons = None, []
    for k in range(3):
        training = session(state, budget, seed=k)
        state = json.loads(json.dumps(training.state_dict()))  # what a ledger stores
        epsilons.append(training.epsilon())
    q, per_session = training.sample_rate, training.steps_per_epoch
    assert q == 1 / math.ceil(N / BATCH) and training.steps() == 3 * per_session
    for k, epsilon in enumerate(epsilons, start=1):
        assert epsilon == pytest.approx(
            independent_epsilon(1.1, q, k * per_session, 1e-5), rel=1e-9
        )
    fresh_engine_per_round = independent_epsilon(1.1, q, per_session, 1e-5)
    assert epsilons[-1] > 1.5 * fresh_engine_per_round
    assert epsilons == sorted(epsilons)


def test_restored_accountant_continues_the_same_epsilon_curve():
    budget = PrivacyBudget(target_epsilon=0.0, delta=1e-5, noise_multiplier=0.9)
    uninterrupted = None
    for k in range(3):
        uninterrupted = session(uninterrupted.state_dict() if uninterrupted else None, budget, k)
    first = session(None, budget, 0)
    second = session(first.state_dict(), budget, 1)
    saved = json.dumps(second.state_dict())
    restored = session(json.loads(saved), budget, 2)
    assert restored.epsilon() == uninterrupted.epsilon()
    assert restored.state_dict() == uninterrupted.state_dict()
    assert restored.accountant.get_epsilon(1e-5) == pytest.approx(restored.epsilon())


def test_state_dict_loads_strictly_into_the_plain_model():
    budget = PrivacyBudget(target_epsilon=0.0, delta=1e-5, noise_multiplier=1.0)
    training = session(None, budget, kind="cnn")
    state = training.plain_state_dict()
    assert not any(key.startswith("_module") for key in state)
    plain = build_model("cnn", (1, 8, 8), 10)
    plain.load_state_dict(state, strict=True)
    assert all(torch.equal(plain.state_dict()[k], state[k]) for k in state)


def test_noise_is_calibrated_for_the_whole_plan_and_the_budget_holds():
    q = 1 / math.ceil(N / BATCH)
    planned = 2 * math.ceil(N / BATCH)
    budget = PrivacyBudget(target_epsilon=3.0, delta=1e-5, planned_steps=planned)
    state = None
    for k in range(2):
        training = session(state, budget, seed=k)
        state = training.state_dict()
    assert training.noise_multiplier == calibrate_noise(3.0, 1e-5, q, planned, "rdp")
    assert 2.9 < training.epsilon() <= 3.0
    with pytest.raises(BudgetExceededError, match=r"privacy budget exhausted: epsilon spent 2\.9"):
        session(state, budget, seed=5)
    assert calibrate_noise.cache_info().hits >= 2  # calibrated once, then cached


def test_refused_session_trains_nothing():
    budget = PrivacyBudget(target_epsilon=0.5, delta=1e-5, noise_multiplier=0.5)
    model = build_model("mlp", (1, 8, 8), 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(BudgetExceededError, match=r"> target 0\.5"):
        make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader(), budget)
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)


def test_prv_accountant_is_selectable():
    budget = PrivacyBudget(target_epsilon=0.0, delta=1e-5, noise_multiplier=1.0, accountant="prv")
    training = session(None, budget)
    assert training.state_dict()["mechanism"] == "prv"
    assert 0 < training.epsilon() < epsilon_of("rdp", [(1.0, 1 / 3, 3)], 1e-5) * 1.5


def test_auto_delta_is_below_one_over_n():
    assert auto_delta(144) == 1e-5
    assert auto_delta(1_000_000) == pytest.approx(1e-7)
    assert auto_delta(144) < 1 / 144


def test_ledger_never_loses_spending(tmp_path):
    path = ledger_path(tmp_path, "abc123", "partition-0")
    record = LedgerRecord("abc123", "partition-0", "rdp", 1e-5, 8.0)
    record.history = [[1.0, 0.25, 4]]
    record.sessions = [{"round": 1, "steps": 4}]
    write_ledger(path, record)
    assert read_ledger(path) == record
    stale = LedgerRecord("abc123", "partition-0", "rdp", 1e-5, 8.0)
    with pytest.raises(LedgerError, match="refusing to overwrite"):
        write_ledger(path, stale)
    path.write_text("{broken")
    with pytest.raises(LedgerError, match="unreadable"):
        read_ledger(path)
    assert path.read_text() == "{broken"
    with pytest.raises(ValueError, match="ledger id"):
        ledger_path(tmp_path, "../escape", "partition-0")
    assert sorted(p.name for p in path.parent.iterdir()) == ["partition-0.json"]


def test_clip_update_bounds_the_delta_and_keeps_small_ones():
    reference = [np.zeros((3, 4), np.float32), np.ones(5, np.float32)]
    big = [np.full((3, 4), 2.0, np.float32), np.full(5, 3.0, np.float32)]
    clipped, norm = clip_update(big, reference, 1.5)
    assert norm == pytest.approx(math.sqrt(12 * 4 + 5 * 4))
    delta = [c - r for c, r in zip(clipped, reference, strict=True)]
    assert l2_norm(delta) == pytest.approx(1.5, rel=1e-6)
    assert all(c.dtype == np.float32 for c in clipped)
    small = [r + 0.01 for r in reference]
    same, _ = clip_update(small, reference, 1.5)
    assert all(np.allclose(a, b) for a, b in zip(same, small, strict=True))


def test_aggregate_noise_and_client_level_epsilon():
    assert aggregate_noise_std(1.2, 2.0, [1, 1, 1, 1]) == pytest.approx(1.2 * 2.0 / 4)
    assert aggregate_noise_std(1.0, 1.0, [1, 3]) == pytest.approx(0.75)
    arrays = [np.zeros((200, 50), np.float32), np.arange(3)]
    noisy = add_gaussian_noise(arrays, 0.5, np.random.default_rng(0))
    assert np.std(noisy[0]) == pytest.approx(0.5, rel=0.05)
    assert np.array_equal(noisy[1], arrays[1])
    epsilon = client_level_epsilon(1.1, [(0.5, 10)], 1e-5)
    assert epsilon == pytest.approx(independent_epsilon(1.1, 0.5, 10, 1e-5))
    assert client_level_epsilon(1.1, [(0.5, 20)], 1e-5) > epsilon
