"""The model bundle: a directory of weight files described by ``manifest.json``.

A bundle names one file per role (``generator``, ``encoder``, ``clip``, ``relevance``, optionally
``relevance_stats`` and ``identity``) with its license, size and sha256, where the file on disk came from (``url``,
``hash``: ``verified`` against a published hash, ``pinned`` after a load check, ``computed`` here) and the sources
it can be fetched from. ``Bundle.load`` checks presence and size (cheap, every start) and, when asked, the sha256;
hashes are cached by (size, mtime) in ``cache/sha256.json`` so a restart does not re-hash 1.9 GB.

A ``manifest.json`` only ever describes a complete bundle: ``download`` keeps its progress in ``download.json``
and writes the manifest once every required file is in place, and ``bundle_problems`` tells a complete bundle
from an unfinished one by a stat per file. Filling bundles lives elsewhere (``pipeline/weights/download.py``,
``pipeline/weights/dev_bundle.py``, ``pipeline/weights/style_stats.py``); choosing one in ``pipeline/weights/choice.py``. This module
imports no other pipeline module but the errors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from pipeline.errors import MODEL_INVALID, MODEL_MISSING, PipelineError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
REQUIRED_ROLES = ("generator", "encoder", "clip", "relevance")
# relevance_stats: per-channel style mean/std beside StyleCLIP's fs3.npy; identity: for optimize mode;
# sfe: StyleFeatureEditor's Inverter and Feature Editor (the faithful-likeness inversion beside e4e)
OPTIONAL_ROLES = ("relevance_stats", "identity", "sfe")
# optional roles without which something is unavailable (choose-bundle says so, and how to add the file)
FEATURE_ROLES = {"sfe": "the StyleFeatureEditor inversion (faithful likeness)"}
ROLES = REQUIRED_ROLES + OPTIONAL_ROLES

# Default places, relative to the checkout: downloads go to models/official, the dev bundle to models/dev.
REPO_ROOT = Path(__file__).resolve().parents[2]
OFFICIAL_DIR = REPO_ROOT / "models" / "official"
DEV_DIR = REPO_ROOT / "models" / "dev"

DEV_WARNING = ("WARNING: using the DEVELOPMENT model bundle (random weights): edits are meaningless noise "
               "until the real weights are downloaded (`python -m pipeline download`).")

HASH_VERIFIED, HASH_PINNED, HASH_COMPUTED = "verified", "pinned", "computed"


@dataclass(frozen=True)
class Source:
    """One place a file can be fetched from, with what its publisher says about it (None: nothing).

    ``git_blob`` is the git object id of the file in a pinned commit's tree (GitHub raw files): a publisher's
    hash as good as a sha256 (SHA-1 of ``blob <size>\\0`` + content)."""

    url: str
    sha256: str | None = None
    bytes: int | None = None
    git_blob: str | None = None
    note: str = ""

    @property
    def published(self) -> bool:
        return bool(self.sha256 or self.git_blob)

    @classmethod
    def from_dict(cls, d: dict | str) -> Source:
        if isinstance(d, str):
            return cls(d)
        if not isinstance(d, dict) or not isinstance(d.get("url"), str):
            raise PipelineError(MODEL_INVALID, f"a source must be a URL or an object with a url, got {d!r}")
        return cls(d["url"], d.get("sha256"), d.get("bytes"), d.get("git_blob"), d.get("note", ""))

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}


@dataclass(frozen=True)
class ModelFile:
    """One manifest entry: the file on disk (``sha256``/``bytes`` of it; None where unknown), where it came
    from (``url``; None when made locally), how its hash is known (``hash``), its ``license`` and a human
    ``source``; ``sources`` are the places to fetch it from, in order; ``computed`` records how a locally
    computed file was made (command, samples, seed)."""

    file: str
    url: str | None
    sha256: str | None
    bytes: int | None
    license: str
    source: str
    sources: tuple[Source, ...] = ()
    hash: str | None = None
    computed: dict | None = None

    @classmethod
    def from_dict(cls, role: str, d: dict) -> ModelFile:
        """Reads every manifest version: the first had exactly file/url/sha256/bytes/license/source."""
        if not isinstance(d, dict):
            raise PipelineError(MODEL_INVALID, f"manifest entry {role!r} must be an object")
        missing = {"file", "license", "source"} - set(d)
        if missing:
            raise PipelineError(MODEL_INVALID, f"manifest entry {role!r} lacks {sorted(missing)}")
        sources = d.get("sources") or []
        if not isinstance(sources, list):
            raise PipelineError(MODEL_INVALID, f"manifest entry {role!r}: sources must be a list")
        return cls(file=d["file"], url=d.get("url"), sha256=d.get("sha256"), bytes=d.get("bytes"),
                   license=d["license"], source=d["source"], sources=tuple(Source.from_dict(s) for s in sources),
                   hash=d.get("hash"), computed=d.get("computed"))

    def to_dict(self) -> dict:
        out = {"file": self.file, "url": self.url, "sha256": self.sha256, "bytes": self.bytes,
               "license": self.license, "source": self.source}
        if self.sources:
            out["sources"] = [s.to_dict() for s in self.sources]
        if self.hash:
            out["hash"] = self.hash
        if self.computed:
            out["computed"] = self.computed
        return out

    @property
    def published_sha256(self) -> set[str]:
        """Every sha256 a publisher gives for this file (copies may differ, e.g. a full or a g_ema-only
        checkpoint): a file with one of them is the right file."""
        return {s.sha256.lower() for s in self.sources if s.sha256}


# --- the manifest ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Manifest:
    """``manifest.json``: one ``ModelFile`` per role, plus ``dev`` (random weights, results meaningless)."""

    models: dict[str, ModelFile]
    dev: bool = False
    extra: dict = field(default_factory=dict)  # other keys (e.g. a dev bundle's config), kept on round trip

    @classmethod
    def from_json(cls, text: str, where: str = MANIFEST) -> Manifest:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PipelineError(MODEL_INVALID, f"{where} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("dev"), bool):
            raise PipelineError(MODEL_INVALID, f'{where} must be an object with "dev": true|false')
        models = {role: ModelFile.from_dict(role, raw[role]) for role in ROLES if role in raw}
        extra = {k: v for k, v in raw.items() if k not in ROLES and k != "dev"}
        return cls(models, raw["dev"], extra)

    def to_json(self) -> str:
        out: dict = {"dev": self.dev}
        out.update({role: self.models[role].to_dict() for role in ROLES if role in self.models})
        out.update(self.extra)
        return json.dumps(out, indent=2) + "\n"

    def with_entry(self, role: str, entry: ModelFile) -> Manifest:
        return replace(self, models={**self.models, role: entry})

    def write(self, directory: Path) -> None:
        atomic_write_text(Path(directory) / MANIFEST, self.to_json())


def read_manifest(directory: str | Path) -> Manifest:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise PipelineError(MODEL_MISSING, f"{MANIFEST} not found in {directory}: {how_to_get(directory)}")
    return Manifest.from_json(path.read_text(), str(path))


# --- the bundle ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    """Why a directory is not a complete bundle: one missing or wrong file (``role`` None: the manifest)."""

    role: str | None
    file: str
    reason: str

    def line(self) -> str:
        return f"{self.file}: {self.reason}"


def bundle_problems(directory: str | Path) -> list[Problem]:
    """What keeps ``directory`` from being a complete bundle, by one stat per file (no hashing); [] if none."""
    directory = Path(directory)
    try:
        manifest = read_manifest(directory)
    except PipelineError as exc:
        reason = "no manifest (no complete download yet)" if exc.code == MODEL_MISSING else exc.message
        return [Problem(None, MANIFEST, reason)]
    problems = [Problem(role, "?", f"{MANIFEST} has no {role!r} entry")
                for role in REQUIRED_ROLES if role not in manifest.models]
    for role, entry in manifest.models.items():
        path = directory / entry.file
        if not path.is_file():
            problems.append(Problem(role, entry.file, "missing"))
        elif entry.bytes is not None and path.stat().st_size != entry.bytes:
            problems.append(Problem(role, entry.file, f"has {path.stat().st_size:,} bytes, the manifest says "
                                                      f"{entry.bytes:,}: truncated or another file"))
    return problems


@dataclass(frozen=True)
class Bundle:
    """A checked model directory. Build it with ``Bundle.load``."""

    dir: Path
    manifest: Manifest

    @classmethod
    def load(cls, directory: str | Path, verify: bool = False) -> Bundle:
        """Check that every required file is present with the manifest's size; with ``verify`` also its sha256.

        Raises ``PipelineError('model_missing')`` naming the file and the command that provides it, or
        ``PipelineError('model_invalid')`` for a wrong size or hash."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        bundle = cls(directory, manifest)
        for role in REQUIRED_ROLES:
            if role not in manifest.models:
                raise PipelineError(MODEL_INVALID, f"{directory / MANIFEST} has no {role!r} entry")
        for role in manifest.models:
            bundle._check(role, verify)
        if manifest.dev:
            log.warning(DEV_WARNING)
        return bundle

    @property
    def is_dev(self) -> bool:
        return self.manifest.dev

    def has(self, role: str) -> bool:
        return role in self.manifest.models

    def path(self, role: str) -> Path:
        if role not in self.manifest.models:
            raise PipelineError(MODEL_MISSING, f"the bundle in {self.dir} has no {role!r} model")
        return self.dir / self.manifest.models[role].file

    @property
    def cache_dir(self) -> Path:
        """Derived data (text directions, hash cache); safe to delete."""
        return self.dir / "cache"

    def file_sha256(self, role: str) -> str:
        """The file's actual sha256 (cached by size and mtime)."""
        return cached_sha256(self.path(role), self.dir)

    def version(self, role: str) -> str:
        """A short id of the file's content (first 12 hex digits of its sha256)."""
        return self.file_sha256(role)[:12]

    def _check(self, role: str, verify: bool) -> None:
        entry = self.manifest.models[role]
        path = self.dir / entry.file
        if not path.is_file():
            raise PipelineError(MODEL_MISSING, f"{entry.file} not found in {self.dir}: {how_to_get(self.dir)}")
        size = path.stat().st_size
        if entry.bytes is not None and size != entry.bytes:
            raise PipelineError(MODEL_INVALID, f"{path} has {size} bytes, the manifest says {entry.bytes}: "
                                               f"the file is truncated or not the one named; download it again")
        if verify and entry.sha256 is not None:
            actual = self.file_sha256(role)
            if actual != entry.sha256.lower():
                raise PipelineError(MODEL_INVALID, f"{path} has sha256 {actual}, the manifest says "
                                                   f"{entry.sha256}: the file is corrupt or not the one named")


def pin_entry(directory: str | Path, role: str) -> ModelFile:
    """Record the current sha256 and size of ``role``'s file in the manifest (after we wrote the file)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    entry = manifest.models[role]
    path = directory / entry.file
    pinned = replace(entry, sha256=cached_sha256(path, directory), bytes=path.stat().st_size)
    manifest.with_entry(role, pinned).write(directory)
    return pinned


def set_computed_relevance(directory: str | Path, file: str, source: str) -> ModelFile:
    """Point the manifest's relevance entry at a file we computed (dropping StyleCLIP's separate stats file)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    old = manifest.models["relevance"]
    entry = ModelFile(file=file, url=None, sha256=None, bytes=None, license=old.license, source=source,
                      hash=HASH_COMPUTED)
    models = {role: e for role, e in manifest.models.items() if role != "relevance_stats"}
    replace(manifest, models={**models, "relevance": entry}).write(directory)
    return pin_entry(directory, "relevance")


def how_to_get(directory: str | Path) -> str:
    return (f"run `python -m pipeline download --dir {directory}` (needs internet, or the files copied in by "
            f"hand: docs/MODELS.md) or `python -m pipeline make-dev-bundle {directory}`")


# --- what a model file is not ---------------------------------------------------------------------------------

def text_instead_of_model(head: bytes) -> str | None:
    """What a model file's first bytes say when they are a web page or other text saved in its place (a captive
    portal, a hub's login or warning page, a JSON error), else None. Every model format we read starts binary:
    zip (``PK``, torch and npz), pickle (``\\x80``), ``\\x93NUMPY``."""
    text = head[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if not text:
        return "an empty file"
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in text:
        return "an HTML page"
    if text.startswith(b"<?xml"):
        return "an XML document"
    if b"\x00" in text:
        return None
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(text) - 3:  # not just a character cut at the end of the sample
            return None
        decoded = text[:exc.start].decode("utf-8")
    return "a text file" if all(c.isprintable() or c in "\t\r\n" for c in decoded) else None


# --- hashing with a (size, mtime) cache ------------------------------------------------------------------------

def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cached_sha256(path: Path, bundle_dir: Path) -> str:
    """``path``'s sha256, remembered by (size, mtime) in ``<bundle_dir>/cache/sha256.json``."""
    return _hashes.sha256(Path(path), Path(bundle_dir) / "cache" / "sha256.json")


class _HashCache:
    """Remembers file hashes keyed by (path, size, mtime_ns); persisted best-effort (bundles may be read-only)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._memory: dict[tuple[str, int, int], str] = {}

    def sha256(self, path: Path, cache_file: Path) -> str:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        with self._lock:
            if key in self._memory:
                return self._memory[key]
            stored = self._read(cache_file).get(path.name)
            if stored and stored.get("bytes") == st.st_size and stored.get("mtime_ns") == st.st_mtime_ns:
                digest = stored["sha256"]
            else:
                digest = sha256_file(path)
                self._store(cache_file, path.name, {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
                                                    "sha256": digest})
            self._memory[key] = digest
            return digest

    @staticmethod
    def _read(cache_file: Path) -> dict:
        try:
            data = json.loads(cache_file.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def _store(self, cache_file: Path, name: str, record: dict) -> None:
        data = self._read(cache_file)
        data[name] = record
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cache_file, json.dumps(data, indent=1))
        except OSError as exc:  # a read-only bundle still works; it just re-hashes on the next start
            log.info("could not write the hash cache %s: %s", cache_file, exc)


_hashes = _HashCache()


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
