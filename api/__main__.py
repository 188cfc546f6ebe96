"""`python -m api`: key administration and the development server.

    python -m api keys create --name NAME [--owner OWNER]   # prints the new key as its last line
    python -m api keys list
    python -m api keys revoke KEY_ID
    python -m api migrate                                    # alembic upgrade head
    python -m api dev                                        # what `make run` starts
    python -m api flower-gate --port P [--upstream URL]      # the login in front of Flower (api/flower_gate.py)
"""

from __future__ import annotations

import argparse
import sys

from common.settings import Settings


def _session(settings: Settings):
    from common.db import make_engine, make_session_factory, upgrade

    upgrade(settings.database_url)
    return make_session_factory(make_engine(settings.database_url))()


def _keys_create(args: argparse.Namespace) -> int:
    from api.keys import create_key

    with _session(Settings()) as session:
        row, key = create_key(session, args.name, args.owner)
    print(f"created key {row.id} (owner {row.owner}); it is shown only once:", file=sys.stderr)
    print(key)
    return 0


def _keys_list(_args: argparse.Namespace) -> int:
    from api.keys import list_keys

    with _session(Settings()) as session:
        for row in list_keys(session):
            state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
            print(f"{row.id}  {row.prefix}...  owner={row.owner}  name={row.name}  {state}")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from api.keys import revoke_key

    settings = Settings()
    with _session(settings) as session:
        if not revoke_key(session, args.key_id, redis_url=settings.redis_url):
            print(f"no active key {args.key_id!r}", file=sys.stderr)
            return 1
    print(f"revoked {args.key_id}")
    return 0


def _migrate(_args: argparse.Namespace) -> int:
    from common.db import upgrade

    upgrade(Settings().database_url)
    return 0


def _dev(_args: argparse.Namespace) -> int:
    from api.dev import run_dev

    return run_dev()


def _flower_gate(args: argparse.Namespace) -> int:
    from api.flower_gate import run_gate

    return run_gate(args.host, args.port, args.upstream, args.flower_args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api", description="faceedit API administration")
    commands = parser.add_subparsers(dest="command", required=True)
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key and print it (last line)")
    create.add_argument("--name", required=True, help="a label for the key")
    create.add_argument("--owner", default=None, help="share an existing owner's data (key rotation)")
    create.set_defaults(func=_keys_create)
    keys.add_parser("list", help="list keys (never the keys themselves)").set_defaults(func=_keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=_keys_revoke)
    commands.add_parser("migrate", help="upgrade the database schema").set_defaults(func=_migrate)
    commands.add_parser("dev", help="API + supervised workers with embedded defaults (make run)").set_defaults(func=_dev)
    gate = commands.add_parser("flower-gate", help="the login in front of Flower (make run starts it)")
    gate.add_argument("--host", default="127.0.0.1")
    gate.add_argument("--port", type=int, required=True)
    gate.add_argument("--upstream", default=None, help="Flower's own address, e.g. http://127.0.0.1:5556 "
                      "(FLOWER_BASIC_AUTH: its login); without it the gate starts Flower itself on loopback")
    gate.add_argument("flower_args", nargs="*", help="after `--`: Flower's own options, when the gate starts it")
    gate.set_defaults(func=_flower_gate)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
