"""The model bundle: manifest, presence/size/sha256 checks, the hash cache, download with resume."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.bundle import (
    MANIFEST,
    OFFICIAL,
    Bundle,
    Manifest,
    ModelFile,
    pin_entry,
    read_manifest,
)
from pipeline.download import download_bundle, fetch
from pipeline.errors import MODEL_INVALID, MODEL_MISSING, PipelineError


def _fake_bundle(tmp_path: Path, dev: bool = False) -> Path:
    """A bundle of small byte files with correct sizes and hashes (the checks never look inside)."""
    models = {}
    for role in ("generator", "encoder", "clip", "relevance"):
        data = f"{role} weights".encode() * 10
        (tmp_path / f"{role}.bin").write_bytes(data)
        models[role] = ModelFile(file=f"{role}.bin", url=None, sha256=hashlib.sha256(data).hexdigest(),
                                 bytes=len(data), license="test", source="test")
    Manifest(models, dev=dev).write(tmp_path)
    return tmp_path


def test_manifest_round_trips_through_json():
    manifest = Manifest.official()
    again = Manifest.from_json(manifest.to_json())
    assert again == manifest
    raw = json.loads(manifest.to_json())
    assert raw["dev"] is False
    assert set(raw) == {"dev", "generator", "encoder", "clip", "relevance", "relevance_stats"}
    assert set(raw["clip"]) == {"file", "url", "sha256", "bytes", "license", "source"}


def test_official_clip_sha256_is_the_one_in_its_url():
    clip = OFFICIAL["clip"]
    assert clip.sha256 in clip.url
    assert len(clip.sha256) == 64


def test_official_entries_do_not_invent_hashes():
    # Only CLIP's publisher gives a sha256; the others are pinned on first download.
    assert OFFICIAL["generator"].sha256 is None and OFFICIAL["encoder"].sha256 is None
    assert "non-commercial" in OFFICIAL["generator"].license.lower()


def test_load_checks_presence_and_names_the_file_and_the_commands(tmp_path):
    _fake_bundle(tmp_path)
    (tmp_path / "encoder.bin").unlink()
    with pytest.raises(PipelineError) as err:
        Bundle.load(tmp_path)
    assert err.value.code == MODEL_MISSING
    assert "encoder.bin" in err.value.message
    assert f"python -m pipeline download --dir {tmp_path}" in err.value.message
    assert f"python -m pipeline make-dev-bundle {tmp_path}" in err.value.message


def test_load_of_an_empty_directory_says_how_to_fill_it(tmp_path):
    with pytest.raises(PipelineError) as err:
        Bundle.load(tmp_path)
    assert err.value.code == MODEL_MISSING and MANIFEST in err.value.message
    assert "make-dev-bundle" in err.value.message


def test_wrong_size_is_model_invalid(tmp_path):
    _fake_bundle(tmp_path)
    (tmp_path / "clip.bin").write_bytes(b"short")
    with pytest.raises(PipelineError) as err:
        Bundle.load(tmp_path)
    assert err.value.code == MODEL_INVALID and "clip.bin" in err.value.message


def test_sha256_mismatch_is_model_invalid_only_when_verifying(tmp_path):
    _fake_bundle(tmp_path)
    data = (tmp_path / "generator.bin").read_bytes()
    (tmp_path / "generator.bin").write_bytes(bytes([data[0] ^ 1]) + data[1:])  # same size, other content
    Bundle.load(tmp_path)  # presence + size only: fast path for worker start
    with pytest.raises(PipelineError) as err:
        Bundle.load(tmp_path, verify=True)
    assert err.value.code == MODEL_INVALID
    assert "generator.bin" in err.value.message and "sha256" in err.value.message


def test_verified_hashes_are_cached_by_size_and_mtime(tmp_path):
    _fake_bundle(tmp_path)
    bundle = Bundle.load(tmp_path, verify=True)
    cache = json.loads((tmp_path / "cache" / "sha256.json").read_text())
    assert cache["encoder.bin"]["sha256"] == bundle.manifest.models["encoder"].sha256
    assert bundle.version("encoder") == bundle.manifest.models["encoder"].sha256[:12]
    # A replaced file (new content, new mtime) gets a new version: the inversion cache key follows it.
    path = tmp_path / "encoder.bin"
    path.write_bytes(b"fine-tuned encoder" * 10)
    assert Bundle(tmp_path, bundle.manifest).version("encoder") == hashlib.sha256(b"fine-tuned encoder" * 10).hexdigest()[:12]


def test_invalid_manifest_is_model_invalid(tmp_path):
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(PipelineError) as err:
        read_manifest(tmp_path)
    assert err.value.code == MODEL_INVALID
    (tmp_path / MANIFEST).write_text(json.dumps({"generator": {"file": "g.pt"}}))
    with pytest.raises(PipelineError) as err:
        read_manifest(tmp_path)
    assert err.value.code == MODEL_INVALID


def test_pin_entry_records_hash_and_size(tmp_path):
    _fake_bundle(tmp_path)
    (tmp_path / "relevance.bin").write_bytes(b"recomputed")
    entry = pin_entry(tmp_path, "relevance")
    assert entry.sha256 == hashlib.sha256(b"recomputed").hexdigest() and entry.bytes == 10
    Bundle.load(tmp_path, verify=True)


# --- download ------------------------------------------------------------------------------------------------

class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP Range support and can cut a response short, like a dropped connection."""

    cut_after: int | None = None
    ranges_seen: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.directory) / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        header = self.headers.get("Range")
        if header:
            type(self).ranges_seen.append(header)
            start = int(header.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.cut_after is not None and not header:
            self.wfile.write(body[: self.cut_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    _RangeHandler.cut_after, _RangeHandler.ranges_seen = None, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            lambda *a, **k: _RangeHandler(*a, directory=str(root), **k))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_fetch_resumes_a_broken_download_and_pins_the_hash(tmp_path, server):
    root, base = server
    data = bytes(range(256)) * 4000
    (root / "w.pt").write_bytes(data)
    entry = ModelFile("w.pt", f"{base}/w.pt", None, None, "test", "test")
    target = tmp_path / "bundle" / "w.pt"
    target.parent.mkdir()
    _RangeHandler.cut_after = 100_000
    with pytest.raises(PipelineError) as err:
        fetch(entry, target, progress=False)
    assert err.value.code == MODEL_MISSING and "again to resume" in err.value.message
    assert not target.exists() and (target.parent / "w.pt.part").stat().st_size == 100_000
    _RangeHandler.cut_after = None
    pinned = fetch(entry, target, progress=False)
    assert _RangeHandler.ranges_seen == ["bytes=100000-"]
    assert target.read_bytes() == data and not (target.parent / "w.pt.part").exists()
    assert pinned.sha256 == hashlib.sha256(data).hexdigest() and pinned.bytes == len(data)


def test_fetch_rejects_a_wrong_sha256_and_keeps_nothing(tmp_path, server):
    root, base = server
    (root / "w.pt").write_bytes(b"tampered")
    entry = ModelFile("w.pt", f"{base}/w.pt", "0" * 64, None, "test", "test")
    with pytest.raises(PipelineError) as err:
        fetch(entry, tmp_path / "w.pt", progress=False)
    assert err.value.code == MODEL_INVALID
    assert list(tmp_path.iterdir()) == [tmp_path / "www"]


def test_download_without_network_says_so(tmp_path):
    entry = replace(OFFICIAL["clip"], url="http://127.0.0.1:9/ViT-B-32.pt")  # discard port: refused
    with pytest.raises(PipelineError) as err:
        fetch(entry, tmp_path / "ViT-B-32.pt", progress=False)
    assert err.value.code == MODEL_MISSING
    assert "could not download" in err.value.message and "internet" in err.value.message


def test_download_bundle_fetches_pins_and_says_what_is_left(tmp_path, server, capsys):
    root, base = server
    models = {}
    for role in ("generator", "encoder", "clip"):
        (root / f"{role}.pt").write_bytes(role.encode() * 100)
        models[role] = ModelFile(f"{role}.pt", f"{base}/{role}.pt", None, None, "test", "test")
    models["relevance"] = replace(OFFICIAL["relevance"], file="relevance.npz", url=None)
    directory = tmp_path / "bundle"
    directory.mkdir()
    Manifest(models).write(directory)
    assert download_bundle(directory, progress=False) is None  # relevance is computed, not downloaded
    err = capsys.readouterr().err
    assert "precompute-relevance" in err and "pinned sha256" in err
    manifest = read_manifest(directory)
    assert manifest.models["encoder"].sha256 == hashlib.sha256(b"encoder" * 100).hexdigest()
    assert manifest.models["encoder"].bytes == 700


def test_find_bundle_takes_the_first_candidate_with_a_manifest_else_the_dev_bundle(tmp_path, monkeypatch):
    import pipeline.bundle as bundle_module

    monkeypatch.setattr(bundle_module, "OFFICIAL_DIR", tmp_path / "official")
    real, dev = tmp_path / "real", tmp_path / "dev"
    real.mkdir()
    dev.mkdir()
    _fake_bundle(real)
    _fake_bundle(dev, dev=True)
    assert bundle_module.find_bundle(None, tmp_path / "empty", real, dev_dir=dev).dir == real
    fallback = bundle_module.find_bundle(tmp_path / "empty", dev_dir=dev)
    assert fallback.dir == dev and fallback.is_dev
    (tmp_path / "official").mkdir()
    _fake_bundle(tmp_path / "official")
    assert bundle_module.find_bundle(None, dev_dir=dev).dir == tmp_path / "official"
