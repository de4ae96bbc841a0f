"""The privacy audit of finished in-process runs: the report's columns, each attack's verdict.

HE: the server holds ciphertexts, so the reconstruction is refused (no number); the
published model is audited decrypted, by a key holder. Central DP: the server sees the
update in plaintext, so the digit comes back, while the canary bound of the released
model stays at or below the claimed ε.
"""

import csv
import io
import json

import pytest

from fl_app.data import server_split
from fl_app.server.results import load_results
from testing.inprocess_grid import run_server_app_in_process
from tools.audit import cli
from tools.audit.run import (
    AUDIT_DIR,
    AUDIT_FILE,
    GRID_FILE,
    AuditOptions,
    audit_run,
    client_splits,
    load_run,
)
from tools.compare_report import csv_text, summarize, text_rows

# one short round of the MLP: the audit, not the training, is under test
RUN = {"num-server-rounds": 1, "local-epochs": 1, "model": "mlp"}
FAST = AuditOptions(shadows=2, bootstrap=200, restarts=1, iterations=150, canaries=1000)
AUDIT_COLUMNS = ("mia_auc", "mia_tpr_at_1pct_fpr", "reconstruction_psnr", "epsilon_lower_bound")


def test_he_run_reconstruction_is_refused_and_the_model_is_audited_by_a_key_holder(
    tmp_path, he_keys
):
    run_dir = tmp_path / "he"
    run_server_app_in_process(run_dir, {**RUN, "he": True})
    audit = audit_run(run_dir, he_secret=he_keys.secret, options=FAST)

    reconstruction = audit["reconstruction"]
    assert reconstruction["status"] == "refused"
    assert reconstruction["reason"] == "nothing to invert: the server holds only ciphertexts"
    assert "psnr" not in reconstruction and "ciphertexts" in reconstruction["update"]
    assert not (run_dir / AUDIT_DIR / GRID_FILE).exists()
    membership = audit["membership"]
    assert membership["status"] == "measured" and "secret key" in membership["adversary"]
    assert membership["num_members"] == membership["num_nonmembers"] == 144  # 3 val splits
    assert 0.0 <= membership["lira"]["auc_low"] <= membership["lira"]["auc_high"] <= 1.0
    assert audit["canary"]["status"] == "not-applicable"

    summary = audit["summary"]
    assert summary["reconstruction_psnr"] is None and summary["epsilon_lower_bound"] is None
    cells = text_rows([summarize("he", [(load_results(run_dir), 0.9)], [summary])])[0]
    assert cells[0] == "he" and "— (ciphertexts only)" in cells and "— (no DP)" in cells


def test_central_dp_update_is_invertible_while_the_canary_bound_holds(tmp_path, capsys):
    run_dir = tmp_path / "central"
    results = run_server_app_in_process(run_dir, {**RUN, "dp": "central"})
    argv = [str(run_dir), "--shadows", "2", "--restarts", "1", "--iterations", "150"]
    assert cli.main([*argv, "--canaries", "1000"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "consistent with the claim" in printed and "PSNR" in printed
    audit = json.loads((run_dir / AUDIT_DIR / AUDIT_FILE).read_text())

    reconstruction = audit["reconstruction"]
    assert reconstruction["status"] == "reconstructed", reconstruction
    assert reconstruction["psnr"] > 20 and reconstruction["ssim"] > 0.8, reconstruction
    assert "plaintext" in reconstruction["update"]
    assert (run_dir / AUDIT_DIR / GRID_FILE).read_bytes()[:4] == b"\x89PNG"

    canary = audit["canary"]
    assert canary["status"] == "measured" and not canary["violated"]
    assert canary["claimed_epsilon"] == pytest.approx(results["final"]["epsilon"], rel=1e-6)
    assert 0.0 <= canary["epsilon_lower_bound"] <= canary["claimed_epsilon"]
    assert canary["steps"] == 1 and canary["sample_rate"] == 1.0

    # members (training splits), non-members (validation splits), the server's test set:
    # three disjoint sets of examples
    splits = client_splits(load_run(run_dir))
    members = {x.tobytes() for train, _ in splits for x in train.x}
    nonmembers = {x.tobytes() for _, val in splits for x in val.x}
    test = {x.tobytes() for x in server_split("digits", 0.2, 42)[1].x}
    assert len(members) > 1000 and len(nonmembers) > 100
    assert not members & nonmembers and not (members | nonmembers) & test

    row = summarize("dp-central", [(load_results(run_dir), 0.5)], [audit["summary"]])
    table = next(csv.DictReader(io.StringIO(csv_text([row]))))
    for column in AUDIT_COLUMNS:
        assert float(table[column]) == pytest.approx(audit["summary"][column]), column
    assert float(table["mia_auc_low"]) <= float(table["mia_auc"]) <= float(table["mia_auc_high"])
