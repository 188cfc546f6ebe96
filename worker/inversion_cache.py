"""The inversion cache: a face's W+ codes (and SFE's feature) under `storage_layout.inversion_key`, written by
the first run that needs them (an edit, or the upload's preparation: `worker.detection`) and read by every
later edit of the photo. The key holds everything the codes depend on (photo, face, encoder, invert options,
inverter's model), so a key found is a right answer; an unreadable or foreign object is recomputed."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from common.edit_contract import INVERT, EditSpec, resolve_inversion
from common.storage import ObjectNotFound
from common.storage_layout import inversion_key
from worker.runtime import Runtime

if TYPE_CHECKING:
    from pipeline import Editor, Inversion

log = logging.getLogger("worker.inversion_cache")


def fleet_inversion(runtime: Runtime, editor: Editor, requested: str | None) -> str:
    """The inverter an edit asking for `requested` runs with: its own, else the deployment's DEFAULT_INVERSION
    resolved on this bundle and, when the fleet's offer is known, on what every live worker offers
    (`common.worker_offers`), so `auto` is the same on every worker of a mixed fleet."""
    available = editor.inversions
    fleet = runtime.fleet_offers() if requested is None else None
    if fleet is not None:
        available = tuple(name for name in available if name in fleet.everywhere) or available
    return resolve_inversion(requested, runtime.settings.default_inversion, available)


def cache_key(image_id: str, editor: Editor, face: int, spec: EditSpec) -> str:
    """Where face `face`'s inversion by `spec`'s invert options (its inverter resolved) is kept."""
    return inversion_key(image_id, editor.encoder_version, face, spec.variant(INVERT),
                         spec.inverter_version(editor.versions))


def invert_spec(inversion: str) -> EditSpec:
    """The invert options of an edit that names nothing but its inverter (what an upload prepares)."""
    return EditSpec.model_construct(inversion=inversion)


def read_cached(runtime: Runtime, key: str, face: int) -> Inversion | None:
    """The cached inversion at `key`, or None when there is none, it is unreadable (an older format) or it is
    of another face (then the caller computes it and overwrites the object)."""
    from pipeline import Inversion, PipelineError

    try:
        inversion = Inversion.from_bytes(runtime.storage.get(key))
    except ObjectNotFound:
        return None
    except PipelineError:  # also the old format that held a copy of the photo
        log.warning("cached inversion %s is unreadable; recomputing", key)
        return None
    if inversion.face_index != face:
        log.warning("cached inversion %s is of face %d; recomputing", key, inversion.face_index)
        return None
    return inversion
