"""``heml keys issue | revoke | list``: manage the API key file a server reads (--api-keys).

Kept apart from heml/cli.py so that file stays a thin table of commands.
"""

from __future__ import annotations

import argparse
import sys


def cmd_keys_issue(args: argparse.Namespace) -> int:
    from .auth import issue_key

    key = issue_key(
        args.api_keys,
        args.id,
        predictions_per_minute=args.predictions_per_minute,
        max_concurrent=args.max_concurrent,
    )
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

    if not revoke_key(args.api_keys, args.id):
        raise _cli_error(f"{args.api_keys} has no key with id {args.id!r}")
    print(
        f"revoked {args.id!r}; running servers stop accepting it within a second", file=sys.stderr
    )
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
    ki.set_defaults(func=cmd_keys_issue)
    kr = ksub.add_parser("revoke", help="remove a client's API key")
    kr.add_argument("--api-keys", required=True, metavar="FILE")
    kr.add_argument("--id", required=True)
    kr.set_defaults(func=cmd_keys_revoke)
    kl = ksub.add_parser("list", help="list API key ids and quotas (never keys or hashes)")
    kl.add_argument("--api-keys", required=True, metavar="FILE")
    kl.set_defaults(func=cmd_keys_list)
