"""fl-compare without running anything: arguments, the --out directory, the report's formats."""

import csv
import io
import json

import pandas as pd
import pytest
from rich.console import Console

from fl_app.server.results import FinalRecord, RoundRecord, RunRecord
from tools import compare
from tools.compare_report import csv_text, print_table, summarize


def run_record(config, accuracy, epsilon=None, status="completed", rounds=3):
    record = RunRecord(config, {}, {}, {}, status=status)
    record.rounds = [
        RoundRecord(
            round=n,
            seconds=0.5 * n,
            bytes_up=2_000_000,
            bytes_down=1_000_000,
            evaluate={"accuracy": accuracy - 0.01},
            server={"accuracy": accuracy},
        )
        for n in range(1, rounds + 1)
    ]
    record.final = FinalRecord(
        accuracy, 0.1, "server-test-set", rounds, status, 1.0, "none", epsilon, None
    )
    return record


def test_list_prints_every_setting_name(capsys):
    assert compare.main(["--list"]) == 0
    names = [line.split(":")[0] for line in capsys.readouterr().out.splitlines()]
    assert names == list(compare.SETTINGS)


def test_help_gives_every_flag_its_meaning_and_default(capsys):
    with pytest.raises(SystemExit):
        compare.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in (
        ("--rounds", "10"),
        ("--clients", "10"),
        ("--seeds", "3"),
        ("--strategy", "fedavg"),
        ("--dataset", "digits"),
        ("--out", "comparison"),
        ("--run-config", ""),
    ):
        assert flag in text and f"(default: {default})" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--settings", "none,dp-bogus"], "'dp-bogus'"),
        (["--settings", "he", "--strategy", "fedmedian"], "setting 'he'"),
        (["--rounds", "0"], "--rounds 0 must be >= 1"),
        (["--run-config", "num-server-roundz=3"], "did you mean 'num-server-rounds'"),
    ],
)
def test_bad_arguments_fail_before_anything_runs(tmp_path, capsys, argv, message):
    out = tmp_path / "sweep"
    assert compare.main([*argv, "--out", str(out)]) == 2
    assert message in capsys.readouterr().out
    assert not out.exists()


def test_an_out_dir_of_another_sweep_is_refused_naming_the_difference(tmp_path, capsys):
    out = tmp_path / "sweep"
    first = compare.build_sweep(
        compare.parser().parse_args(["--rounds", "2", "--clients", "3", "--out", str(out)])
    )
    compare.claim_out_dir(first)
    argv = ["--settings", "none", "--rounds", "5", "--clients", "4", "--strategy", "fedprox"]
    argv += ["--out", str(out)]
    assert compare.main(argv) == 2
    message = " ".join(capsys.readouterr().out.split())
    assert "num-server-rounds = 2 (asked: 5)" in message
    assert (
        "clients = 3 (asked: 4)" in message and "strategy = 'fedavg' (asked: 'fedprox')" in message
    )
    assert sorted(p.name for p in out.iterdir()) == ["sweep.json"]


def test_a_finished_run_is_reused_only_with_the_same_config(tmp_path):
    sweep = compare.build_sweep(
        compare.parser().parse_args(["--rounds", "2", "--out", str(tmp_path / "s")])
    )
    run_dir = sweep.run_dir("none", 0)
    run_dir.mkdir(parents=True)
    asked = {**compare.RunConfig().to_dict(), **sweep.run_config("none", 0)}
    same = run_record({**asked, "output-dir": str(run_dir)}, 0.9)
    (run_dir / "results.json").write_text(json.dumps(same.to_dict()))
    assert compare.finished_run(sweep, "none", 0) == same
    other = run_record({**asked, "learning-rate": 0.5}, 0.9)
    (run_dir / "results.json").write_text(json.dumps(other.to_dict()))
    with pytest.raises(compare.CompareError, match=r"another config \(learning-rate\)"):
        compare.finished_run(sweep, "none", 0)
    running = run_record(asked, 0.9, status="running")
    (run_dir / "results.json").write_text(json.dumps(running.to_dict()))
    assert compare.finished_run(sweep, "none", 0) is None


def rows():
    plain = [(run_record({}, a), a) for a in (0.95, 0.97)]
    private = [(run_record({}, a, epsilon=e), a) for a, e in ((0.8, 7.9), (0.82, 8.0))]
    return [summarize("none", plain), summarize("dp-local-eps8", private)]


def test_the_csv_reads_back_as_numbers_with_ascii_headers():
    text = csv_text(rows())
    assert text.isascii()
    table = pd.read_csv(io.StringIO(text))
    assert table["test_accuracy"].tolist() == pytest.approx([0.96, 0.81])
    assert table["epsilon"].isna().tolist() == [True, False]
    for column in table.columns.drop("setting"):
        assert pd.api.types.is_numeric_dtype(table[column]), column
    assert next(csv.reader(io.StringIO(text)))[:4] == [
        "setting",
        "seeds",
        "test_accuracy",
        "test_accuracy_std",
    ]


def test_traffic_per_round_is_training_only_and_time_skips_round_1():
    (row, _) = rows()
    assert row.values["mb_up_per_round"] == pytest.approx(2.0)
    assert row.values["mb_down_per_round"] == pytest.approx(1.0)
    assert row.values["seconds_per_round"] == pytest.approx((1.0 + 1.5) / 2)


@pytest.mark.parametrize("width", [80, 120, 200])
def test_the_terminal_table_never_cuts_a_name_or_a_number(width):
    console = Console(width=width, file=io.StringIO(), force_terminal=False)
    print_table(rows(), console)
    text = console.file.getvalue()
    for expected in ("dp-local-eps8", "0.9600 ± 0.0141", "0.8100 ± 0.0141", "7.95 ± 0.07"):
        assert expected in text, (width, expected)
    assert "…" not in text


def test_a_sweep_with_a_run_that_did_not_complete_exits_1_after_its_report(
    tmp_path, monkeypatch, capsys
):
    stopped = run_record({}, 0.5, status="stopped-too-few-updates")

    def fake_sweep(sweep, console):
        return {"none": [(stopped, 0.5)]}

    monkeypatch.setattr(compare, "run_sweep", fake_sweep)
    out = tmp_path / "sweep"
    assert compare.main(["--settings", "none", "--seeds", "1", "--out", str(out)]) == 1
    assert "none (stopped-too-few-updates)" in capsys.readouterr().out
    assert (out / "comparison.csv").is_file()
