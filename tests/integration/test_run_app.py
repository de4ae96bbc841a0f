"""scripts/run.sh's wrapper: a misspelled key named first, one ERROR line, honest exit codes."""

import json
import re

from fl_app.server.results import FinalRecord, RunRecord
from tests.integration.conftest import APP
from tools import run_app
from tools.app_source import stage_app

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def flwr_args(superlink, tmp_path, run_config):
    return [
        str(stage_app(APP, tmp_path)),
        "local",
        "--federation-config",
        "num-supernodes=2",
        "--run-config",
        run_config,
    ]


def test_a_misspelled_key_is_named_before_flower_sees_it(tmp_path, capfd):
    assert run_app.main([".", "--run-config", "num-server-roundz=2"]) == 2
    error = capfd.readouterr().err
    assert "unknown run-config key 'num-server-roundz' (did you mean 'num-server-rounds'?)" in error


def test_a_run_the_app_refuses_is_one_error_line_and_exits_1(
    superlink, tmp_path, capfd, monkeypatch
):
    for key, value in superlink.env().items():
        monkeypatch.setenv(key, value)
    missing = str(tmp_path / "nowhere")
    code = run_app.main(flwr_args(superlink, tmp_path, f"resume-from='{missing}'"))
    out = ANSI.sub("", capfd.readouterr().out + capfd.readouterr().err)
    assert code == 1
    errors = [line for line in out.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "Run not started" in errors[0] and "no checkpoint.npz" in errors[0]
    assert "Traceback" not in out


def test_the_exit_code_follows_the_runs_status(tmp_path, capsys):
    record = RunRecord({}, {}, {}, {}, status="budget-exhausted")
    record.final = FinalRecord(None, None, "none", 1, "budget-exhausted", 1.0, "central", 8, 1e-5)
    (tmp_path / "results.json").write_text(json.dumps(record.to_dict()))
    assert run_app.outcome(tmp_path) == 1
    assert "the run ended 'budget-exhausted'" in capsys.readouterr().err
    record.status = "completed"
    (tmp_path / "results.json").write_text(json.dumps(record.to_dict()))
    assert run_app.outcome(tmp_path) == 0
    assert run_app.outcome(None) == 1
