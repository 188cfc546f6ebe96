"""Fetch the official weights into a bundle directory: streaming HTTP, resumable, sha256-checked, atomic.

A partial download lives next to its target as ``<file>.part`` and is resumed with an HTTP Range request; the
target name only ever holds a complete, verified file (``os.replace``). Entries whose publisher gives no sha256
are pinned on first download: the hash is written into ``manifest.json`` and printed, so later downloads and
``Bundle.load(verify=True)`` check against it.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

from pipeline.bundle import MANIFEST, REQUIRED_ROLES, Bundle, Manifest, ModelFile, read_manifest, sha256_file
from pipeline.errors import MODEL_INVALID, MODEL_MISSING, PipelineError

CHUNK = 1 << 20
TIMEOUT_S = 60


def download_bundle(directory: Path, progress: bool = True, only: tuple[str, ...] = ()) -> Bundle | None:
    """Download every missing file of the bundle in ``directory`` (the official manifest if it has none).

    Returns the loaded ``Bundle`` when complete, else None after saying what is still missing and how to get
    it (the relevance file is computed locally, not downloaded)."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / MANIFEST).is_file():
        manifest = read_manifest(directory)
    else:
        manifest = Manifest.official()
        manifest.write(directory)
    unknown = set(only) - set(manifest.models)
    if unknown:
        raise PipelineError("invalid_parameter", f"no such model in {directory / MANIFEST}: {sorted(unknown)}; "
                                                 f"known: {sorted(manifest.models)}")
    for role in only or tuple(manifest.models):
        entry = manifest.models[role]
        if entry.url is None:
            _say(f"{role}: {entry.file} is not downloaded: {entry.source}")
            continue
        pinned = fetch(entry, directory / entry.file, progress=progress)
        if pinned != entry:
            manifest = manifest.with_entry(role, pinned)
            manifest.write(directory)
            _say(f"{role}: pinned sha256 {pinned.sha256} ({pinned.bytes} bytes) in {directory / MANIFEST}")
    missing = [manifest.models[r].file for r in REQUIRED_ROLES if not (directory / manifest.models[r].file).is_file()]
    if missing:
        _say(f"still missing in {directory}: {', '.join(missing)}")
        if manifest.models["relevance"].file in missing:
            _say(f"compute the relevance file with `python -m pipeline precompute-relevance --bundle {directory}`")
        return None
    return Bundle.load(directory, verify=True)


def fetch(entry: ModelFile, target: Path, progress: bool = True) -> ModelFile:
    """Make ``target`` hold ``entry``'s file; return the entry with sha256 and bytes filled in (pinned)."""
    if target.is_file():
        digest = sha256_file(target)
        if entry.sha256 is None or digest == entry.sha256.lower():
            _say(f"{target.name}: present")
            return _pin(entry, digest, target.stat().st_size)
        _say(f"{target.name}: sha256 {digest} differs from the manifest's {entry.sha256}; downloading again")
    part = target.with_name(target.name + ".part")
    _stream(entry.url, part, progress)
    digest = sha256_file(part)
    if entry.sha256 is not None and digest != entry.sha256.lower():
        part.unlink()
        raise PipelineError(MODEL_INVALID, f"{entry.url} gave sha256 {digest}, expected {entry.sha256}: "
                                           f"the download was corrupted or the file changed upstream")
    size = part.stat().st_size
    if entry.bytes is not None and size != entry.bytes:
        part.unlink()
        raise PipelineError(MODEL_INVALID, f"{entry.url} gave {size} bytes, expected {entry.bytes}")
    os.replace(part, target)
    return _pin(entry, digest, size)


def _pin(entry: ModelFile, digest: str, size: int) -> ModelFile:
    return replace(entry, sha256=entry.sha256 or digest, bytes=entry.bytes if entry.bytes is not None else size)


def _stream(url: str, part: Path, progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (Range request when ``part`` already has bytes)."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "faceedit-pipeline"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # range past the end: the part file is already complete
            return
        raise PipelineError(MODEL_MISSING, f"could not download {url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PipelineError(MODEL_MISSING, f"could not download {url}: {reason}. This machine may have no "
                                           f"internet access: fetch the file elsewhere and copy it to "
                                           f"{part.with_suffix('')}") from exc
    with response:
        if have and response.status != 206:  # the server ignored the range: start over
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length else None
        bar = _bar(part.name.removesuffix(".part"), total, have, progress)
        try:
            with open(part, "ab" if have else "wb") as out:
                while block := response.read(CHUNK):
                    out.write(block)
                    bar.update(len(block))
        except OSError as exc:
            raise PipelineError(MODEL_MISSING, f"download of {url} broke off ({exc}); run the same command "
                                               f"again to resume") from exc
        finally:
            bar.close()
    if total is not None and part.stat().st_size != total:  # a silently closed connection
        raise PipelineError(MODEL_MISSING, f"download of {url} stopped at {part.stat().st_size} of {total} "
                                           f"bytes; run the same command again to resume")


def _bar(name: str, total: int | None, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                disable=not enabled, file=sys.stderr)


def _say(text: str) -> None:
    print(text, file=sys.stderr)
