"""Fetch the official weights into a bundle directory: every source in turn, resumable, checked, atomic.

For each file the sources of ``pipeline/weights/sources.py`` are tried in order (``MODEL_MIRROR_URL`` first when set).
An answer is refused, naming the file, the source and the reason, when it is an HTML or other text page (by
``Content-Type`` or by its first bytes), when its size is not the published one, or when its hash is not a
published one (sha256, or the git object id of a GitHub file). A source with no published hash is accepted
only once the file loads as its role's model (``torch.load(weights_only=True)`` and the loader's layout
check), and its sha256 is then pinned. A broken-off transfer resumes with an HTTP ``Range`` request; the target
name only ever holds a complete, checked file (``os.replace``).

One failed file does not stop the others; the run ends with a table of what happened to each. ``manifest.json``
is written only when every file is in place, so a half-finished download never looks like a bundle; progress
and each file's outcome live in ``download.json`` (what ``pipeline/weights/choice.py`` reports as the reason a bundle
is incomplete). Files already present (copied in by hand) are checked the same way and kept, so a machine
without internet finishes a bundle from copied files. When no source of the style statistics answers, they are
computed from the generator (``pipeline/weights/style_stats.py``).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pipeline.errors import INVALID_PARAMETER, PipelineError
from pipeline.weights.bundle import (
    HASH_COMPUTED,
    HASH_PINNED,
    HASH_VERIFIED,
    MANIFEST,
    REQUIRED_ROLES,
    Bundle,
    Manifest,
    ModelFile,
    Source,
    atomic_write_text,
    bundle_problems,
    cached_sha256,
    read_manifest,
    text_instead_of_model,
)
from pipeline.weights.sources import COMPUTABLE, mirror_source, official_entries

CHUNK = 1 << 20
TIMEOUT_S = 60
RESUME_ATTEMPTS = 3
STATE = "download.json"
FAILED = "failed"
RECORDED = "recorded"  # a file an older manifest describes (e.g. a promoted encoder), sha256 recorded there
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/xhtml", "application/javascript")


@dataclass(frozen=True)
class Outcome:
    """What happened to one file: ``hash`` is verified / pinned / computed / failed."""

    role: str
    file: str
    hash: str
    source: str = "-"
    bytes: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.hash != FAILED


@dataclass(frozen=True)
class Report:
    outcomes: tuple[Outcome, ...]
    bundle: Bundle | None  # loaded when the directory now holds a complete bundle

    def table(self) -> str:
        return format_table(self.outcomes)


class _Refused(Exception):
    """This source cannot give this file (the reason names why); the next source is tried."""


class _BrokenOff(Exception):
    """The transfer stopped midway: resumable from the ``.part`` file."""


def download_bundle(directory: str | Path, progress: bool = True, only: tuple[str, ...] = (),
                    entries: dict[str, ModelFile] | None = None, mirror: str | None = None,
                    stats_samples: int | None = None) -> Report:
    """Bring every file of the official bundle (``entries``; default the official table with
    ``$MODEL_SOURCES_FILE``) into ``directory``; with ``only``, fetch just those roles. Never raises for one
    file's failure: the report says, per file, what happened."""
    from pipeline.weights.style_stats import DEFAULT_SAMPLES

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    entries = dict(entries or official_entries())
    unknown = set(only) - set(entries)
    if unknown:
        raise PipelineError(INVALID_PARAMETER, f"no such model: {sorted(unknown)}; known: {sorted(entries)}")
    if (directory / MANIFEST).is_file() and not bundle_problems(directory):
        manifest = read_manifest(directory)
        # a complete bundle stays as it is, unless ``only`` asks for a role it lacks (a bundle made before SFE
        # was added gets it with ``--only sfe``)
        if set(only) <= set(manifest.models):
            outcomes = tuple(Outcome(role, e.file, e.hash or RECORDED, "already here", e.bytes)
                             for role, e in manifest.models.items())
            return Report(outcomes, Bundle.load(directory))

    kept = {role: e for role, e in _present_manifest_entries(directory).items()
            if role in entries and e.file != entries[role].file}  # official names are checked again below
    state = _read_state(directory)
    resolved: dict[str, ModelFile] = {}
    outcomes: dict[str, Outcome] = {}
    for role, entry in entries.items():
        if role in kept:
            resolved[role] = kept[role]
            outcomes[role] = Outcome(role, kept[role].file, kept[role].hash or RECORDED, "already here",
                                     kept[role].bytes)
            continue
        outcome, done = _obtain(role, entry, directory, state, fetch=not only or role in only,
                                progress=progress, mirror=mirror)
        if done is None and role in COMPUTABLE and "generator" in resolved and (not only or role in only):
            outcome, done = _compute_stats(role, entry, directory, resolved["generator"], outcome, state,
                                           stats_samples or DEFAULT_SAMPLES, progress)
        outcomes[role] = outcome
        if done is not None:
            resolved[role] = done
            state["files"][done.file] = {"sha256": done.sha256, "bytes": done.bytes, "url": done.url,
                                         "hash": done.hash}
        state["outcomes"] = [asdict(o) for o in outcomes.values()]
        _write_state(directory, state)

    bundle = None
    if all(role in resolved for role in (*entries, *REQUIRED_ROLES)):
        Manifest(resolved, dev=False).write(directory)
        bundle = Bundle.load(directory)
    state["complete"] = bundle is not None
    _write_state(directory, state)
    return Report(tuple(outcomes.values()), bundle)


# --- one file --------------------------------------------------------------------------------------------------

def fetch_file(role: str, entry: ModelFile, directory: Path, progress: bool = False,
               mirror: str | None = None) -> tuple[Outcome, ModelFile | None]:
    """Bring one file into ``directory`` (checking one already there); its outcome and, when it is in, its
    resolved manifest entry (sha256, bytes, url, hash). Writes no manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    return _obtain(role, entry, directory, _read_state(directory), fetch=True, progress=progress, mirror=mirror)


def _obtain(role: str, entry: ModelFile, directory: Path, state: dict, fetch: bool, progress: bool,
            mirror: str | None) -> tuple[Outcome, ModelFile | None]:
    target = directory / entry.file
    reasons: list[tuple[str, str]] = []  # (where, why)
    if target.is_file():
        try:
            digest, status = _accept(role, entry, None, target, directory, state)
            known = state["files"].get(entry.file, {})
            origin = known.get("url") if known.get("sha256") == digest else None  # where an earlier run got it
            return (Outcome(role, entry.file, status, "already here", target.stat().st_size),
                    _resolved(entry, origin, digest, target.stat().st_size, status))
        except _Refused as exc:
            rejected = target.with_name(target.name + ".rejected")
            os.replace(target, rejected)
            reasons.append(("the file already here", f"{exc} (moved to {rejected.name})"))
    if not fetch:
        return Outcome(role, entry.file, FAILED, reason=_summary(reasons) or "not requested (--only)"), None
    sources = [s for s in (mirror_source(entry, mirror), *entry.sources) if s is not None]
    if not sources:
        reasons.append(("", "no source to download it from"))
    for src in sources:
        try:
            digest, status = _fetch_from(role, entry, src, target, directory, state, progress)
        except _Refused as exc:
            reasons.append((urllib.parse.urlsplit(src.url).netloc, str(exc)))
            _say(f"{entry.file}: {src.url}: {exc}")
            continue
        size = target.stat().st_size
        return Outcome(role, entry.file, status, src.url, size), _resolved(entry, src.url, digest, size, status)
    return Outcome(role, entry.file, FAILED, reason=_summary(reasons)), None


def _summary(reasons: list[tuple[str, str]]) -> str:
    """One line: the reason once when every source gave it, else each source's host and reason."""
    whys = {why for _, why in reasons}
    if len(reasons) > 1 and len(whys) == 1:
        return f"{whys.pop()} (all {len(reasons)} sources)"
    return "; ".join(f"{where}: {why}" if where else why for where, why in reasons)


def _fetch_from(role: str, entry: ModelFile, src: Source, target: Path, directory: Path, state: dict,
                progress: bool) -> tuple[str, str]:
    part = target.with_name(target.name + ".part")
    origin = part.with_name(part.name + ".url")
    if part.exists() and (not origin.is_file() or origin.read_text() != src.url):
        part.unlink()  # a part file from another source cannot be resumed from this one
    origin.write_text(src.url)
    sizes = _expected_sizes(entry, src)
    for attempt in range(RESUME_ATTEMPTS):
        try:
            _stream(src.url, part, sizes, progress)
            break
        except _Refused:
            if not part.exists():
                origin.unlink(missing_ok=True)
            raise
        except _BrokenOff as exc:
            if attempt == RESUME_ATTEMPTS - 1:
                raise _Refused(f"{exc}; run the same command again to resume") from exc
            _say(f"{entry.file}: {exc}; resuming")
    try:
        digest, status = _accept(role, entry, src, part, directory, state)
    except _Refused:
        part.unlink(missing_ok=True)
        raise
    finally:
        origin.unlink(missing_ok=True)
    os.replace(part, target)
    return digest, status


def _accept(role: str, entry: ModelFile, src: Source | None, path: Path, directory: Path,
            state: dict) -> tuple[str, str]:
    """Check a complete file against what is published for it; (its sha256, verified | pinned)."""
    size = path.stat().st_size
    sizes = _expected_sizes(entry, src)
    if sizes and size not in sizes:
        raise _Refused(f"has {size:,} bytes; published: {' or '.join(f'{s:,}' for s in sorted(sizes))}")
    with open(path, "rb") as f:
        what = text_instead_of_model(f.read(4096))
    if what:
        raise _Refused(f"is a web page or text ({what}), not a model file (a login, warning or error page?)")
    digest = cached_sha256(path, directory)
    published = {src.sha256.lower()} if src is not None and src.sha256 else entry.published_sha256
    if published:
        if digest not in published:
            raise _Refused(f"has sha256 {digest}; published: {' or '.join(sorted(published))} (hash mismatch)")
        return digest, HASH_VERIFIED
    blobs = {src.git_blob} if src is not None and src.git_blob else {s.git_blob for s in entry.sources if s.git_blob}
    if blobs:
        blob = git_blob_id(path)
        if blob not in blobs:
            raise _Refused(f"has git object id {blob}; published: {' or '.join(sorted(blobs))} (hash mismatch)")
        return digest, HASH_VERIFIED
    pinned = state["files"].get(entry.file, {})
    if pinned.get("sha256") == digest and pinned.get("hash") == HASH_PINNED:
        return digest, HASH_PINNED  # loaded and pinned on an earlier run
    try:
        check_loads(role, path)
    except PipelineError as exc:
        first = exc.message.replace(str(path), path.name.removesuffix(".part")).split("\n")[0]
        raise _Refused(f"does not load as the {role} model: {first[:300]}") from exc
    return digest, HASH_PINNED


def _expected_sizes(entry: ModelFile, src: Source | None) -> set[int]:
    if src is not None and src.bytes:
        return {src.bytes}
    if src is not None and src.sha256:
        return set()
    return {s.bytes for s in entry.sources if s.bytes and s.sha256}


def _resolved(entry: ModelFile, url: str | None, digest: str, size: int, status: str) -> ModelFile:
    return replace(entry, url=url, sha256=digest, bytes=size, hash=status)


def _compute_stats(role: str, entry: ModelFile, directory: Path, generator: ModelFile, failed: Outcome,
                   state: dict, samples: int, progress: bool) -> tuple[Outcome, ModelFile | None]:
    from pipeline.weights.style_stats import FILE, compute_style_stats_file

    earlier = state.get("computed", {})
    path = directory / FILE
    if (path.is_file() and earlier.get("generator_sha256") == generator.sha256 and earlier.get("samples") == samples
            and earlier.get("sha256") == cached_sha256(path, directory)):  # computed by an earlier run
        done = ModelFile.from_dict(role, earlier["entry"])
        reason = f"no source answered ({failed.reason}); computed by an earlier run"
        return Outcome(role, FILE, HASH_COMPUTED, "computed here", done.bytes, reason), done
    _say(f"{entry.file}: no source answered; computing the style statistics from the generator "
         f"({samples:,} samples)")
    try:
        computed = compute_style_stats_file(directory / generator.file, directory, samples=samples,
                                            progress=progress, license=entry.license)
    except PipelineError as exc:
        return replace(failed, reason=f"{failed.reason}; computing it failed: {exc.message}"), None
    state["computed"] = {"generator_sha256": generator.sha256, "samples": samples, "sha256": computed.sha256,
                         "entry": {k: v for k, v in computed.to_dict().items() if k != "sources"}}
    return Outcome(role, computed.file, HASH_COMPUTED, "computed here", computed.bytes,
                   f"no source answered ({failed.reason})"), computed


def check_loads(role: str, path: Path) -> None:
    """Load ``path`` as ``role``'s model with the loader the pipeline uses; PipelineError if it does not."""
    from pipeline.models.checkpoints import read_checkpoint

    if role == "generator":
        from pipeline.models.stylegan2 import load_generator

        load_generator(path, impl="ref")
    elif role == "encoder":
        from pipeline.models.e4e import load_encoder

        load_encoder(path, channels_last=False)
    elif role == "clip":
        from pipeline.models.clip_model import load_clip

        load_clip(path)
    elif role == "relevance":
        from pipeline.weights.relevance_files import load_relevance_matrix

        load_relevance_matrix(path)
    elif role == "relevance_stats":
        from pipeline.weights.relevance_files import load_style_stats

        load_style_stats(path)
    elif role == "sfe":
        from pipeline.models.sfe import load_sfe

        load_sfe(path)
    else:
        read_checkpoint(path)


# --- HTTP --------------------------------------------------------------------------------------------------------

def _stream(url: str, part: Path, sizes: set[int], progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (a Range request when ``part`` has bytes); redirects followed."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "faceedit-pipeline"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # range past the end: the part file is already complete
            return
        raise _Refused(f"HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise _Refused(_network_reason(exc)) from exc
    with response:
        ctype = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype.startswith(_TEXT_TYPES):
            raise _Refused(f"answered {ctype} (a web page, not the file)")
        if have and response.status != 206:  # the server ignored the range: start over
            have = 0
        length = content_length(response.headers.get("Content-Length"))
        total = have + length if length is not None else None
        if total is not None and sizes and total not in sizes:
            raise _Refused(f"announces {total:,} bytes; published: {' or '.join(f'{s:,}' for s in sorted(sizes))}")
        bar = _bar(part.name.removesuffix(".part"), total, have, progress)
        try:
            with open(part, "ab" if have else "wb") as out:
                while block := response.read(CHUNK):
                    out.write(block)
                    bar.update(len(block))
        except (OSError, http.client.HTTPException) as exc:
            raise _BrokenOff(f"the transfer broke off at {part.stat().st_size:,} bytes ({exc})") from exc
        finally:
            bar.close()
    if total is not None and part.stat().st_size != total:  # a silently closed connection
        raise _BrokenOff(f"the transfer stopped at {part.stat().st_size:,} of {total:,} bytes")


def _network_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, socket.gaierror):
        return f"offline? the host name does not resolve ({reason.strerror})"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError | socket.timeout):
        return f"timed out after {TIMEOUT_S} s"
    return f"network error: {reason}"


def git_blob_id(path: Path) -> str:
    """The git object id of the file's content (what a GitHub tree at a commit names it by)."""
    h = hashlib.sha1(usedforsecurity=False)
    h.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


# --- state, report -----------------------------------------------------------------------------------------------

def read_download_state(directory: Path) -> dict:
    """``download.json``: the files checked so far and the last run's outcome per file."""
    try:
        state = json.loads((Path(directory) / STATE).read_text())
    except (OSError, ValueError):
        return {"files": {}, "outcomes": []}
    return state if isinstance(state, dict) and isinstance(state.get("files"), dict) else {"files": {}, "outcomes": []}


_read_state = read_download_state


def _write_state(directory: Path, state: dict) -> None:
    atomic_write_text(directory / STATE, json.dumps(state, indent=1) + "\n")


def _present_manifest_entries(directory: Path) -> dict[str, ModelFile]:
    """Entries of an existing manifest whose files are here with their size and a recorded sha256 (e.g. a
    promoted encoder, kept as they are when a download completes the bundle around them)."""
    try:
        manifest = read_manifest(directory)
    except PipelineError:
        return {}
    problems = {p.role for p in bundle_problems(directory)}
    return {role: e for role, e in manifest.models.items()
            if role not in problems and e.sha256 and e.bytes is not None and not manifest.dev}


def format_table(outcomes: tuple[Outcome, ...] | list[Outcome]) -> str:
    rows = [("file", "source used", "bytes", "hash", "reason")]
    rows += [(o.file, o.source, f"{o.bytes:,}" if o.bytes is not None else "-", o.hash, o.reason or "")
             for o in outcomes]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]).rstrip()
                     for r in rows)



def content_length(value: str | None) -> int | None:
    """A Content-Length as a byte count, or None for anything but plain ASCII digits (``str.isdigit`` takes "²",
    which ``int`` then refuses: a mirror's bad header must not crash the download)."""
    value = (value or "").strip()
    return int(value) if re.fullmatch(r"[0-9]{1,18}", value) else None


def _bar(name: str, total: int | None, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                disable=not enabled, file=sys.stderr)


def _say(text: str) -> None:
    print(text, file=sys.stderr)
