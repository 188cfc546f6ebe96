"""Which model bundle a caller without an explicit ``--bundle`` uses: one rule for the CLI, ``make run`` and the
worker, so that they never disagree.

1. ``MODEL_DIR`` when set: used as it is. If it is not a complete bundle, loading it fails ``model_missing``
   naming the file: an explicit choice is never silently replaced by another bundle.
2. else ``models/official`` (``MODEL_DOWNLOAD_DIR``) when it is a complete bundle (a ``manifest.json`` whose files are all there with
   their sizes: a stat per file, no hashing; ``download`` writes the manifest only once the last file is in).
3. else the random-weight development bundle in ``models/dev`` (built on first use), with the reasons the
   official one is not used: each missing file, why its last download failed, and how to bring it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.weights.bundle import (
    DEV_DIR,
    FEATURE_ROLES,
    MANIFEST,
    OFFICIAL_DIR,
    Bundle,
    Problem,
    bundle_problems,
    read_manifest,
)

log = logging.getLogger(__name__)

EXPLICIT, OFFICIAL, DEV = "explicit", "official", "dev"
DOWNLOAD_DIR_ENV = "MODEL_DOWNLOAD_DIR"


def default_official_dir() -> Path:
    """Where the official weights are downloaded and looked for: ``$MODEL_DOWNLOAD_DIR``, else models/official."""
    return Path(os.environ.get(DOWNLOAD_DIR_ENV) or OFFICIAL_DIR)


@dataclass(frozen=True)
class Choice:
    dir: Path
    kind: str                      # explicit | official | dev
    problems: tuple[Problem, ...]  # explicit: what it lacks; dev: why the official bundle is not used
    official_dir: Path

    @property
    def usable(self) -> bool:
        """True unless an explicit MODEL_DIR is incomplete (the dev bundle is built on demand)."""
        return self.kind != EXPLICIT or not self.problems

    def explain(self) -> str:
        """What is missing and why, and how to fix it; empty when nothing is."""
        if not self.problems:
            return ""
        where = self.dir if self.kind == EXPLICIT else self.official_dir
        lines = [f"{where} is not a complete model bundle:"]
        lines += [f"  {p.file}: {p.reason}" for p in self.problems]
        lines.append(f"To fix: bring the missing files (sources, sizes and sha256 in docs/MODELS.md) into {where}/ "
                     f"and run `python -m pipeline download --dir {where}`: it fetches what it can, checks what "
                     f"is there (no internet needed for copied files) and writes the manifest. Or set MODEL_DIR "
                     f"to a complete bundle.")
        return "\n".join(lines)

    def optional_missing(self) -> list[str]:
        """A line per official file that a complete, real bundle lacks and something needs (``FEATURE_ROLES``;
        a bundle made before SFE was added has no ``sfe``), with how to add it."""
        from pipeline.weights.sources import official_entries

        if bundle_problems(self.dir):
            return []
        manifest = read_manifest(self.dir)
        if manifest.dev:
            return []
        return [f"{entry.file} ({role}: {FEATURE_ROLES[role]}) is not in {self.dir}: `python -m pipeline download "
                f"--dir {self.dir} --only {role}` adds it" for role, entry in official_entries().items()
                if role in FEATURE_ROLES and role not in manifest.models]

    def to_dict(self) -> dict:
        ready = not bundle_problems(self.dir)
        return {"dir": str(self.dir), "kind": self.kind, "usable": self.usable, "official_dir": str(self.official_dir),
                "ready": ready, "dev_bundle": self.kind == DEV or (ready and read_manifest(self.dir).dev),
                "optional_missing": self.optional_missing(),
                "problems": [{"role": p.role, "file": p.file, "reason": p.reason} for p in self.problems],
                "explanation": self.explain()}


def choose_bundle(model_dir: str | Path | None = None, official_dir: Path | None = None,
                  dev_dir: Path = DEV_DIR) -> Choice:
    """The one rule (module docstring). Cheap: reads manifests and stats files, loads no model."""
    official_dir = Path(official_dir) if official_dir else default_official_dir()
    if model_dir:
        return Choice(Path(model_dir), EXPLICIT, tuple(bundle_problems(model_dir)), official_dir)
    if not bundle_problems(official_dir):
        return Choice(official_dir, OFFICIAL, (), official_dir)
    return Choice(Path(dev_dir), DEV, tuple(official_problems(official_dir)), official_dir)


def official_problems(directory: Path) -> list[Problem]:
    """Per official file: missing, or why its last download failed (from ``download.json``)."""
    from pipeline.weights.download import read_download_state
    from pipeline.weights.sources import COMPUTABLE, official_entries

    outcomes = {o.get("role"): o for o in read_download_state(directory).get("outcomes", []) if isinstance(o, dict)}
    problems = []
    for role, entry in official_entries().items():
        outcome = outcomes.get(role, {})
        done = outcome.get("hash") not in (None, "failed") and (directory / str(outcome.get("file"))).is_file()
        if done:
            continue
        here = (directory / entry.file).is_file()
        if outcome.get("hash") == "failed":
            problems.append(Problem(role, entry.file, ("present but refused: " if here else "missing; last download: ")
                                    + str(outcome.get("reason"))))
        elif not here:
            problems.append(Problem(role, entry.file, "missing (never downloaded)"))
        if problems and problems[-1].role == role and role in COMPUTABLE:
            problems[-1] = Problem(role, entry.file, f"{problems[-1].reason}; `download` computes it from the "
                                                     f"generator when no source answers")
    if not problems:
        problems.append(Problem(None, MANIFEST, "the files are here but not checked yet"))
    return problems


def open_bundle(choice: Choice) -> Bundle:
    """Load the chosen bundle, building the development bundle first when it is the choice and absent."""
    if choice.kind == DEV:
        log.warning("using the development bundle in %s:\n%s", choice.dir, choice.explain())
        if bundle_problems(choice.dir):
            from pipeline.weights.dev_bundle import make_dev_bundle

            log.warning("building the development bundle in %s (about 10 CPU-seconds)", choice.dir)
            return make_dev_bundle(choice.dir)
    return Bundle.load(choice.dir)


def find_bundle(model_dir: str | Path | None = None, official_dir: Path | None = None,
                dev_dir: Path = DEV_DIR) -> Bundle:
    """``open_bundle(choose_bundle(...))``: the bundle a caller without an explicit one uses."""
    return open_bundle(choose_bundle(model_dir, official_dir, dev_dir))
