"""`/app-config.json`: what the static web app needs to find the API (and, in dev mode, a key)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import SettingsDep
from api.schemas import AppConfig

router = APIRouter(tags=["web"])


@router.get("/app-config.json", response_model=AppConfig)
def app_config(settings: SettingsDep) -> AppConfig:
    return AppConfig(api_base="/v1", dev_api_key=settings.dev_api_key if settings.dev_mode else None)
