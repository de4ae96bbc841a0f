"""privacy/: DP-SGD with a cumulative accountant, the ledger, client-level DP math (no Flower)."""

import json
import math

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from torch.utils.data import DataLoader, TensorDataset

from fl_app.model import build_model
from privacy import auto_delta
from privacy.accounting import calibrate_noise, epsilon_of
from privacy.client_level import clip_delta, l2_norm, noisy_mean_delta, poisson_sample
from privacy.dp import BudgetExceededError, PrivacyBudget, make_private, train_private
from privacy.ledger import (
    LedgerError,
    LedgerRecord,
    data_fingerprint,
    ledger_path,
    locked_ledger,
    read_ledger,
    write_ledger,
)
from privacy.secrets import SecretError, derive_generator, derive_seed, load_or_create_secret

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


FINGERPRINT = "0123456789abcdef0123456789abcdef"


def test_ledger_never_loses_spending(tmp_path):
    path = ledger_path(tmp_path, FINGERPRINT)
    record = LedgerRecord(FINGERPRINT, [[1.0, 0.25, 4]], {}, [{"round": 1, "steps": 4}])
    write_ledger(path, record)
    assert read_ledger(path) == record
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(LedgerError, match="refusing to overwrite"):
        write_ledger(path, LedgerRecord(FINGERPRINT))
    path.write_text("{broken")
    with pytest.raises(LedgerError, match="unreadable"):
        read_ledger(path)
    assert path.read_text() == "{broken"
    with pytest.raises(ValueError, match="not 32 hexadecimal digits"):
        ledger_path(tmp_path, "../escape")


def test_a_charge_stays_when_the_session_fails(tmp_path):
    path = ledger_path(tmp_path, FINGERPRINT)
    with pytest.raises(RuntimeError, match="crash"), locked_ledger(path) as record:
        record.history.append([1.0, 0.1, 10])
        raise RuntimeError("crash during training")
    assert read_ledger(path).history == [[1.0, 0.1, 10]]


def test_a_fingerprint_names_the_data_and_nothing_else():
    x, y = np.arange(12.0).reshape(3, 4), np.array([0, 1, 2])
    assert data_fingerprint([x, y]) == data_fingerprint([x.copy(), y.copy()])
    assert data_fingerprint([x, y]) != data_fingerprint([x[:2], y[:2]])
    assert data_fingerprint([x, y]) != data_fingerprint([x.astype(np.float32), y])
    assert len(data_fingerprint([x, y])) == 32


def test_secrets_are_private_and_seeds_depend_on_the_nonce(tmp_path):
    path = tmp_path / "state" / "node-secret"
    secret = load_or_create_secret(path)
    assert len(secret) == 32 and load_or_create_secret(path) == secret
    assert path.stat().st_mode & 0o777 == 0o600
    assert derive_seed(secret, b"a", "noise") != derive_seed(secret, b"b", "noise")
    assert derive_seed(secret, b"a", "noise") != derive_seed(secret, b"a", "sampler")
    assert derive_seed(secret, b"a", "noise") == derive_seed(secret, b"a", "noise")
    assert (
        derive_generator(secret, b"a", "x").random() == derive_generator(secret, b"a", "x").random()
    )
    path.chmod(0o644)
    with pytest.raises(SecretError, match="only its owner may read it"):
        load_or_create_secret(path)
    short = tmp_path / "short"
    short.write_bytes(b"x" * 5)
    short.chmod(0o600)
    with pytest.raises(SecretError, match="holds 5 bytes"):
        load_or_create_secret(short)


def test_calibration_continues_a_history_to_land_at_the_target():
    history = ((1.0, 0.1, 30),)
    spent = epsilon_of("rdp", history, 1e-5)
    sigma = calibrate_noise(8.0, 1e-5, 0.1, 50, "rdp", history)
    total = epsilon_of("rdp", [*history, (sigma, 0.1, 50)], 1e-5)
    assert spent < total <= 8.0 and total == pytest.approx(8.0, rel=0.01)
    assert calibrate_noise(8.0, 1e-5, 0.1, 50) < sigma  # less budget left: more noise
    with pytest.raises(ValueError, match="already spent"):
        calibrate_noise(spent / 2, 1e-5, 0.1, 50, "rdp", history)


def test_clipping_bounds_each_delta_and_keeps_small_ones():
    reference = [np.zeros((3, 4), np.float32), np.ones(5, np.float32)]
    big = [np.full((3, 4), 2.0, np.float32), np.full(5, 3.0, np.float32)]
    clipped, norm = clip_delta(big, reference, 1.5)
    assert norm == pytest.approx(math.sqrt(12 * 4 + 5 * 4))
    assert l2_norm(clipped) == pytest.approx(1.5, rel=1e-9)
    small = [r + 0.01 for r in reference]
    same, _ = clip_delta(small, reference, 1.5)
    assert all(np.allclose(a, b - r) for a, b, r in zip(same, small, reference, strict=True))


def test_one_client_moves_the_fixed_denominator_estimate_by_at_most_c_over_m():
    rng = np.random.default_rng(0)
    like = [np.zeros((20, 5), np.float32)]
    others = [clip_delta([rng.normal(size=(20, 5))], like, 1.0)[0] for _ in range(7)]
    outlier = clip_delta([rng.normal(size=(20, 5)) * 1e6], like, 1.0)[0]
    silent = np.random.default_rng(1)
    without = noisy_mean_delta(others, like, 10.0, 0.0, silent)
    with_outlier = noisy_mean_delta([*others, outlier], like, 10.0, 0.0, silent)
    assert l2_norm([a - b for a, b in zip(with_outlier, without, strict=True)]) <= 1.0 / 10 + 1e-12
    noisy = noisy_mean_delta([], [np.zeros((300, 100))], 4.0, 2.0, np.random.default_rng(2))
    assert np.std(noisy[0]) == pytest.approx(2.0 / 4.0, rel=0.02)


def test_poisson_sampling_draws_each_client_independently():
    counts = [len(poisson_sample(1000, 0.3, np.random.default_rng(s))) for s in range(20)]
    assert 270 < np.mean(counts) < 330 and len(set(counts)) > 5
    assert poisson_sample(5, 1.0, np.random.default_rng(0)) == [0, 1, 2, 3, 4]
