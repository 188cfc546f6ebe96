"""docs/API.md's table of edit fields is rendered from the request schema, itself derived from the edit
contract, so the page states the limits the code applies (`python -m api.edits_doc` rewrites it)."""

from __future__ import annotations

from api.edits_doc import DOC_PATH, render
from common.edit_contract import MAX_CHANGES, MAX_TEXT_CHARS


def test_the_edit_fields_table_is_in_sync():
    page = DOC_PATH.read_text()
    assert page == render(page), "run `python -m api.edits_doc` and commit docs/API.md"
    assert f"at most {MAX_CHANGES}" in page and f"1..{MAX_TEXT_CHARS} characters" in page
