"""``runs``: list fine-tuning runs with their metrics, promote one into a bundle (see ``pipeline/train/runs.py``)."""

from __future__ import annotations

import argparse


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "runs", help="list fine-tuning runs, promote one into the bundle",
        description="The fine-tuning run registry: `list` shows each run's progress and validation metrics; "
                    "`promote` makes a run's checkpoint the bundle's encoder (the workers load it at their "
                    "next start; every edit's model.encoder names the encoder version it used).",
        epilog="examples:\n  python -m pipeline runs list --root runs\n"
               "  python -m pipeline runs promote runs/celebahq --bundle models --checkpoint best",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="runs under a folder with their metrics")
    listing.add_argument("--root", default="runs", help="folder holding run directories (default: runs)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    promote = actions.add_parser("promote", help="put a run's checkpoint into a bundle")
    promote.add_argument("run", help="run directory")
    promote.add_argument("--bundle", default=None, help="bundle to update (default: the one the run trained from)")
    promote.add_argument("--checkpoint", default="best", help="best (validation), latest, or a step number")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from pipeline.train import runs
    if args.action == "list":
        found = runs.find_runs(Path(args.root))
        if args.json:
            print(json.dumps([{"dir": str(r.dir), "run_id": r.run_id, "step": r.step, "iters": r.iters,
                               "freeze": r.freeze, "primary": r.primary, "best": r.best, "baseline": r.baseline, "last": r.last_val}
                              for r in found], indent=2))
            return 0
        print(f"{'run':<34} {'step':>11} {'freeze':<15} {'best step':>9}  best validation (step 0: start)")
        for r in found:
            best = ", ".join(f"{k} {v:.4f}" for k, v in (r.best or {}).items() if k != "step") or "-"
            start = f" ({r.primary} {r.baseline[r.primary]:.4f})" if r.baseline and r.primary in r.baseline else ""
            print(f"{r.run_id:<34} {f'{r.step}/{r.iters}':>11} {r.freeze:<15} {r.best_step or '-':>9}  "
                  f"{best}{start}")
        return 0
    run_dir = Path(args.run)
    bundle = args.bundle or runs.read_json(run_dir / runs.CONFIG).get("options", {}).get("bundle")
    if not bundle:
        from pipeline.errors import INVALID_PARAMETER, PipelineError

        raise PipelineError(INVALID_PARAMETER, f"{run_dir}: no bundle recorded; pass --bundle")
    record = runs.promote(run_dir, Path(bundle), args.checkpoint)
    print(json.dumps(record, indent=2))
    return 0
