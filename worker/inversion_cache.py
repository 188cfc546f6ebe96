"""The inversion cache: a face's W+ codes (and SFE's feature) under `storage_layout.inversion_key`, written by
the first run that needs them (an edit, or the upload's preparation: `worker.detection`) and read by every
later edit of the photo. The key holds everything the codes depend on (photo, face, encoder, invert options,
inverter's model), so a key found is a right answer; an unreadable or foreign object is recomputed."""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

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


# --- one inversion of a face at a time --------------------------------------------------------------------
# The upload's task (worker.detection) marks the face it inverts in Redis; an edit that misses the cache while
# the mark is there waits for that inversion instead of computing it again beside it (on one machine's CPU two
# at once take as long as both in a row). The mark expires by itself should its worker die.
PREPARING_TTL_S = 60.0
WAIT_FOR_PREPARED_S = 15.0  # the longest an edit waits for another worker's inversion before computing its own
POLL_S = 0.05


def _mark(runtime: Runtime, key: str) -> str:
    return f"{runtime.settings.edits_queue}:preparing:{key}"


@contextmanager
def preparing(runtime: Runtime, key: str) -> Iterator[bool]:
    """Claim the preparation of the inversion at `key`: yields False when another run holds it (then do not
    compute it), True otherwise (also when Redis cannot be asked: the worst case is one duplicate)."""
    client, token = runtime.redis(), secrets.token_hex(8)
    try:
        claimed = client is None or bool(client.set(_mark(runtime, key), token, nx=True, px=int(PREPARING_TTL_S * 1e3)))
    except RedisError:
        client, claimed = None, True
    try:
        yield claimed
    finally:
        if claimed and client is not None:
            with contextlib.suppress(RedisError):
                if client.get(_mark(runtime, key)) == token.encode():
                    client.delete(_mark(runtime, key))


def wait_for_prepared(runtime: Runtime, key: str, face: int, timeout_s: float | None = None,
                      should_cancel: Callable[[], bool] | None = None) -> Inversion | None:
    """The inversion at `key` once the run preparing it has written it; None at once when none is preparing it
    (the caller has just missed the cache), when that run ends without writing it, after `timeout_s`
    (default WAIT_FOR_PREPARED_S), or as soon as `should_cancel()` (the caller's own work then stops)."""
    deadline = time.monotonic() + (WAIT_FOR_PREPARED_S if timeout_s is None else timeout_s)
    if not _held(runtime, key):
        return None
    while True:
        held = _held(runtime, key)  # read before the cache: a run writes, then lets go
        inversion = read_cached(runtime, key, face)
        if inversion is not None or not held or time.monotonic() >= deadline:
            return inversion
        if should_cancel is not None and should_cancel():
            return None
        time.sleep(POLL_S)


def _held(runtime: Runtime, key: str) -> bool:
    client = runtime.redis()
    try:
        return client is not None and bool(client.exists(_mark(runtime, key)))
    except RedisError:
        return False
