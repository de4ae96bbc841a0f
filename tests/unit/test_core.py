"""The shared aggregation core against hand-computed numpy results."""

import numpy as np
import pytest

from strategies.core import (
    AdaptiveServerOptimizer,
    ServerMomentum,
    coordinate_median,
    equal_weights_if_all_zero,
    krum_scores,
    krum_select,
    pairwise_squared_distances,
    trimmed_mean,
    weighted_average,
)

# three clients, two arrays of different shapes and dtypes
A = [np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), np.array([10, 20, 30], np.int64)]
B = [np.array([[5.0, 0.0], [3.0, 8.0]], np.float32), np.array([11, 25, 30], np.int64)]
C = [np.array([[0.0, 9.0], [4.0, 6.0]], np.float32), np.array([19, 21, 31], np.int64)]


def test_weighted_average_by_hand():
    out = weighted_average([A, B, C], [1, 1, 2])
    np.testing.assert_allclose(out[0], [[1.5, 5.0], [3.5, 6.0]], atol=1e-7)
    # int: (10 + 11 + 38) / 4 = 14.75 -> 15; (20 + 25 + 42) / 4 = 21.75 -> 22; 30.5 -> 30 (even)
    np.testing.assert_array_equal(out[1], [15, 22, 30])
    assert out[0].dtype == np.float32 and out[1].dtype == np.int64


def test_weighted_average_of_one_client_is_that_client():
    out = weighted_average([A], [3])
    for got, want in zip(out, A, strict=True):
        np.testing.assert_array_equal(got, want)


def test_zero_weight_client_is_ignored_and_all_zero_is_an_error():
    out = weighted_average([A, B], [0, 5])
    np.testing.assert_array_equal(out[0], B[0])
    with pytest.raises(ValueError, match="all weights are zero"):
        weighted_average([A, B], [0, 0])
    assert equal_weights_if_all_zero([0, 0.0]) == ([1.0, 1.0], True)
    assert equal_weights_if_all_zero([0, 2]) == ([0.0, 2.0], False)


def test_median_by_hand_odd_and_even():
    out = coordinate_median([A, B, C])
    np.testing.assert_array_equal(out[0], [[1.0, 2.0], [3.0, 6.0]])
    np.testing.assert_array_equal(out[1], [11, 21, 30])
    even = coordinate_median([A, B])
    np.testing.assert_array_equal(even[0], [[3.0, 1.0], [3.0, 6.0]])
    np.testing.assert_array_equal(even[1], [10, 22, 30])  # 10.5 -> 10, 22.5 -> 22 (to even)
    assert even[0].dtype == np.float32 and even[1].dtype == np.int64


def test_trimmed_mean_by_hand():
    five = [[np.array([v], np.float64)] for v in (100.0, 1.0, 2.0, 3.0, -50.0)]
    # beta 0.2 of 5 cuts 1 at each end: mean(1, 2, 3) = 2
    assert trimmed_mean(five, 0.2)[0][0] == pytest.approx(2.0)
    # beta 0.1 of 5 cuts int(0.5) = 0: the plain mean
    assert trimmed_mean(five, 0.1)[0][0] == pytest.approx(56.0 / 5)
    # 0.45 of 5 cuts 2 at each end: the median
    assert trimmed_mean(five, 0.45)[0][0] == pytest.approx(2.0)
    assert trimmed_mean([A], 0.4)[1].tolist() == [10, 20, 30]
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        trimmed_mean(five, 0.5)


def test_pairwise_distances_and_krum_by_hand():
    points = [[np.array([x, y])] for x, y in [(0.0, 0.0), (1.0, 0.0), (0.0, 2.0), (10.0, 10.0)]]
    d = pairwise_squared_distances(points)
    assert d[0, 1] == 1 and d[0, 2] == 4 and d[1, 2] == 5 and d[0, 3] == 200
    assert np.all(np.diag(d) == 0) and np.array_equal(d, d.T)
    # f = 1, n = 4: each score sums the n - f - 2 = 1 nearest other distance
    np.testing.assert_array_equal(krum_scores(d, 1), [1, 1, 4, 164])
    # f = 0: the 2 nearest: [1 + 4, 1 + 5, 4 + 5, 164 + 181]
    np.testing.assert_array_equal(krum_scores(d, 0), [5, 6, 9, 345])
    assert krum_select(points, 1, 1) == [0]  # tie with 1, lower index wins
    assert krum_select(points, 0, 2) == [0, 1]
    assert krum_select(points[:1], 0, 1) == [0]
    with pytest.raises(ValueError, match="cannot select 5 of 4"):
        krum_select(points, 0, 5)


def test_distances_over_several_arrays_and_dtypes():
    d = pairwise_squared_distances([A, B])
    # float part: 16 + 4 + 0 + 16 = 36; int part: 1 + 25 + 0 = 26
    assert d[0, 1] == 62


def test_server_momentum_by_hand():
    opt = ServerMomentum(learning_rate=0.5, momentum=0.9)
    w = [np.array([1.0, 2.0], np.float32)]
    w1 = opt.step(w, [np.array([0.0, 4.0], np.float32)])  # d = [1, -2]; v = d
    np.testing.assert_allclose(w1[0], [0.5, 3.0])
    w2 = opt.step(w1, [np.array([0.5, 3.0], np.float32)])  # d = 0; v = 0.9 v
    np.testing.assert_allclose(w2[0], [0.5 - 0.45, 3.0 + 0.9])
    assert w2[0].dtype == np.float32
    restored = ServerMomentum(0.5, 0.9)
    restored.load_state_dict(opt.state_dict())
    np.testing.assert_array_equal(restored.velocity[0], opt.velocity[0])


def test_adaptive_rules_by_hand():
    current = [np.array([1.0, -1.0])]
    aggregate = [np.array([1.5, -1.0])]  # delta = [0.5, 0]
    adam = AdaptiveServerOptimizer("adam", eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    out = adam.step(1, current, aggregate)
    m, v = 0.1 * 0.5, 0.01 * 0.25
    eta = 0.1 * np.sqrt(1 - 0.99**2) / (1 - 0.9**2)
    np.testing.assert_allclose(out[0], [1 + eta * m / (np.sqrt(v) + 1e-3), -1.0])
    adagrad = AdaptiveServerOptimizer("adagrad", eta=0.1, beta_1=0.0, beta_2=0.0, tau=1e-3)
    out = adagrad.step(1, current, aggregate)
    np.testing.assert_allclose(out[0], [1 + 0.1 * 0.5 / (0.5 + 1e-3), -1.0])
    yogi = AdaptiveServerOptimizer("yogi", eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    out = yogi.step(1, current, aggregate)
    # v0 = 0: v = 0 - 0.01 * 0.25 * sign(-0.25) = 0.0025
    np.testing.assert_allclose(out[0], [1 + 0.1 * 0.05 / (0.05 + 1e-3), -1.0])
    assert np.all(np.isfinite(out[0]))


def test_adaptive_state_round_trip_and_int_arrays():
    opt = AdaptiveServerOptimizer("adam", 0.1, 0.9, 0.99, 1e-3)
    current = [np.array([1.0]), np.array([4], np.int64)]
    nxt = opt.step(1, current, [np.array([2.0]), np.array([6], np.int64)])
    assert nxt[1].dtype == np.int64
    clone = AdaptiveServerOptimizer("adam", 0.1, 0.9, 0.99, 1e-3)
    clone.load_state_dict(opt.state_dict())
    a = opt.step(2, nxt, [np.array([0.0]), np.array([1], np.int64)])
    b = clone.step(2, nxt, [np.array([0.0]), np.array([1], np.int64)])
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="unknown rule"):
        AdaptiveServerOptimizer("sgd", 0.1, 0.9, 0.99, 1e-3)


@pytest.mark.parametrize("shape", [(), (1,), (3, 2), (2, 1, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_every_aggregation_keeps_shape_and_dtype_and_is_finite(shape, dtype):
    rng = np.random.default_rng(0)
    updates = [[(rng.normal(size=shape) * 10).astype(dtype)] for _ in range(5)]
    results = [
        weighted_average(updates, [1, 2, 3, 4, 5]),
        coordinate_median(updates),
        trimmed_mean(updates, 0.2),
        [updates[i][0] for i in krum_select(updates, 1, 1)],
    ]
    for (out,) in results:
        assert out.shape == shape and out.dtype == dtype and np.all(np.isfinite(out))


def test_every_aggregation_of_one_client_is_that_client():
    assert krum_select([A], 2, 1) == [0]
    for out in (weighted_average([A], [0.5]), coordinate_median([A]), trimmed_mean([A], 0.3)):
        for got, want in zip(out, A, strict=True):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


def test_mismatched_shapes_and_no_updates_are_errors():
    with pytest.raises(ValueError, match="update 1 has array shapes"):
        coordinate_median([A, [A[0], np.zeros(4)]])
    with pytest.raises(ValueError, match="zero updates"):
        trimmed_mean([], 0.1)
