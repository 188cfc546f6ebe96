"""Where webhooks may go: the SSRF guard's policy built from the settings, and the check at submission
(the delivery checks again at every send, `worker.deliveries`)."""

from __future__ import annotations

from common import netguard
from common.errors import ApiError
from common.settings import Settings


def webhook_policy(settings: Settings) -> netguard.NetPolicy:
    """WEBHOOK_ALLOW_NETWORKS, WEBHOOK_ALLOW_PORTS and the per-attempt deadline WEBHOOK_TIMEOUT_SECONDS."""
    return netguard.NetPolicy.from_strings(
        settings.webhook_allow_networks.split(","), ports=settings.webhook_allow_ports,
        deadline_s=settings.webhook_timeout_seconds,
    )


def check_webhook_url(url: str, settings: Settings) -> None:
    """422 with the guard's code for a URL that may never be called. A host that does not resolve
    *now* is accepted: DNS may be down for a moment, and the send-time check still applies."""
    try:
        netguard.resolve(url, webhook_policy(settings))
    except netguard.UnsafeURL as e:
        if e.code != "url_unresolvable":
            raise ApiError(e.code, f"webhook: {e.message}") from None
