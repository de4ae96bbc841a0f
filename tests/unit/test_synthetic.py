import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from fl_app.synthetic import MAX_SAMPLES, NUM_CLASSES, NUM_FEATURES, device_data


def label_histograms(seed, alpha, beta, iid, devices):
    return np.array(
        [
            np.bincount(y, minlength=NUM_CLASSES) / len(y)
            for y in (device_data(seed, d, alpha, beta, iid)[1] for d in range(devices))
        ]
    )


def mean_total_variation(hists):
    distances = 0.5 * np.abs(hists[:, None, :] - hists[None, :, :]).sum(axis=-1)
    return distances[np.triu_indices(len(hists), k=1)].mean()


@pytest.mark.parametrize("iid", [False, True])
def test_shapes_dtypes_and_labels(iid):
    for device in range(20):
        x, y = device_data(3, device, 1.0, 1.0, iid)
        assert x.dtype == np.float32
        assert y.dtype == np.int64
        assert x.ndim == 2
        assert x.shape[1] == NUM_FEATURES
        assert y.shape == (x.shape[0],)
        assert np.isfinite(x).all()
        assert y.min() >= 0
        assert y.max() < NUM_CLASSES


@pytest.mark.parametrize("iid", [False, True])
def test_same_arguments_give_the_same_data(iid):
    x1, y1 = device_data(5, 11, 0.5, 0.5, iid)
    x2, y2 = device_data(5, 11, 0.5, 0.5, iid)
    assert np.array_equal(x1, x2)
    assert np.array_equal(y1, y2)


@pytest.mark.parametrize("iid", [False, True])
def test_another_device_or_seed_gives_other_data(iid):
    x, _ = device_data(5, 11, 0.5, 0.5, iid)
    for other_seed, other_device in [(5, 12), (6, 11)]:
        other, _ = device_data(other_seed, other_device, 0.5, 0.5, iid)
        assert other.shape != x.shape or not np.array_equal(other, x)


def test_a_device_does_not_depend_on_the_other_devices():
    alone = device_data(0, 7, 1.0, 1.0)
    for device in range(7):
        device_data(0, device, 1.0, 1.0)
        device_data(0, device, 0.0, 0.0, iid=True)
    after = device_data(0, 7, 1.0, 1.0)
    assert np.array_equal(alone[0], after[0])
    assert np.array_equal(alone[1], after[1])


def test_sample_counts_are_bounded_and_heavy_tailed():
    counts = np.array([len(device_data(0, d, 1.0, 1.0)[1]) for d in range(1000)])
    assert counts.min() >= 50
    assert counts.max() <= MAX_SAMPLES
    median = np.median(counts)
    assert counts.max() >= 10 * median
    assert counts.mean() >= 2 * median
    # LogNormal(4, 2) + 50 exceeds 10,000 with probability ~0.5%: the cap is rare.
    assert (counts == MAX_SAMPLES).mean() < 0.02


def test_sample_count_is_the_same_in_every_variant():
    for device in range(30):
        counts = {
            len(device_data(1, device, alpha, beta, iid)[1])
            for alpha, beta, iid in [(0, 0, False), (1, 1, False), (0.5, 2, False), (0, 0, True)]
        }
        assert len(counts) == 1


def test_iid_devices_share_a_label_distribution_and_non_iid_devices_do_not():
    iid = mean_total_variation(label_histograms(0, 0.0, 0.0, True, 150))
    # Even Synthetic(0, 0) gives each device its own model and feature mean.
    non_iid_0 = mean_total_variation(label_histograms(0, 0.0, 0.0, False, 150))
    non_iid_1 = mean_total_variation(label_histograms(0, 1.0, 1.0, False, 150))
    assert iid < 0.25
    assert non_iid_0 > 0.6
    assert non_iid_1 > 0.6
    assert non_iid_0 > 3 * iid


def test_beta_adds_feature_skew_and_label_skew():
    def feature_spread(beta):
        return np.std([device_data(2, d, 0.0, beta)[0].mean() for d in range(200)])

    assert feature_spread(1.0) > 4 * feature_spread(0.0)

    def dominant_label_share(alpha, beta):
        return label_histograms(2, alpha, beta, False, 300).max(axis=1).mean()

    share_0 = dominant_label_share(0.0, 0.0)
    share_1 = dominant_label_share(1.0, 1.0)
    share_3 = dominant_label_share(0.0, 3.0)
    assert share_0 < share_1 < share_3
    assert share_3 > share_0 + 0.04


def test_alpha_shifts_every_logit_alike_so_does_not_change_the_data():
    # mean_W adds mean_W * (1 + sum(x)) to every class's logit: the argmax ignores it.
    for device in range(30):
        x0, y0 = device_data(4, device, 0.0, 1.0)
        for alpha in (1.0, 5.0):
            x, y = device_data(4, device, alpha, 1.0)
            assert np.array_equal(x, x0)
            assert np.array_equal(y, y0)


@pytest.mark.parametrize("iid", [False, True])
def test_a_device_task_is_learnable(iid):
    for device in range(1000):
        x, y = device_data(0, device, 1.0, 1.0, iid)
        if 1000 <= len(y) <= 3000 and np.bincount(y).max() / len(y) <= 0.7:
            break
    else:
        pytest.fail("no device of moderate size and label skew")
    cut = int(0.7 * len(y))
    model = LogisticRegression(max_iter=2000).fit(x[:cut], y[:cut])
    accuracy = model.score(x[cut:], y[cut:])
    majority = np.bincount(y[cut:]).max() / (len(y) - cut)
    assert accuracy > majority + 0.2
    assert accuracy > 0.7


def test_iid_devices_share_one_model():
    x, y = device_data(0, 1, 0.0, 0.0, iid=True)
    model = LogisticRegression(max_iter=2000).fit(x, y)
    others = [device_data(0, d, 0.0, 0.0, iid=True) for d in range(2, 40)]
    x_other = np.concatenate([o[0] for o in others])
    y_other = np.concatenate([o[1] for o in others])
    assert model.score(x_other, y_other) > 0.7


@pytest.mark.parametrize(
    ("seed", "device", "alpha", "beta"),
    [
        (-1, 0, 1.0, 1.0),
        (0, -1, 1.0, 1.0),
        (0, 2**32, 1.0, 1.0),
        (0, 0, -0.5, 1.0),
        (0, 0, 1.0, float("nan")),
        (0, 0, float("inf"), 1.0),
    ],
)
def test_invalid_arguments_are_refused(seed, device, alpha, beta):
    with pytest.raises(ValueError):
        device_data(seed, device, alpha, beta)
