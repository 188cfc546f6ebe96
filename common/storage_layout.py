"""Where every stored object lives and whose it is: the one home of the storage keys.

One bucket. Every key names the row it belongs to, never the account (the owner lives in the database):

    originals/{image_id}                                          the uploaded photo                 → images
    inversions/{image_id}/{encoder}[.{variant}][.{inverter}][-f{face}].npz
                                                                  one face's cached latent codes     → images
    results/{edit_id}/{index}.{extension}                         one output of an edit              → edits
    results/{edit_id}/preview.jpg                                 the first strength's preview       → edits
                                                                  (until its full-size output lands)
    uploads/{upload_id}                                           a presigned upload not yet claimed → uploads

A local write goes to a `.tmp-*` file beside its key first (`PARTIAL_PREFIX`) and is renamed over it once
complete. The purge (`common.retention`) deletes an image's and an edit's objects by these prefixes; the
orphan sweep reads each object's owning row from its key (`owner_of`) and deletes those whose row is gone
(and a preview, `is_preview`, once its edit is no longer processing: the full-size output replaced it).
"""

from __future__ import annotations

from dataclasses import dataclass

PREVIEW_NAME = "preview"
PARTIAL_PREFIX = ".tmp-"  # a local write under way (or abandoned by a killed process): never a whole object


@dataclass(frozen=True)
class Area:
    """A key prefix and the table whose row owns each object under it (the row id is the key's next part)."""

    prefix: str
    table: str


ORIGINALS = Area("originals/", "images")
INVERSIONS = Area("inversions/", "images")
RESULTS = Area("results/", "edits")
UPLOADS = Area("uploads/", "uploads")
AREAS = (ORIGINALS, INVERSIONS, RESULTS, UPLOADS)


def original_key(image_id: str) -> str:
    return f"{ORIGINALS.prefix}{image_id}"


def inversions_prefix(image_id: str) -> str:
    """Every cached inversion of one photo (all faces, encoders and variants)."""
    return f"{INVERSIONS.prefix}{image_id}/"


def inversion_key(image_id: str, encoder_version: str, face: int = 0, variant: str = "",
                  inverter_version: str = "") -> str:
    """One face's cached inversion by one encoder; `variant`: the edit's non-default inversion options
    (`EditSpec.variant`), empty for the defaults; `inverter_version`: the version of the inverter's own model
    when it has one besides the encoder (SFE's: `EditSpec.inverter_version`), so a new file of it is a new key.
    The largest face keeps the single-face service's key (`{encoder}.npz`), so the caches it wrote stay hits."""
    name = ".".join(part for part in (encoder_version, variant, inverter_version) if part)
    return f"{inversions_prefix(image_id)}{name}{f'-f{face}' if face else ''}.npz"


def results_prefix(edit_id: str) -> str:
    """Every output of one edit."""
    return f"{RESULTS.prefix}{edit_id}/"


def result_key(edit_id: str, index: int, extension: str) -> str:
    return f"{results_prefix(edit_id)}{index}.{extension}"


def preview_key(edit_id: str) -> str:
    """The edit's preview (always JPEG: small and fast to encode, whatever the output format), under the
    results prefix so the purge and the orphan sweep treat it as one of the edit's results."""
    return f"{results_prefix(edit_id)}{PREVIEW_NAME}.jpg"


def is_preview(key: str) -> bool:
    """Whether `key` is an edit's preview (`preview_key`): wanted only while its edit is processing."""
    return key.startswith(RESULTS.prefix) and key.rsplit("/", 1)[-1].split(".", 1)[0] == PREVIEW_NAME


def upload_key(upload_id: str) -> str:
    return f"{UPLOADS.prefix}{upload_id}"


def is_partial(key: str) -> bool:
    """Whether `key` is a local write under way rather than a whole object."""
    return key.rsplit("/", 1)[-1].startswith(PARTIAL_PREFIX)


def owner_of(area: Area, key: str) -> str | None:
    """The id of the row that owns `key` of `area` (None for a key of no known shape: never swept). A partial
    write directly under the area (`originals/.tmp-…`) gives an id no row has: nothing keeps it."""
    row_id = key.removeprefix(area.prefix).split("/", 1)[0]
    return row_id or None
