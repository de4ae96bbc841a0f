import json
import stat

import pytest

from fl_app.server.results import (
    FinalRecord,
    ResultsWriter,
    RoundRecord,
    RunRecord,
    create_run_directory,
    load_results,
)


def test_explicit_existing_output_dir_is_never_reused(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "results.json").write_text("precious")
    with pytest.raises(FileExistsError, match="never overwritten"):
        create_run_directory("mine", tmp_path)
    assert (tmp_path / "mine" / "results.json").read_text() == "precious"


def test_default_directories_are_unique_timestamps(tmp_path):
    first = create_run_directory("", tmp_path)
    second = create_run_directory("", tmp_path)
    assert first != second
    assert first.parent == second.parent == tmp_path / "outputs"


def test_results_files_are_complete_and_readable(tmp_path):
    config = {"strategy": "fedavg", "dataset": "digits"}
    results = ResultsWriter(tmp_path, RunRecord(config, {}, {}, {}))
    results.add_round(
        RoundRecord(
            round=1,
            seconds=0.5,
            bytes_up=10,
            bytes_down=20,
            num_clients=2,
            train={"train-loss": 1.0},
            evaluate={"accuracy": 0.5, "loss": 1.0},
            server={"accuracy": 0.6, "loss": 0.9},
        )
    )
    final = FinalRecord(0.6, 0.9, "server-test-set", 1, "completed", 1.0, "none", None, None)
    results.finish(final)
    assert json.loads((tmp_path / "results.json").read_text())["final"]["accuracy"] == 0.6
    assert load_results(tmp_path) == results.record
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1].startswith("1,0.5,10,20,2,0,1.0")
    mode = stat.S_IMODE((tmp_path / "results.json").stat().st_mode)
    assert mode == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "results.json"]
    png = results.save_plot()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
