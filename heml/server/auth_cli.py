"""``heml keys issue | revoke | list``: manage the API key file a server reads (--api-keys).

Kept apart from heml/cli.py so that file stays a thin table of commands.
"""

from __future__ import annotations

import argparse
import sys


def _state_url(args: argparse.Namespace) -> str | None:
    from .state import check_state_url

    try:
        return check_state_url(args.state)
    except ValueError as exc:
        raise _cli_error(str(exc)) from None


def _redis_failed(url: str, exc: Exception):
    from .state.redis_backend import safe_url

    return _cli_error(
        f"shared state at {safe_url(url)} failed ({exc}); nothing was changed: run the same "
        "command again when Redis answers"
    )


def cmd_keys_issue(args: argparse.Namespace) -> int:
    from .auth import issue_key, read_key_file

    url = _state_url(args)
    key = issue_key(
        args.api_keys,
        args.id,
        predictions_per_minute=args.predictions_per_minute,
        max_concurrent=args.max_concurrent,
    )
    if url is not None:
        import redis

        from .auth import revoke_key
        from .state.redis_backend import publish_key

        entry = next(k for k in read_key_file(args.api_keys) if k.key_id == args.id)
        try:
            publish_key(url, entry)
        except redis.RedisError as exc:
            revoke_key(args.api_keys, args.id)  # a key nobody was shown must not stay
            raise _redis_failed(url, exc) from None
    print(key)
    quota = ", ".join(
        f"{v} {what}"
        for v, what in (
            (args.predictions_per_minute, "predictions/minute"),
            (args.max_concurrent, "concurrent calls"),
        )
        if v is not None
    )
    print(
        f"issued API key {args.id!r} ({quota or 'no quota'}); its hash is in {args.api_keys}. "
        "The key is shown only this once: hand it to its owner now.",
        file=sys.stderr,
    )
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from .auth import revoke_key

    url = _state_url(args)
    digests = []
    if url is not None:
        from .state.redis_backend import key_file_digests

        digests = key_file_digests(args.api_keys, args.id)
    in_state = False
    if url is not None:  # Redis first: if it fails, the file is unchanged and a rerun works
        import redis

        from .state.redis_backend import REVOCATION_SECONDS, publish_revocation

        try:
            in_state = publish_revocation(url, args.id, digests)
        except redis.RedisError as exc:
            raise _redis_failed(url, exc) from None
    in_file = revoke_key(args.api_keys, args.id)
    if not (in_file or in_state):
        raise _cli_error(f"{args.api_keys} has no key with id {args.id!r}")
    if url is not None:
        where = f"every replica using this --state refuses it within {REVOCATION_SECONDS:g} s"
    else:
        where = "servers reading this key file stop accepting it within a second"
    print(f"revoked {args.id!r}; {where}", file=sys.stderr)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from .auth import read_key_file

    def show(v):
        return "-" if v is None else str(v)

    rows = [("ID", "PREDICTIONS/MIN", "CONCURRENT", "CREATED")]
    for k in read_key_file(args.api_keys):
        rows.append(
            (k.key_id, show(k.predictions_per_minute), show(k.max_concurrent), show(k.created))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _cli_error(message: str):
    from ..cli import CliError

    return CliError(message)


def register(ksub) -> None:
    """Add the API key actions to the ``heml keys`` subparsers."""
    ki = ksub.add_parser("issue", help="create an API key for a client; prints it once")
    ki.add_argument("--api-keys", required=True, metavar="FILE", help="key file (mode 0600)")
    ki.add_argument("--id", required=True, help="who the key is for (shown in logs and metrics)")
    ki.add_argument(
        "--predictions-per-minute",
        type=int,
        metavar="N",
        help="sample slots computed per minute (docs/security.md); default: no limit",
    )
    ki.add_argument("--max-concurrent", type=int, metavar="N", help="default: no limit")
    state_help = (
        "also publish to the shared state of `heml serve --state URL` (redis://host:6379/0), "
        "so every replica sees it without a key-file change; 'env' reads the URL from "
        "HEML_STATE_URL"
    )
    ki.add_argument("--state", metavar="URL", help=state_help)
    ki.set_defaults(func=cmd_keys_issue)
    kr = ksub.add_parser("revoke", help="remove a client's API key")
    kr.add_argument("--api-keys", required=True, metavar="FILE")
    kr.add_argument("--id", required=True)
    kr.add_argument("--state", metavar="URL", help=state_help)
    kr.set_defaults(func=cmd_keys_revoke)
    kl = ksub.add_parser("list", help="list API key ids and quotas (never keys or hashes)")
    kl.add_argument("--api-keys", required=True, metavar="FILE")
    kl.set_defaults(func=cmd_keys_list)
