import numpy as np
import pytest

from fl_app.data import (
    DATASETS,
    DataError,
    embedded_client_data,
    iid_indices,
    load_local_file,
    partition_indices,
    server_split,
)


def pool_labels(seed=42):
    pool, _ = server_split("digits", 0.2, seed)
    return tuple(pool.y.tolist())


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "pathological"])
def test_partitions_cover_pool_without_overlap(partitioner):
    labels = pool_labels()
    parts = partition_indices(labels, partitioner, 10, 42, 0.5, 2)
    assert len(parts) == 10
    joined = np.concatenate(parts)
    assert len(joined) == len(set(joined.tolist()))
    assert all(len(p) > 0 for p in parts)
    if partitioner != "pathological":
        assert len(joined) == len(labels)


def test_pathological_gives_each_client_its_label_count():
    labels = np.asarray(pool_labels())
    for part in partition_indices(tuple(labels.tolist()), "pathological", 10, 42, 0.5, 2):
        assert len(np.unique(labels[part])) <= 2


def label_skew(alpha: float) -> float:
    """Mean total-variation distance between client label mix and the pool's."""
    labels = np.asarray(pool_labels())
    overall = np.bincount(labels, minlength=10) / len(labels)
    parts = partition_indices(tuple(labels.tolist()), "dirichlet", 10, 42, alpha, 2)
    return float(
        np.mean(
            [
                0.5 * np.abs(np.bincount(labels[p], minlength=10) / len(p) - overall).sum()
                for p in parts
            ]
        )
    )


def test_dirichlet_skew_grows_as_alpha_falls():
    skews = [label_skew(a) for a in (100.0, 1.0, 0.1)]
    assert skews[0] < skews[1] < skews[2]


def test_partitions_are_deterministic_by_seed():
    labels = pool_labels()
    a = partition_indices(labels, "dirichlet", 10, 1, 0.5, 2)
    b = partition_indices.__wrapped__(labels, "dirichlet", 10, 1, 0.5, 2)
    c = partition_indices(labels, "dirichlet", 10, 2, 0.5, 2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_server_test_set_is_held_out_and_stratified():
    pool, test = server_split("digits", 0.2, 42)
    assert len(pool) + len(test) == 1797
    assert set(np.unique(test.y).tolist()) == set(range(10))
    pool_rows = {row.tobytes() for row in pool.x}
    # load_digits has a few exact duplicate images; nearly all test rows are unseen
    assert sum(row.tobytes() in pool_rows for row in test.x) < 5


def test_client_train_and_val_are_disjoint():
    data = embedded_client_data("digits", 0.2, 0.1, "iid", 10, 3, 42, 0.5, 2)
    assert len(data.val) == round(0.1 * (len(data.train) + len(data.val)))
    assert data.train.x.shape[1:] == DATASETS["digits"].input_shape


def test_too_many_clients_is_a_clear_error():
    with pytest.raises(DataError, match="cannot split"):
        partition_indices((0, 1, 2), "iid", 5, 0, 0.5, 2)


def test_local_npz_and_csv(tmp_path):
    spec = DATASETS["breast-cancer"]
    x = np.random.default_rng(0).normal(size=(20, 30))
    y = np.arange(20) % 2
    np.savez(tmp_path / "a.npz", x=x, y=y)
    split = load_local_file(tmp_path / "a.npz", spec)
    assert split.x.shape == (20, 30) and split.x.dtype == np.float32
    header = ",".join([f"f{i}" for i in range(30)] + ["label"])
    rows = "\n".join(",".join(map(str, [*row, label])) for row, label in zip(x, y, strict=True))
    (tmp_path / "a.csv").write_text(header + "\n" + rows + "\n")
    assert np.allclose(load_local_file(tmp_path / "a.csv", spec).x, split.x)


@pytest.mark.parametrize(
    ("name", "arrays", "message"),
    [
        ("bad.npz", {"x": np.zeros((4, 7)), "y": np.zeros(4)}, "needs 30 features"),
        ("nolabel.npz", {"x": np.zeros((4, 30))}, "needs arrays 'x' and 'y'"),
        ("labels.npz", {"x": np.zeros((4, 30)), "y": np.array([0, 1, 2, 1])}, "labels must be"),
        ("nan.npz", {"x": np.full((4, 30), np.nan), "y": np.zeros(4)}, "NaN"),
    ],
)
def test_bad_local_files_name_the_problem(tmp_path, name, arrays, message):
    np.savez(tmp_path / name, **arrays)
    with pytest.raises(DataError, match=message):
        load_local_file(tmp_path / name, DATASETS["breast-cancer"])


@pytest.mark.parametrize(("size", "parts", "seed"), [(1437, 10, 42), (455, 7, 3), (30, 30, 0)])
def test_numpy_iid_partitions_equal_flwr_datasets(size, parts, seed):
    from datasets import Dataset
    from flwr_datasets.partitioner import IidPartitioner

    partitioner = IidPartitioner(num_partitions=parts)
    partitioner.dataset = Dataset.from_dict({"index": list(range(size))}).shuffle(seed=seed)
    expected = [np.sort(partitioner.load_partition(p)["index"]) for p in range(parts)]
    for ours, theirs in zip(iid_indices(size, parts, seed), expected, strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_the_server_split_is_cached_for_other_processes(flwr_home):
    server_split.cache_clear()
    pool, test = server_split("breast-cancer", 0.25, 9)
    (cached,) = (flwr_home / "cache").glob("split-*.npz")
    server_split.cache_clear()
    again_pool, again_test = server_split("breast-cancer", 0.25, 9)
    for a, b in ((pool, again_pool), (test, again_test)):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
    assert cached.stat().st_mode & 0o777 == 0o600
