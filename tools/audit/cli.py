"""``fl-audit RUN_DIR``: the privacy audit of one finished run (``python -m tools.audit``).

Runs the three attacks of :mod:`tools.audit.run` on a run's results directory and
writes ``<RUN_DIR>/audit/audit.json`` with the reconstruction grid. Exit code 0 when
the audit ran (an attack that does not apply, or lacks an input such as the HE key,
says why), 1 when the canary audit refutes the run's ε claim (its lower bound is above
the claim: the DP implementation is broken), 2 for a run it cannot audit at all or an
attack that failed with an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from tools.audit.run import AUDIT_DIR, AUDIT_FILE, AuditError, AuditOptions, audit_run


def parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    defaults = AuditOptions()
    p = argparse.ArgumentParser(
        prog="fl-audit",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, help="a finished run's results directory")
    p.add_argument(
        "--clients",
        type=int,
        default=0,
        help="simulated clients of the run (0 = inferred from its rounds when every "
        "client took part in them)",
    )
    p.add_argument(
        "--he-secret-context",
        type=Path,
        default=None,
        help="the data holders' secret HE context (HE runs; default: the simulated nodes' "
        "own, $FL_NODE_STATE_DIR/he/secret.ctx)",
    )
    p.add_argument("--out", type=Path, default=None, help=f"output folder (RUN_DIR/{AUDIT_DIR})")
    p.add_argument("--shadows", type=int, default=defaults.shadows, help="LiRA shadow models")
    p.add_argument(
        "--shadow-epochs",
        type=int,
        default=0,
        help="epochs per shadow model (0 = rounds x local-epochs, at most 10)",
    )
    p.add_argument(
        "--batch", type=int, default=defaults.batch, help="examples of the inverted client (1-4)"
    )
    p.add_argument("--restarts", type=int, default=defaults.restarts, help="inversion restarts")
    p.add_argument(
        "--iterations", type=int, default=defaults.iterations, help="inversion steps per restart"
    )
    p.add_argument(
        "--canaries", type=int, default=0, help="canaries (0 = 640 local DP, 2000 central DP)"
    )
    p.add_argument("--seed", type=int, default=0, help="seeds every attack's randomness")
    p.add_argument("--json", action="store_true", help="print the whole audit as JSON")
    return p


def _default_secret() -> Path:
    from fl_app.config import node_state_dir
    from fl_app.he.keys import KEY_DIR, SECRET_FILE

    return node_state_dir({}) / KEY_DIR / SECRET_FILE


def describe(audit: dict[str, Any]) -> list[str]:
    """Return the audit as lines a person reads: each attack, its adversary, its numbers."""
    lines = []
    membership = audit["membership"]
    if membership.get("status") == "measured":
        lira, loss = membership["lira"], membership["loss"]
        lines += [
            f"Membership inference ({membership['adversary']}):",
            f"  LiRA, {membership['shadows']} shadows: AUC {lira['auc']:.3f} "
            f"[{lira['auc_low']:.3f}, {lira['auc_high']:.3f}], TPR@1%FPR "
            f"{lira['tpr_at_1pct_fpr']:.3f}, TPR@0.1%FPR {lira['tpr_at_0_1pct_fpr']:.3f}",
            f"  loss threshold: AUC {loss['auc']:.3f} [{loss['auc_low']:.3f}, "
            f"{loss['auc_high']:.3f}]; {membership['num_members']} members vs as many "
            "non-members (small samples: read the interval)",
        ]
    else:
        lines.append(f"Membership inference: — ({membership.get('reason', 'not measured')})")
    reconstruction = audit["reconstruction"]
    if reconstruction.get("status") == "reconstructed":
        lines += [
            f"Reconstruction ({reconstruction['adversary']}; {reconstruction['update']}):",
            f"  PSNR {reconstruction['psnr']:.1f} dB, SSIM {reconstruction['ssim']:.3f} "
            f"(best of {reconstruction['restarts']} restarts x "
            f"{reconstruction['iterations']} steps); grid: {reconstruction.get('grid', '—')}",
        ]
    else:
        lines.append(f"Reconstruction: — ({reconstruction.get('reason', 'not measured')})")
    canary = audit["canary"]
    if canary.get("status") == "measured":
        verdict = "REFUTES the claim" if canary["violated"] else "consistent with the claim"
        lines += [
            f"Empirical epsilon ({canary['mechanism']}):",
            f"  lower bound {canary['epsilon_lower_bound']:.3f} at "
            f"{canary['confidence']:.0%} vs claimed {canary['claimed_epsilon']:.3f} "
            f"(delta {canary['delta']:.1e}; {canary['num_correct']} of "
            f"{canary['num_guesses']} guesses right, {canary['num_canaries']} canaries): "
            f"{verdict}",
        ]
    else:
        lines.append(f"Empirical epsilon: — ({canary.get('reason', 'not measured')})")
    lines.append(f"Audit took {audit['seconds']:.1f} s")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fl-audit``; return the exit code."""
    args = parser().parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=160)
    if args.shadows < 2 or args.shadows % 2 or not 1 <= args.batch <= 64:
        console.print("[red]error:[/red] --shadows must be even and >= 2, --batch in 1..64")
        return 2
    options = AuditOptions(
        shadows=args.shadows,
        shadow_epochs=max(args.shadow_epochs, 0),
        batch=args.batch,
        restarts=args.restarts,
        iterations=args.iterations,
        canaries=args.canaries,
        seed=args.seed,
    )
    try:
        audit = audit_run(
            args.run_dir.resolve(),
            num_clients=args.clients or None,
            he_secret=args.he_secret_context or _default_secret(),
            options=options,
            out=args.out,
        )
    except AuditError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False)
        return 2
    if args.json:
        print(json.dumps(audit, indent=2))
    else:
        for line in describe(audit):
            console.print(line, highlight=False)
        out = args.out or args.run_dir / AUDIT_DIR
        console.print(f"Written: {out / AUDIT_FILE}", highlight=False)
    if audit["canary"].get("violated"):
        return 1
    parts = (audit[k] for k in ("membership", "reconstruction", "canary"))
    return 2 if any(part.get("status") == "failed" for part in parts) else 0


if __name__ == "__main__":
    sys.exit(main())
