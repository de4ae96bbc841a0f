"""privacy.dp's own per-sample gradients (fused, vmap) run Opacus' mechanism exactly.

Same seeds, same model: the same Poisson batches, the same per-sample clipping, the same
noise draws and the same accountant history as Opacus' hooks, so the same weights up to
float rounding and the same ε.
"""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fl_app.model import build_model
from privacy.dp import (
    DEFAULT_GRAD_SAMPLE_MODE,
    FusedClipper,
    PrivacyBudget,
    UnsupportedModelError,
    VmapClipper,
    make_private,
    train_private,
)

N = 40


def data(n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def run(mode, kind="mlp", *, seed=0, batch=4, clip=0.05, physical=64, epochs=2, n=N):
    """Train privately; return (weights, accountant state, loss, accuracy, steps)."""
    torch.manual_seed(0)
    model = build_model(kind, (1, 8, 8), 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = data(n)
    loader = DataLoader(
        TensorDataset(x, y), batch_size=batch, generator=torch.Generator().manual_seed(seed)
    )
    budget = PrivacyBudget(0.0, 1e-5, noise_multiplier=0.8, max_grad_norm=clip)
    training = make_private(
        model, optimizer, loader, budget, epochs=epochs, grad_sample_mode=mode, noise_seed=seed
    )
    result = train_private(training, epochs, physical)
    training.close()
    weights = training.plain_state_dict()
    return weights, training.state_dict(), result.loss, result.accuracy, result.steps


@pytest.mark.parametrize("mode", ["fused", "vmap"])
@pytest.mark.parametrize(
    ("kind", "batch", "physical"),
    [("mlp", 4, 64), ("mlp", 4, 2), ("cnn", 8, 64), ("mlp", 1, 64)],  # batch 1: empty batches
)
def test_own_modes_train_exactly_what_opacus_hooks_train(mode, kind, batch, physical):
    reference = run("hooks", kind, batch=batch, physical=physical)
    got = run(mode, kind, batch=batch, physical=physical)
    assert got[1] == reference[1]  # the accountant saw the same (sigma, q, steps)
    assert got[4] == reference[4]
    assert got[3] == reference[3]  # the same batches and predictions
    assert got[2] == pytest.approx(reference[2], rel=1e-5)
    for name, value in reference[0].items():
        assert torch.allclose(got[0][name], value, atol=1e-6), name


def test_other_seeds_give_other_noise_and_batches():
    base = run("fused", seed=1)
    other = run("fused", seed=2)
    assert any(not torch.equal(base[0][k], other[0][k]) for k in base[0])
    again = run("fused", seed=1)
    assert all(torch.equal(base[0][k], again[0][k]) for k in base[0])


class Shared(nn.Module):
    """A layer called twice, a Linear on 3-D input, a convolution with stride and no bias."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, stride=2, padding=1, bias=False)
        self.token = nn.Linear(4, 4)
        self.head = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))  # (B, 3, 4, 4)
        h = h.reshape(len(x), 12, 4)
        h = self.token(torch.tanh(self.token(h)))  # same layer twice, 3-D input
        return self.head(h.reshape(len(x), -1))


def brute_force_clipped_sum(model, x, y, clip):
    """Σ_i clip(∇ loss_i): one backward per sample."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(y)):
        loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1], reduction="sum")
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum(g.square().sum() for g in grads))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        total = [t + factor * g for t, g in zip(total, grads, strict=True)]
    return total


@pytest.mark.parametrize("clipper", [FusedClipper, VmapClipper])
@pytest.mark.parametrize("kind", ["mlp", "cnn", "shared"])
def test_clipped_sums_equal_per_sample_clipping_one_sample_at_a_time(clipper, kind):
    torch.manual_seed(3)
    model = Shared() if kind == "shared" else build_model(kind, (1, 8, 8), 10)
    x, y = data(9)
    params = [p for p in model.parameters() if p.requires_grad]
    for clip in (0.1, 1e6):  # clipping active, then inactive
        sums, loss, logits = clipper(model, params, None, clip).clipped_sum(x, y)
        expected = brute_force_clipped_sum(model, x, y, clip)
        for got, want in zip(sums, expected, strict=True):
            assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
        with torch.no_grad():
            summed = nn.functional.cross_entropy(model(x), y, reduction="sum")
        assert float(loss) == pytest.approx(float(summed), rel=1e-5)
        assert logits.shape == (9, 10)


def test_default_mode_is_fused_and_unsupported_models_fall_back_to_hooks():
    assert DEFAULT_GRAD_SAMPLE_MODE == "fused"
    x, y = data()
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    budget = PrivacyBudget(0.0, 1e-5, noise_multiplier=1.0)
    mlp = build_model("mlp", (1, 8, 8), 10)
    training = make_private(mlp, torch.optim.SGD(mlp.parameters(), lr=0.1), loader, budget)
    assert training.grad_sample_mode == "fused" and training.dp_step is not None
    training.close()
    assert not any(m._forward_hooks for m in mlp.modules())  # close() removed the hooks

    normed = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.LayerNorm(8), nn.Linear(8, 10))
    optimizer = torch.optim.SGD(normed.parameters(), lr=0.1)
    fallback = make_private(normed, optimizer, loader, budget)
    assert fallback.grad_sample_mode == "hooks" and fallback.dp_step is None
    assert train_private(fallback, 1).steps == len(loader)
    fallback.close()
    with pytest.raises(UnsupportedModelError, match="LayerNorm"):
        make_private(normed, optimizer, loader, budget, grad_sample_mode="fused")
