"""Webhooks: one package for what the API and the worker share about them.

* `signing`: the Standard Webhooks secret format, signing and `verify` (also for receivers);
* `signing_secrets`: an account's signing secrets, their rotation and grace period;
* `events`: which events an edit has produced and the message body of each;
* `outbox`: one delivery row per (edit, event), recorded idempotently and dispatched to the webhooks queue;
* `urls`: the URL policy (SSRF guard settings, port policy) and the check at submission.

The tables are in `common.models` (`WebhookSecret`, `WebhookDelivery`); sending is `worker.deliveries`;
the HTTP side is `api.routes.webhooks`.
"""
