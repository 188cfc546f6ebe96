"""``download`` against a real HTTP server on 127.0.0.1 (tests/pipeline/hub.py): each refusal names the file,
the source and the reason; sources are tried in order; broken transfers resume; one failed file stops nothing
and leaves no manifest; copied-in files finish a bundle offline; the style statistics are computed when no
source answers."""

from __future__ import annotations

import hashlib
import json

import pytest

from pipeline.weights.bundle import MANIFEST, ModelFile, Source, read_manifest
from pipeline.weights.choice import DEV, OFFICIAL, choose_bundle
from pipeline.weights.download import content_length, download_bundle, fetch_file, git_blob_id
from tests.pipeline.hub import Hub, official_format_files


@pytest.fixture
def hub():
    server = Hub()
    yield server
    server.close()


@pytest.fixture(scope="module")
def official_files(dev_bundle):
    return official_format_files(dev_bundle.dir)


def _entry(file: str, *sources: Source) -> ModelFile:
    return ModelFile(file=file, url=None, sha256=None, bytes=None, license="test", source="test", sources=sources)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_sources_in_order_past_a_404_and_a_login_page_through_a_redirect(tmp_path, hub, capsys):
    data = bytes(range(256)) * 40
    hub.routes.html.add("login/w.pt")
    entry = _entry("w.pt", Source(f"{hub.url}/gone/w.pt", sha256=_sha(data), bytes=len(data)),
                   Source(f"{hub.url}/login/w.pt", sha256=_sha(data), bytes=len(data)),
                   Source(hub.add("ok/w.pt", data), sha256=_sha(data), bytes=len(data)))
    outcome, done = fetch_file("clip", entry, tmp_path)
    assert outcome.ok and outcome.hash == "verified" and outcome.source == f"{hub.url}/ok/w.pt"
    assert (tmp_path / "w.pt").read_bytes() == data and done.sha256 == _sha(data) and done.bytes == len(data)
    err = capsys.readouterr().err
    assert f"w.pt: {hub.url}/gone/w.pt: HTTP 404" in err
    assert f"w.pt: {hub.url}/login/w.pt: answered text/html" in err
    assert not list(tmp_path.glob("*.part*"))


def test_a_broken_transfer_resumes_with_a_range_request(tmp_path, hub):
    data = bytes(range(256)) * 2000
    url = hub.add("cut/w.pt", data)
    hub.routes.cut_once["cut/w.pt"] = 100_000
    outcome, _ = fetch_file("clip", _entry("w.pt", Source(url, sha256=_sha(data), bytes=len(data))), tmp_path)
    assert outcome.hash == "verified", outcome.reason
    assert hub.routes.ranges == [("cut/w.pt", ""), ("cut/w.pt", "bytes=100000-")]
    assert (tmp_path / "w.pt").read_bytes() == data


@pytest.mark.parametrize("case", ["size", "sha256", "disguised html", "git blob"])
def test_wrong_answers_are_refused_naming_file_source_and_reason(tmp_path, hub, case):
    data, other = b"\x80\x02weights" * 100, b"\x80\x02tampered" * 100
    if case == "size":
        source = Source(hub.add("w.pt", other), sha256=_sha(data), bytes=len(data))
        expected = f"announces {len(other):,} bytes; published: {len(data):,}"
    elif case == "sha256":
        source = Source(hub.add("w.pt", other[: len(data)]), sha256=_sha(data), bytes=len(data))
        expected = "(hash mismatch)"
    elif case == "disguised html":
        hub.routes.disguised["w.pt"] = b"\n  <!DOCTYPE html><html>captive portal</html>"
        source = Source(f"{hub.url}/w.pt")
        expected = "is a web page"
    else:
        (tmp_path / "ref").write_bytes(data)
        source = Source(hub.add("w.pt", other), git_blob=git_blob_id(tmp_path / "ref"))
        expected = "git object id"
    outcome, done = fetch_file("generator", _entry("w.pt", source), tmp_path / "b")
    assert not outcome.ok and done is None
    assert expected in outcome.reason and "127.0.0.1" in outcome.reason, outcome.reason
    assert not (tmp_path / "b" / "w.pt").exists() and not list((tmp_path / "b").glob("w.pt.part*"))


def test_a_git_blob_id_verifies_a_github_file(tmp_path, hub):
    data = b"\x93NUMPY fs3" * 50
    (tmp_path / "ref").write_bytes(data)
    outcome, done = fetch_file("relevance", _entry("fs3.npy", Source(hub.add("fs3.npy", data),
                                                                     git_blob=git_blob_id(tmp_path / "ref"))),
                               tmp_path / "b")
    assert outcome.hash == "verified" and done.sha256 == _sha(data)


def test_an_unhashed_file_is_pinned_only_once_it_loads_as_its_model(tmp_path, hub, official_files):
    name, generator = official_files["generator"]
    junk = b"\x80\x02" + bytes(range(256)) * 100  # a binary answer that is no checkpoint
    entry = _entry(name, Source(hub.add("junk.pt", junk)), Source(hub.add("g.pt", generator)))
    outcome, done = fetch_file("generator", entry, tmp_path)
    assert outcome.hash == "pinned" and done.sha256 == _sha(generator) and outcome.source.endswith("/g.pt")
    # the junk was refused for not loading; the pin survives a rerun without loading again
    state = json.loads((tmp_path / "download.json").read_text()) if (tmp_path / "download.json").exists() else {}
    assert state == {}  # fetch_file writes no state; download_bundle does
    again, _ = fetch_file("generator", entry, tmp_path)
    assert again.hash == "pinned" and again.source == "already here"


def test_junk_that_does_not_load_is_refused(tmp_path, hub):
    outcome, _ = fetch_file("encoder", _entry("e.pt", Source(hub.add("e.pt", b"\x80\x02" + b"x" * 5000))), tmp_path)
    assert not outcome.ok and "does not load as the encoder model" in outcome.reason


def test_the_mirror_is_tried_first_and_held_to_the_published_hash(tmp_path, hub, monkeypatch):
    data = b"\x80\x02right" * 100
    entry = _entry("w.pt", Source(hub.add("official/w.pt", data), sha256=_sha(data), bytes=len(data)))
    hub.add("mirror/w.pt", data)
    monkeypatch.setenv("MODEL_MIRROR_URL", f"{hub.url}/mirror/")
    outcome, _ = fetch_file("clip", entry, tmp_path / "a")
    assert outcome.source == f"{hub.url}/mirror/w.pt"
    hub.add("bad-mirror/w.pt", b"\x80\x02wrong" * 100)
    monkeypatch.setenv("MODEL_MIRROR_URL", f"{hub.url}/bad-mirror")
    outcome, _ = fetch_file("clip", entry, tmp_path / "b")
    assert outcome.source == f"{hub.url}/official/w.pt"


def _entries(hub: Hub, files: dict[str, tuple[str, bytes]], broken: str | None = None) -> dict[str, ModelFile]:
    entries = {}
    for role, (name, data) in files.items():
        url = f"{hub.url}/missing/{name}" if role == broken else hub.add(f"{role}/{name}", data)
        entries[role] = _entry(name, Source(url, sha256=_sha(data), bytes=len(data)))
    return entries


def test_one_failure_stops_nothing_leaves_no_manifest_and_copied_files_finish_it(tmp_path, hub, official_files):
    directory = tmp_path / "official"
    report = download_bundle(directory, progress=False, entries=_entries(hub, official_files, broken="clip"))
    assert report.bundle is None and not (directory / MANIFEST).exists()
    assert {o.role: o.hash for o in report.outcomes} == {**{role: "verified" for role in official_files},
                                                         "clip": "failed"}
    clip = official_files["clip"][0]
    line = next(line for line in report.table().splitlines() if line.startswith(clip))
    assert line.split()[1:4] == ["-", "-", "failed"] and "HTTP 404" in line
    # the CLI's, make run's and the worker's rule: not a bundle, and the reason is named
    choice = choose_bundle(None, official_dir=directory, dev_dir=tmp_path / "dev")
    assert choice.kind == DEV
    assert [(p.file, "HTTP 404" in p.reason) for p in choice.problems] == [(clip, True)]
    assert f"into {directory}/" in choice.explain()
    # copied in by hand, checked without any source answering
    (directory / clip).write_bytes(official_files["clip"][1])
    hub.close()
    report = download_bundle(directory, progress=False, entries=_entries(hub, official_files))
    assert report.bundle is not None, report.table()
    assert {o.source for o in report.outcomes} == {"already here"}
    assert choose_bundle(None, official_dir=directory).kind == OFFICIAL
    manifest = read_manifest(directory)
    assert manifest.models["clip"].hash == "verified" and not manifest.dev
    assert manifest.models["generator"].url.startswith(hub.url)


def test_style_statistics_are_computed_when_no_source_answers(tmp_path, hub, official_files):
    entries = _entries(hub, official_files, broken="relevance_stats")
    report = download_bundle(tmp_path, progress=False, entries=entries, stats_samples=512)
    assert report.bundle is not None, report.table()
    stats = report.bundle.manifest.models["relevance_stats"]
    assert stats.file == "style_stats.npz" and stats.hash == "computed"
    assert stats.computed["samples"] == 512 and stats.computed["seed"] == 5
    assert "computed" in report.table() and "HTTP 404" in report.table()
    from pipeline.edit.relevance import load_relevance

    relevance = load_relevance(tmp_path / "fs3.npy", stats=tmp_path / stats.file)
    assert relevance.style_std.shape == relevance.style_mean.shape and bool((relevance.style_std > 0).all())
    # a rerun that still finds no source reuses what it computed for this generator
    (tmp_path / MANIFEST).unlink()
    again = download_bundle(tmp_path, progress=False, entries=entries, stats_samples=512)
    assert again.bundle is not None and again.bundle.manifest.models["relevance_stats"] == stats
    assert "computed by an earlier run" in again.table()


def test_an_earlier_half_download_is_redone_but_a_promoted_encoder_is_kept(tmp_path, hub, official_files):
    """What an earlier version left: a manifest that pinned a sign-in page as the generator, no CLIP; and a
    fine-tuned encoder that `runs promote` put in."""
    page = b"<!DOCTYPE html><html>sign in</html>"
    (tmp_path / "stylegan2-ffhq-config-f.pt").write_bytes(page)
    (tmp_path / "encoder-run1-step5.pt").write_bytes(official_files["encoder"][1])
    old = {"dev": False,
           "generator": {"file": "stylegan2-ffhq-config-f.pt", "url": "https://example.org/g.pt", "sha256": _sha(page),
                         "bytes": len(page), "license": "NC", "source": "old"},
           "encoder": {"file": "encoder-run1-step5.pt", "url": None, "sha256": _sha(official_files["encoder"][1]),
                       "bytes": len(official_files["encoder"][1]), "license": "NC", "source": "runs promote"},
           "clip": {"file": "ViT-B-32.pt", "url": "https://example.org/c.pt", "sha256": None, "bytes": None,
                    "license": "MIT", "source": "old"}}
    (tmp_path / MANIFEST).write_text(json.dumps(old))
    assert choose_bundle(None, official_dir=tmp_path, dev_dir=tmp_path / "dev").kind == DEV
    report = download_bundle(tmp_path, progress=False, entries=_entries(hub, official_files))
    assert report.bundle is not None, report.table()
    outcomes = {o.role: o for o in report.outcomes}
    assert outcomes["generator"].hash == "verified" and outcomes["generator"].source.startswith(hub.url)
    assert (tmp_path / "stylegan2-ffhq-config-f.pt.rejected").read_bytes() == page
    assert outcomes["encoder"].source == "already here" and outcomes["encoder"].file == "encoder-run1-step5.pt"
    assert report.bundle.manifest.models["encoder"].source == "runs promote"


def test_a_bundle_made_before_sfe_gets_it_with_only_sfe(tmp_path, hub, official_files):
    """A complete bundle without SFE stays as it is on a plain ``download``; ``--only sfe`` adds SFE (checked by
    its loader when no hash is published) and rewrites the manifest with every other file kept."""
    without = {role: files for role, files in official_files.items() if role != "sfe"}
    first = download_bundle(tmp_path, progress=False, entries=_entries(hub, without))
    assert first.bundle is not None and not first.bundle.has("sfe")
    entries = _entries(hub, official_files)
    assert not download_bundle(tmp_path, progress=False, entries=entries).bundle.has("sfe")
    entries["sfe"] = _entry(official_files["sfe"][0], Source(hub.add("plain/sfe.pt", official_files["sfe"][1])))
    report = download_bundle(tmp_path, progress=False, entries=entries, only=("sfe",))
    assert report.bundle is not None and report.bundle.has("sfe"), report.table()
    outcomes = {o.role: o for o in report.outcomes}
    assert outcomes["sfe"].hash == "pinned" and outcomes["generator"].source == "already here"
    # not an SFE checkpoint (the e4e file under SFE's name): refused by the loader, naming the key it lacks
    outcome, _ = fetch_file("sfe", _entry("other.pt", Source(hub.add("e4e-as-sfe.pt", official_files["encoder"][1]))),
                            tmp_path / "other")
    assert not outcome.ok and "does not load as the sfe model" in outcome.reason and "inverter." in outcome.reason


@pytest.mark.parametrize("header, expected", [("1024", 1024), (" 7 ", 7), ("²", None), ("١٢", None), ("-1", None),
                                              ("1e3", None), ("9" * 40, None), ("", None), (None, None)])
def test_a_content_length_is_plain_ascii_digits_or_ignored(header, expected):
    assert content_length(header) == expected
