"""fl-compare's report with the privacy audit: columns, reasons for "—", plots, --no-audit."""

import io

import pandas as pd
import pytest

from fl_app.server.results import FinalRecord, RoundRecord, RunRecord
from tools import compare
from tools.compare_report import csv_text, summarize, text_rows, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def record(epsilon=None):
    run = RunRecord({}, {}, {}, {}, status="completed")
    run.rounds = [RoundRecord(round=n, seconds=1.0, server={"accuracy": 0.9}) for n in (1, 2)]
    run.final = FinalRecord(0.9, 0.1, "server-test-set", 2, "completed", 1.0, "none", epsilon, None)
    return run


def audit(auc=0.55, psnr=None, bound=None, violated=None, recon_note="", canary_note=""):
    return {
        "mia_auc": auc,
        "mia_auc_low": auc - 0.06,
        "mia_auc_high": auc + 0.06,
        "mia_tpr_at_1pct_fpr": 0.02,
        "mia_tpr_at_0_1pct_fpr": 0.0,
        "loss_attack_auc": 0.5,
        "reconstruction_psnr": psnr,
        "reconstruction_ssim": None if psnr is None else 0.99,
        "reconstruction_note": recon_note,
        "epsilon_lower_bound": bound,
        "canary_violated": violated,
        "canary_guesses": None if bound is None else 250,
        "canary_correct": None if bound is None else 200,
        "canary_note": canary_note,
        "audit_seconds": 3.0,
    }


NO_DP = "no differential privacy: no ε to test"
CIPHERTEXTS = "nothing to invert: the server holds only ciphertexts"


def rows():
    return [
        summarize(
            "none",
            [(record(), 0.9), (record(), 0.92)],
            [audit(0.6, psnr=70.0, canary_note=NO_DP), audit(0.58, psnr=60.0, canary_note=NO_DP)],
        ),
        summarize("he", [(record(), 0.9)], [audit(recon_note=CIPHERTEXTS, canary_note=NO_DP)]),
        summarize("dp-central", [(record(8.0), 0.3)], [audit(psnr=72.0, bound=2.4)]),
        summarize("dp-broken", [(record(1.0), 0.3)], [audit(psnr=72.0, bound=3.9, violated=True)]),
    ]


def test_audit_columns_read_back_as_numbers_with_their_reasons_in_the_markdown(tmp_path):
    report = rows()
    table = pd.read_csv(io.StringIO(csv_text(report)))
    for column in table.columns.drop("setting"):
        assert pd.api.types.is_numeric_dtype(table[column]), column
    by_setting = table.set_index("setting")
    assert by_setting.loc["none", "mia_auc"] == pytest.approx(0.59)
    assert by_setting.loc["none", "reconstruction_psnr"] == pytest.approx(65.0)
    assert by_setting.loc["none", "mia_auc_low"] == pytest.approx(0.52)  # union of intervals
    assert by_setting.loc["none", "mia_auc_high"] == pytest.approx(0.66)
    assert pd.isna(by_setting.loc["he", "reconstruction_psnr"])
    assert pd.isna(by_setting.loc["none", "epsilon_lower_bound"])
    assert by_setting.loc["dp-central", "epsilon_lower_bound"] == pytest.approx(2.4)

    cells = {row[0]: row for row in text_rows(report)}
    assert "0.59 ± 0.01 [0.52, 0.66]" in cells["none"]
    assert "— (ciphertexts only)" in cells["he"] and "— (no DP)" in cells["he"]
    assert "3.90 VIOLATED" in cells["dp-broken"] and "2.40" in cells["dp-central"]

    write_report(report, "title", {"timing": {"runs_seconds": 100, "audit_seconds": 20}}, tmp_path)
    markdown = (tmp_path / "comparison.md").read_text()
    assert "runs 100 s, privacy audit 20 s" in markdown
    assert "## Privacy audit" in markdown and CIPHERTEXTS in markdown
    assert "| dp-central |" in markdown and "200 / 250" in markdown
    for plot in ("privacy_audit.png", "reconstruction.png"):
        assert (tmp_path / plot).read_bytes().startswith(PNG_MAGIC)


def test_the_sweep_is_audited_unless_no_audit(tmp_path, monkeypatch):
    runs = {"none": [(record(), 0.9)]}
    monkeypatch.setattr(compare, "run_sweep", lambda sweep, console: runs)
    seen = []

    def fake_audit(sweep, setting, seed, options):
        seen.append((setting, seed, options.shadows))
        return audit(psnr=50.0, canary_note=NO_DP)

    monkeypatch.setattr(compare, "audit_one", fake_audit)
    argv = ["--settings", "none", "--seeds", "1", "--audit-shadows", "6"]
    assert compare.main([*argv, "--out", str(tmp_path / "on")]) == 0
    assert seen == [("none", 0, 6)]
    assert "reconstruction_psnr" in (tmp_path / "on" / "comparison.csv").read_text()
    assert compare.main([*argv, "--no-audit", "--out", str(tmp_path / "off")]) == 0
    assert len(seen) == 1
    assert "mia_auc" not in (tmp_path / "off" / "comparison.csv").read_text()
    assert "privacy audit skipped" in (tmp_path / "off" / "comparison.md").read_text()
    assert compare.main(["--audit-shadows", "3", "--out", str(tmp_path / "bad")]) == 2


def test_fl_audit_refuses_a_directory_without_results(tmp_path, capsys):
    from tools.audit import cli

    assert cli.main([str(tmp_path)]) == 2
    assert "holds no readable results.json" in " ".join(capsys.readouterr().out.split())
    assert cli.main([str(tmp_path), "--shadows", "3"]) == 2
