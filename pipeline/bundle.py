"""The model bundle: a directory of weight files described by ``manifest.json``.

A bundle names one file per role (``generator``, ``encoder``, ``clip``, ``relevance``, optionally ``identity``)
with where it comes from, its license, its size and its sha256. ``Bundle.load`` checks presence and size (cheap,
every start) and, when asked, the sha256; verified hashes are cached by (size, mtime) in ``cache/sha256.json``
so a worker restart does not re-hash 1.6 GB. The files themselves come from ``download`` (official weights,
needs internet: ``pipeline/download.py``) or ``make_dev_bundle`` (tiny random weights in the official formats,
for development and tests: ``pipeline/dev_bundle.py``).
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
# relevance_stats: the std file that StyleCLIP publishes beside its fs3.npy; identity: for optimize mode
OPTIONAL_ROLES = ("relevance_stats", "identity")
ROLES = REQUIRED_ROLES + OPTIONAL_ROLES

# Default places, relative to the checkout: downloads go to models/official, the dev bundle to models/dev.
REPO_ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_DIR = REPO_ROOT / "models" / "official"
DEV_DIR = REPO_ROOT / "models" / "dev"

DEV_WARNING = ("WARNING: using the DEVELOPMENT model bundle (random weights): edits are meaningless noise "
               "until the real weights are downloaded (`python -m pipeline download`).")


@dataclass(frozen=True)
class ModelFile:
    """One manifest entry. ``sha256``/``bytes`` may be None where the publisher gives none: ``download`` then
    pins them on first download (and prints them) instead of us inventing a value."""

    file: str
    url: str | None
    sha256: str | None
    bytes: int | None
    license: str
    source: str

    @classmethod
    def from_dict(cls, role: str, d: dict) -> ModelFile:
        missing = {"file", "url", "sha256", "bytes", "license", "source"} - set(d)
        if missing:
            raise PipelineError(MODEL_INVALID, f"manifest entry {role!r} lacks {sorted(missing)}")
        return cls(**{k: d[k] for k in ("file", "url", "sha256", "bytes", "license", "source")})


# --- the official weights ------------------------------------------------------------------------------------
# The original hosts are Google Drive folders (rosinality, omertov), which need an interactive confirmation for
# large files; the URLs below are direct-download copies of the same files. Their publishers give no sha256,
# so `download` pins it on first download.

STYLEGAN2_FFHQ = ModelFile(
    file="stylegan2-ffhq-config-f.pt",
    url="https://huggingface.co/akhaliq/jojogan-stylegan2-ffhq-config-f/resolve/main/stylegan2-ffhq-config-f.pt",
    sha256=None,
    bytes=None,
    license="NVIDIA Source Code License-NC (non-commercial use only)",
    source="NVIDIA StyleGAN2 FFHQ config-f, converted to PyTorch by rosinality/stylegan2-pytorch "
           "(original: https://drive.google.com/file/d/1EM87UquaoQmk17Q8d5kYIAHqu0dkYqdT)",
)
E4E_FFHQ = ModelFile(
    file="e4e_ffhq_encode.pt",
    url="https://huggingface.co/AIRI-Institute/HairFastGAN/resolve/main/pretrained_models/encoder4editing/"
        "e4e_ffhq_encode.pt",
    sha256=None,
    bytes=None,
    license="MIT (code, omertov/encoder4editing); weights derived from the NVIDIA NC-licensed generator: "
            "non-commercial use only",
    source="omertov/encoder4editing FFHQ inversion encoder "
           "(original: https://drive.google.com/file/d/1cUv_reLE6k3604or78EranS7XzuVMWeO)",
)
# OpenAI publishes the sha256 as the URL's path component (and in the clip package's `_MODELS`).
CLIP_VIT_B32 = ModelFile(
    file="ViT-B-32.pt",
    url="https://openaipublic.azureedge.net/clip/models/"
        "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    sha256="40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
    bytes=None,
    license="MIT (OpenAI CLIP)",
    source="openai/CLIP ViT-B/32 TorchScript archive",
)
# StyleCLIP's published relevance matrix (fs3) and style statistics for the FFHQ generator, from the
# repository's git tree (MIT). `load_relevance` reads S_mean_std from beside fs3.npy. Computing them ourselves
# (`precompute-relevance`) takes hours on a GPU for the 1024 generator; it replaces both entries with one .npz.
STYLECLIP_NPY = "https://github.com/orpatashnik/StyleCLIP/raw/main/global_torch/npy/ffhq/"
RELEVANCE_FFHQ = ModelFile(
    file="fs3.npy",
    url=STYLECLIP_NPY + "fs3.npy",
    sha256=None,
    bytes=None,
    license="MIT (orpatashnik/StyleCLIP); computed from the NC-licensed generator: non-commercial use only",
    source="StyleCLIP global directions relevance matrix fs3 for FFHQ (orpatashnik/StyleCLIP "
           "global_torch/npy/ffhq/fs3.npy)",
)
RELEVANCE_STATS_FFHQ = ModelFile(
    file="S_mean_std",
    url=STYLECLIP_NPY + "S_mean_std",
    sha256=None,
    bytes=None,
    license=RELEVANCE_FFHQ.license,
    source="StyleCLIP per-channel style mean and std for FFHQ (orpatashnik/StyleCLIP global_torch/npy/ffhq/"
           "S_mean_std, a pickle of numpy arrays read with a numpy-only unpickler)",
)
OFFICIAL = {"generator": STYLEGAN2_FFHQ, "encoder": E4E_FFHQ, "clip": CLIP_VIT_B32, "relevance": RELEVANCE_FFHQ,
            "relevance_stats": RELEVANCE_STATS_FFHQ}


# --- the manifest ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Manifest:
    """``manifest.json``: one ``ModelFile`` per role, plus ``dev`` (random weights, results meaningless)."""

    models: dict[str, ModelFile]
    dev: bool = False
    extra: dict = field(default_factory=dict)  # other keys (e.g. a dev bundle's config), kept on round trip

    @classmethod
    def official(cls) -> Manifest:
        return cls(dict(OFFICIAL), dev=False)

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
        out.update({role: asdict(self.models[role]) for role in ROLES if role in self.models})
        out.update(self.extra)
        return json.dumps(out, indent=2) + "\n"

    def with_entry(self, role: str, entry: ModelFile) -> Manifest:
        return replace(self, models={**self.models, role: entry})

    def write(self, directory: Path) -> None:
        _atomic_write_text(Path(directory) / MANIFEST, self.to_json())


def read_manifest(directory: str | Path) -> Manifest:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise PipelineError(MODEL_MISSING, f"{MANIFEST} not found in {directory}: {_how_to_get(directory)}")
    return Manifest.from_json(path.read_text(), str(path))


# --- the bundle ------------------------------------------------------------------------------------------------

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
        return _hashes.sha256(self.path(role), self.cache_dir / "sha256.json")

    def version(self, role: str) -> str:
        """A short id of the file's content (first 12 hex digits of its sha256)."""
        return self.file_sha256(role)[:12]

    def _check(self, role: str, verify: bool) -> None:
        entry = self.manifest.models[role]
        path = self.dir / entry.file
        if not path.is_file():
            raise PipelineError(MODEL_MISSING, f"{entry.file} not found in {self.dir}: {_how_to_get(self.dir)}")
        size = path.stat().st_size
        if entry.bytes is not None and size != entry.bytes:
            raise PipelineError(MODEL_INVALID, f"{path} has {size} bytes, the manifest says {entry.bytes}: "
                                               f"the file is truncated or not the one named; download it again")
        if verify and entry.sha256 is not None:
            actual = self.file_sha256(role)
            if actual != entry.sha256.lower():
                raise PipelineError(MODEL_INVALID, f"{path} has sha256 {actual}, the manifest says "
                                                   f"{entry.sha256}: the file is corrupt or not the one named")


def find_bundle(*candidates: str | Path | None, dev_dir: Path = DEV_DIR) -> Bundle:
    """The first of ``candidates`` (then ``models/official``) that holds a ``manifest.json``, loaded; else the
    development bundle in ``dev_dir``, built on first use, with a loud warning. For callers with no explicit
    bundle (the CLI without ``--bundle``, ``make run``); an explicit choice should use ``Bundle.load``."""
    for candidate in (*candidates, OFFICIAL_DIR):
        if candidate and (Path(candidate) / MANIFEST).is_file():
            return Bundle.load(candidate)
    log.warning("no model bundle in %s; using the development bundle in %s",
                ", ".join(str(c) for c in (*candidates, OFFICIAL_DIR) if c), dev_dir)
    if (Path(dev_dir) / MANIFEST).is_file():
        return Bundle.load(dev_dir)
    log.warning("building the development bundle in %s (about 10 CPU-seconds)", dev_dir)
    return make_dev_bundle(dev_dir)


def pin_entry(directory: str | Path, role: str) -> ModelFile:
    """Record the current sha256 and size of ``role``'s file in the manifest (after we wrote the file)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    entry = manifest.models[role]
    path = directory / entry.file
    pinned = replace(entry, sha256=_hashes.sha256(path, directory / "cache" / "sha256.json"),
                     bytes=path.stat().st_size)
    manifest.with_entry(role, pinned).write(directory)
    return pinned


def set_computed_relevance(directory: str | Path, file: str, source: str) -> ModelFile:
    """Point the manifest's relevance entry at a file we computed (dropping StyleCLIP's separate stats file)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    old = manifest.models["relevance"]
    entry = ModelFile(file=file, url=None, sha256=None, bytes=None, license=old.license, source=source)
    models = {role: e for role, e in manifest.models.items() if role != "relevance_stats"}
    replace(manifest, models={**models, "relevance": entry}).write(directory)
    return pin_entry(directory, "relevance")


def _how_to_get(directory: str | Path) -> str:
    return (f"run `python -m pipeline download --dir {directory}` (needs internet) "
            f"or `python -m pipeline make-dev-bundle {directory}`")


# --- hashing with a (size, mtime) cache ------------------------------------------------------------------------

def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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
            _atomic_write_text(cache_file, json.dumps(data, indent=1))
        except OSError as exc:  # a read-only bundle still works; it just re-hashes on the next start
            log.info("could not write the hash cache %s: %s", cache_file, exc)


_hashes = _HashCache()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# The two ways to fill a bundle live in their own modules; re-exported here because they are bundle operations.
def download(directory: str | Path, progress: bool = True, only: tuple[str, ...] = ()) -> Bundle | None:
    from pipeline.download import download_bundle

    return download_bundle(Path(directory), progress=progress, only=only)


def make_dev_bundle(directory: str | Path, size: int = 256, seed: int = 0) -> Bundle:
    from pipeline.dev_bundle import make_dev_bundle as make

    return make(Path(directory), size=size, seed=seed)
