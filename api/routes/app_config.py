"""`/app-config.json`: what the static web app needs to find the API (and, in dev mode, a key), the edit
limits it builds its requests within (the edit contract's, as this server's settings apply them), and the
inversions the live edit workers offer (`common.worker_offers`: whether "Keep my likeness" can be had).

The dev key is handed out only to a page the developer opened on this machine: dev mode on, the
request's `Host` a loopback name (so a DNS-rebinding page, whose Host is its own name, gets none)
and the client a loopback address (so nobody else on the network gets it).
"""

from __future__ import annotations

import ipaddress

from fastapi import APIRouter, Request

from api.deps import SettingsDep
from api.schemas import AppConfig

router = APIRouter(tags=["web"])

_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def _host_name(host: str) -> str:
    """`Host` without its port: `127.0.0.1:8000` → `127.0.0.1`, `[::1]:8000` → `::1`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _is_loopback_address(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def is_local_page(request: Request) -> bool:
    """Whether the request comes from this machine to this machine by a loopback name."""
    client = request.client.host if request.client else ""
    return _host_name(request.headers.get("host", "")) in _LOOPBACK_NAMES and _is_loopback_address(client)


@router.get("/app-config.json", response_model=AppConfig)
def app_config(request: Request, settings: SettingsDep) -> AppConfig:
    give_key = settings.dev_mode and settings.dev_api_key and is_local_page(request)
    reader = request.app.state.worker_offers
    offers = reader.get() if reader is not None else None
    return AppConfig(api_base="/v1", dev_api_key=settings.dev_api_key if give_key else None,
                     limits=settings.edit_limits().public(),
                     worker_inversions=offers.offered() if offers is not None else None)
