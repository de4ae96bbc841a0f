import numpy as np
import pytest

from fl_app.data import (
    DATASETS,
    DataError,
    TaskShape,
    embedded_client_data,
    iid_indices,
    load_data_file,
    parse_shape,
    partition_file,
    partition_indices,
    read_server_test_file,
    server_split,
    task_shape,
)

TABULAR = TaskShape((30,), 2)
IMAGES = TaskShape((1, 28, 28), 10)


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
    x = np.random.default_rng(0).normal(size=(20, 30))
    y = np.arange(20) % 2
    np.savez(tmp_path / "a.npz", x=x, y=y)
    split = load_data_file(tmp_path / "a.npz", TABULAR)
    assert split.x.shape == (20, 30) and split.x.dtype == np.float32
    header = ",".join([f"f{i}" for i in range(30)] + ["label"])
    rows = "\n".join(",".join(map(str, [*row, label])) for row, label in zip(x, y, strict=True))
    (tmp_path / "a.csv").write_text(header + "\n" + rows + "\n")
    assert np.allclose(load_data_file(tmp_path / "a.csv", TABULAR).x, split.x)


@pytest.mark.parametrize("layout", [(784,), (28, 28), (1, 28, 28)])
def test_integer_images_of_any_layout_become_scaled_chw(tmp_path, layout):
    x = np.random.default_rng(0).integers(0, 256, size=(5, *layout), dtype=np.uint8)
    np.savez(tmp_path / "img.npz", x=x, y=np.arange(5))
    split = load_data_file(tmp_path / "img.npz", IMAGES)
    assert split.x.shape == (5, 1, 28, 28) and split.x.dtype == np.float32
    assert split.x.max() <= 1.0 and np.isclose(split.x.max(), x.max() / 255)


@pytest.mark.parametrize(
    ("name", "arrays", "message"),
    [
        ("bad.npz", {"x": np.zeros((4, 7)), "y": np.zeros(4)}, r"7 values\); the task expects 30"),
        ("nolabel.npz", {"x": np.zeros((4, 30))}, "needs arrays 'x' and 'y', found \\['x'\\]"),
        (
            "labels.npz",
            {"x": np.zeros((4, 30)), "y": np.array([0, 1, 2, 1])},
            r"labels range from 0 to 2; the task expects integers in \[0, 2\)",
        ),
        (
            "nan.npz",
            {"x": np.full((4, 30), np.nan), "y": np.zeros(4)},
            "4 of 4 samples contain NaN",
        ),
        (
            "pickled.npz",
            {"x": np.array([{"a": 1}] * 4, dtype=object), "y": np.zeros(4)},
            "pickled Python objects, which are never loaded",
        ),
    ],
)
def test_bad_files_name_the_file_and_the_problem(tmp_path, name, arrays, message):
    np.savez(tmp_path / name, **arrays)
    with pytest.raises(DataError, match=message) as caught:
        load_data_file(tmp_path / name, TABULAR)
    assert str(caught.value).startswith(str(tmp_path / name))


def test_a_truncated_npz_is_named(tmp_path):
    np.savez(tmp_path / "full.npz", x=np.zeros((40, 30)), y=np.zeros(40))
    data = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.npz: not a readable \.npz file"):
        load_data_file(tmp_path / "cut.npz", TABULAR)


def test_a_csv_without_its_label_column_is_named(tmp_path):
    (tmp_path / "t.csv").write_text("a,b,target\n1,2,0\n")
    with pytest.raises(DataError, match=r"t\.csv: no label column 'label' in the header"):
        load_data_file(tmp_path / "t.csv", TaskShape((2,), 2))
    assert load_data_file(tmp_path / "t.csv", TaskShape((2,), 2), "target").y.tolist() == [0]


def test_out_of_range_integer_pixels_are_refused(tmp_path):
    np.savez(tmp_path / "p.npz", x=np.full((2, 28, 28), 300, dtype=np.int64), y=np.zeros(2))
    with pytest.raises(DataError, match="pixels range from 300 to 300; expected 0 to 255"):
        load_data_file(tmp_path / "p.npz", IMAGES)


def test_shapes_parse_and_refuse_clearly():
    assert parse_shape("17") == (17,)
    assert parse_shape("28,28") == (1, 28, 28)
    assert parse_shape("3, 32, 32") == (3, 32, 32)
    for bad in ("", "a", "0,5", "1,2,3,4"):
        with pytest.raises(DataError, match=f"input shape '{bad}' is invalid"):
            parse_shape(bad)


def test_the_shape_comes_from_the_run_config_or_the_server_test_file(tmp_path):
    np.savez(tmp_path / "test.npz", x=np.zeros((6, 28, 28), np.uint8), y=np.arange(6) % 4)
    test = read_server_test_file(tmp_path / "test.npz", "", 0)
    assert test.x.shape == (6, 1, 28, 28)
    assert task_shape("files", "", 0, test) == TaskShape((1, 28, 28), 4)
    assert task_shape("files", "", 10, test) == TaskShape((1, 28, 28), 10)
    assert task_shape("files", "17", 3, None) == TaskShape((17,), 3)
    assert task_shape("digits", "", 0, None) == TaskShape((1, 8, 8), 10)
    with pytest.raises(DataError, match="needs the model's input"):
        task_shape("files", "", 3, None)
    with pytest.raises(DataError, match="not a readable file"):
        read_server_test_file(tmp_path / "missing.npz", "", 0)


def test_partition_files_give_file_i_to_partition_i(tmp_path):
    for i in range(3):
        np.savez(tmp_path / f"silo-{i}.npz", x=np.zeros((2, 3)), y=np.zeros(2))
    (tmp_path / "README.txt").write_text("not data")
    assert partition_file(str(tmp_path), 2, 3).name == "silo-2.npz"
    listed = ",".join(str(tmp_path / f"silo-{i}.npz") for i in (2, 0))
    assert partition_file(listed, 0, 2).name == "silo-2.npz"
    with pytest.raises(DataError, match=r"has 3 data file\(s\).*has 4 partitions"):
        partition_file(str(tmp_path), 0, 4)
    with pytest.raises(DataError, match="no such file"):
        partition_file(f"{tmp_path}/a.npz,{tmp_path}/b.npz", 0, 2)


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
