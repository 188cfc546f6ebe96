"""The model bundle: the manifest (every version of its format), presence/size/sha256 checks, the hash cache,
the official sources table, and the one rule that chooses a bundle (pipeline/weights/choice.py)."""

from __future__ import annotations

import ast
import hashlib
import json
import re
from pathlib import Path

import pytest

from pipeline.errors import MODEL_INVALID, MODEL_MISSING, PipelineError
from pipeline.weights.bundle import (
    MANIFEST,
    Bundle,
    Manifest,
    ModelFile,
    Source,
    bundle_problems,
    pin_entry,
    read_manifest,
)
from pipeline.weights.choice import DEV, EXPLICIT, OFFICIAL, choose_bundle, find_bundle
from pipeline.weights.sources import OFFICIAL as OFFICIAL_TABLE
from pipeline.weights.sources import official_entries

REPO_ROOT = Path(__file__).resolve().parents[3]


def _fake_bundle(directory: Path, dev: bool = False) -> Path:
    """A bundle of small byte files with correct sizes and hashes (the checks never look inside)."""
    directory.mkdir(parents=True, exist_ok=True)
    models = {}
    for role in ("generator", "encoder", "clip", "relevance"):
        data = f"{role} weights".encode() * 10
        (directory / f"{role}.bin").write_bytes(data)
        models[role] = ModelFile(file=f"{role}.bin", url=None, sha256=hashlib.sha256(data).hexdigest(),
                                 bytes=len(data), license="test", source="test")
    Manifest(models, dev=dev).write(directory)
    return directory


def test_manifest_round_trips_with_sources_and_reads_the_first_format():
    manifest = Manifest(dict(OFFICIAL_TABLE))
    again = Manifest.from_json(manifest.to_json())
    assert again == manifest
    raw = json.loads(manifest.to_json())
    assert set(raw["clip"]) == {"file", "url", "sha256", "bytes", "license", "source", "sources"}
    # the first format (dev bundles, `runs promote`, older downloads): exactly these six keys, one url
    old = {"dev": False, "clip": {"file": "ViT-B-32.pt", "url": "https://example.org/ViT-B-32.pt", "sha256": None,
                                  "bytes": None, "license": "MIT", "source": "openai"}}
    entry = Manifest.from_json(json.dumps(old)).models["clip"]
    assert entry.url == "https://example.org/ViT-B-32.pt" and entry.sources == () and entry.hash is None


def test_bundle_module_imports_no_sibling_module():
    tree = ast.parse((REPO_ROOT / "pipeline" / "weights" / "bundle.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in imported if m and m.startswith("pipeline")} == {"pipeline.errors"}


def test_every_official_source_is_pinned_to_a_commit_and_carries_a_hash():
    for role, entry in OFFICIAL_TABLE.items():
        assert entry.sources, role
        assert entry.published_sha256 or any(s.git_blob for s in entry.sources), role
        for source in entry.sources:
            url = source.url
            if "huggingface.co" in url:
                assert re.search(r"/resolve/[0-9a-f]{40}/", url), url
            elif "githubusercontent.com" in url:
                assert re.search(r"/[0-9a-f]{40}/", url), url
            else:  # OpenAI's CDN names the file by its sha256
                assert source.sha256 and source.sha256 in url, url
            assert not source.sha256 or re.fullmatch(r"[0-9a-f]{64}", source.sha256), url
    assert "non-commercial" in OFFICIAL_TABLE["generator"].license.lower()


def test_a_sources_file_replaces_entries(tmp_path, monkeypatch):
    (tmp_path / "sources.json").write_text(json.dumps({"clip": {"sources": [{"url": "http://127.0.0.1:9/c.pt"}]}}))
    monkeypatch.setenv("MODEL_SOURCES_FILE", str(tmp_path / "sources.json"))
    entries = official_entries()
    assert entries["clip"].sources == (Source("http://127.0.0.1:9/c.pt"),)
    assert entries["clip"].file == OFFICIAL_TABLE["clip"].file and entries["generator"] == OFFICIAL_TABLE["generator"]


def test_load_checks_presence_and_names_the_file_and_the_commands(tmp_path):
    _fake_bundle(tmp_path)
    (tmp_path / "encoder.bin").unlink()
    with pytest.raises(PipelineError) as err:
        Bundle.load(tmp_path)
    assert err.value.code == MODEL_MISSING
    assert "encoder.bin" in err.value.message
    assert f"python -m pipeline download --dir {tmp_path}" in err.value.message
    assert f"python -m pipeline make-dev-bundle {tmp_path}" in err.value.message


def test_wrong_size_is_model_invalid_and_a_problem(tmp_path):
    _fake_bundle(tmp_path)
    (tmp_path / "clip.bin").write_bytes(b"short")
    with pytest.raises(PipelineError) as err:
        Bundle.load(tmp_path)
    assert err.value.code == MODEL_INVALID and "clip.bin" in err.value.message
    assert [(p.file, "5 bytes" in p.reason) for p in bundle_problems(tmp_path)] == [("clip.bin", True)]


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
    path = tmp_path / "encoder.bin"
    path.write_bytes(b"fine-tuned encoder" * 10)
    assert Bundle(tmp_path, bundle.manifest).version("encoder") == hashlib.sha256(b"fine-tuned encoder" * 10).hexdigest()[:12]


def test_invalid_manifest_is_model_invalid(tmp_path):
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(PipelineError) as err:
        read_manifest(tmp_path)
    assert err.value.code == MODEL_INVALID
    (tmp_path / MANIFEST).write_text(json.dumps({"dev": False, "generator": {"file": "g.pt"}}))
    with pytest.raises(PipelineError) as err:
        read_manifest(tmp_path)
    assert err.value.code == MODEL_INVALID


def test_pin_entry_records_hash_and_size(tmp_path):
    _fake_bundle(tmp_path)
    (tmp_path / "relevance.bin").write_bytes(b"recomputed")
    entry = pin_entry(tmp_path, "relevance")
    assert entry.sha256 == hashlib.sha256(b"recomputed").hexdigest() and entry.bytes == 10
    Bundle.load(tmp_path, verify=True)


# --- the one rule ----------------------------------------------------------------------------------------------

def test_choice_explicit_then_complete_official_then_dev(tmp_path):
    official, dev = tmp_path / "official", _fake_bundle(tmp_path / "dev", dev=True)
    choice = choose_bundle(None, official_dir=official, dev_dir=dev)
    assert choice.kind == DEV and choice.usable
    assert {p.file for p in choice.problems} == {e.file for e in OFFICIAL_TABLE.values()}
    assert all("never downloaded" in p.reason for p in choice.problems)
    assert find_bundle(None, official_dir=official, dev_dir=dev).dir == dev
    _fake_bundle(official)
    assert choose_bundle(None, official_dir=official, dev_dir=dev).kind == OFFICIAL
    assert find_bundle(None, official_dir=official, dev_dir=dev).dir == official
    # an explicit MODEL_DIR is never replaced by another bundle, even an incomplete one
    explicit = choose_bundle(tmp_path / "empty", official_dir=official, dev_dir=dev)
    assert explicit.kind == EXPLICIT and not explicit.usable and MANIFEST in explicit.explain()
    with pytest.raises(PipelineError) as err:
        find_bundle(tmp_path / "empty", official_dir=official, dev_dir=dev)
    assert err.value.code == MODEL_MISSING


def test_a_half_downloaded_folder_is_not_a_bundle(tmp_path):
    # what an earlier version left after a failed download: a manifest and some of the files
    official = _fake_bundle(tmp_path / "official")
    (official / "clip.bin").unlink()
    choice = choose_bundle(None, official_dir=official, dev_dir=_fake_bundle(tmp_path / "dev", dev=True))
    assert choice.kind == DEV
    assert "ViT-B-32.pt" in {p.file for p in choice.problems}


def test_the_cli_choose_bundle_command_says_the_same(tmp_path, monkeypatch, capsys):
    from pipeline.cli import main

    monkeypatch.setenv("MODEL_DOWNLOAD_DIR", str(_fake_bundle(tmp_path / "official")))
    monkeypatch.delenv("MODEL_DIR", raising=False)
    assert main(["choose-bundle", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["kind"], out["dir"], out["usable"], out["ready"]) == (OFFICIAL, str(tmp_path / "official"), True, True)
    assert out["dev_bundle"] is False
    # a complete bundle without the optional SFE file says how to add it
    assert [line.split(" (")[0] for line in out["optional_missing"]] == ["sfe_editor_light.pt"]
    assert "--only sfe" in out["optional_missing"][0]
    assert main(["choose-bundle", "--json", "--model-dir", str(_fake_bundle(tmp_path / "dev", dev=True))]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["kind"], out["dev_bundle"]) == (EXPLICIT, True)
    assert main(["choose-bundle", "--model-dir", str(tmp_path / "nothing")]) == 1
