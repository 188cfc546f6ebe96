"""The API and the live workers' offer (issue 22, common/worker_offers.py): `/app-config.json` says which inversions
the workers offer; `"inversion": "sfe"` is refused 422 `inversion_unavailable` (nothing stored or queued) when
live workers are known and not all of them have SFE, accepted as before while none has published; an edit is
priced at the inversion it will run."""

from __future__ import annotations

import json

import pytest
from redis import Redis
from sqlalchemy import func, select

from common.models import Edit
from common.worker_offers import offers_key, publish
from tests.conftest import face_jpeg, make_api

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def deployment(queued_settings):
    """An API whose queue no worker consumes (its default inversion `auto`), one uploaded photo, and the broker."""
    settings = queued_settings.model_copy(update={"default_inversion": "auto"})
    api = make_api(settings)
    api.client.app.state.worker_offers.cache_seconds = 0  # every request reads the fleet afresh
    with Redis.from_url(settings.redis_url) as redis:
        yield api, api.upload(face_jpeg())["id"], settings, redis


@pytest.fixture
def fleet(deployment):
    """Publish workers' offers for the test; the hash is gone afterwards (no worker known)."""
    _, _, settings, redis = deployment
    key = offers_key(settings.edits_queue)
    redis.delete(key)

    def offer(worker: str, inversions: list[str]) -> None:
        publish(redis, settings.edits_queue, worker, inversions, ttl=60)

    yield offer
    redis.delete(key)


def _body(image_id: str, **fields) -> dict:
    return {"image": image_id, "neutral": "a face", "target": "a smiling face", "alphas": [0, 2], **fields}


def _stored_and_queued(api, settings, redis) -> tuple[int, int]:
    with api.client.app.state.session_factory() as session:
        rows = session.scalar(select(func.count()).select_from(Edit))
    return rows, redis.llen(settings.edits_queue)


def test_app_config_says_what_the_live_workers_offer(deployment, fleet):
    api, *_ = deployment
    assert api.get("/app-config.json").json()["worker_inversions"] is None  # none has said yet
    fleet("w1", ["e4e"])
    assert api.get("/app-config.json").json()["worker_inversions"] == ["e4e"]
    fleet("w2", ["e4e", "sfe"])  # a mixed fleet: SFE is not offered until every worker has it
    assert api.get("/app-config.json").json()["worker_inversions"] == ["e4e"]
    fleet("w1", ["sfe", "e4e"])
    assert api.get("/app-config.json").json()["worker_inversions"] == ["e4e", "sfe"]


@pytest.mark.parametrize("offers,why", [
    ({"w1": ["e4e"]}, "none of the 1 live edit worker"),
    ({"w1": ["e4e"], "w2": ["e4e", "sfe"]}, "mixed fleet"),
])  # fmt: skip
def test_sfe_without_every_live_worker_having_it_is_422_leaving_nothing(deployment, fleet, offers, why):
    api, image_id, settings, redis = deployment
    for worker, inversions in offers.items():
        fleet(worker, inversions)
    before = _stored_and_queued(api, settings, redis)
    response = api.post("/v1/edits", json=_body(image_id, inversion="sfe"))
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "inversion_unavailable" and why in response.json()["message"]
    assert _stored_and_queued(api, settings, redis) == before
    for accepted in ({"inversion": "e4e"}, {}):  # what they offer, or the default, is taken
        assert api.post("/v1/edits", json=_body(image_id, **accepted)).status_code == 201


def test_sfe_is_accepted_when_every_worker_has_it_or_none_has_said(deployment, fleet):
    api, image_id, settings, redis = deployment
    response = api.post("/v1/edits", json=_body(image_id, inversion="sfe"))  # the fleet is starting
    assert response.status_code == 201, response.text
    fleet("w1", ["e4e", "sfe"])
    fleet("w2", ["e4e", "sfe"])
    assert api.post("/v1/edits", json=_body(image_id, inversion="sfe")).status_code == 201


@pytest.mark.parametrize("raw", [
    b"garbage", json.dumps({"inversions": ["e4e"], "expires_at": 1.0}).encode(),  # long expired
    json.dumps({"inversions": ["e4e"], "expires_at": 4e12}).encode(),  # beyond any TTL
    json.dumps({"inversions": "e4e", "expires_at": 4e9}).encode(),
])  # fmt: skip
def test_bogus_or_stale_entries_alone_leave_the_fleet_unknown(deployment, fleet, raw):
    api, image_id, settings, redis = deployment
    redis.hset(offers_key(settings.edits_queue), "forged", raw)
    assert api.get("/app-config.json").json()["worker_inversions"] is None
    assert api.post("/v1/edits", json=_body(image_id, inversion="sfe")).status_code == 201


def test_an_edit_is_priced_at_the_inversion_it_will_run(deployment, fleet):
    """SFE costs more per face and strength (common/edit_cost.py); `auto` is priced as the fleet resolves it,
    and as the costliest while the fleet is unknown."""
    api, image_id, settings, _ = deployment
    cost = {name: api.post("/v1/edits", json=_body(image_id, inversion=name)).json()["estimate"]["cost_seconds"]
            for name in ("e4e", "sfe")}
    assert cost["sfe"] > cost["e4e"]
    assert api.post("/v1/edits", json=_body(image_id)).json()["estimate"]["cost_seconds"] == cost["sfe"]
    fleet("w1", ["e4e"])
    assert api.post("/v1/edits", json=_body(image_id)).json()["estimate"]["cost_seconds"] == cost["e4e"]
