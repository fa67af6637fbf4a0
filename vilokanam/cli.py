"""The `vilokanam` command: `dev`, `migrate`, `signaling`, `sfu`, `billing`, `media`,
and the operator commands `credit` and `admin moderator|unsuspend ACCOUNT`.

Every flag has an environment variable of the same meaning (the README's
configuration table); a flag wins over the environment. Known failures — an
unreachable store, a port in use, an edited migration, a bad setting — end in
one clear line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence

from vilokanam.backends import BackendUnreachable
from vilokanam.config import ConfigError, Settings
from vilokanam.logs import configure_logging, register_secret
from vilokanam.migrations import MigrationError
from vilokanam.services.net import PortInUseError
from vilokanam.services.process import ServiceStartError

# Exit codes: 2 usage / configuration (argparse's own), 3 a dependency failed.
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

_KNOWN_FAILURES: tuple[type[BaseException], ...] = (
    BackendUnreachable, PortInUseError, MigrationError, ServiceStartError)


def _store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="Postgres URL (DATABASE_URL)")
    parser.add_argument("--redis-url", help="Redis URL (REDIS_URL)")


def _logging_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=["text", "json"],
                        help="log line format (VILOKANAM_LOG_FORMAT)")
    parser.add_argument("--log-level", help="log level (VILOKANAM_LOG_LEVEL)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vilokanam", description="Vilokanam-view: pay-per-second live streaming.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = sub.add_parser("dev", help="run the whole platform locally (Postgres, Redis, "
                                     "chain, signaling, one SFU worker, billing)")
    dev.add_argument("--data-dir", help="where dev data lives (VILOKANAM_DATA_DIR)")
    dev.add_argument("--http-port", type=int, help="signaling port (VILOKANAM_HTTP_PORT)")
    dev.add_argument("--substrate-url", help="use this chain instead of starting one "
                                             "(SUBSTRATE_URL)")
    _store_flags(dev)
    _logging_flags(dev)

    migrate = sub.add_parser("migrate", help="apply pending schema migrations")
    migrate.add_argument("--database-url", help="Postgres URL (DATABASE_URL)")
    _logging_flags(migrate)

    signaling = sub.add_parser("signaling", help="run the signaling server")
    signaling.add_argument("--http-host", help="bind address (VILOKANAM_HTTP_HOST)")
    signaling.add_argument("--http-port", type=int, help="port (VILOKANAM_HTTP_PORT)")
    signaling.add_argument("--public-url", help="public base URL (VILOKANAM_PUBLIC_URL)")
    _store_flags(signaling)
    _logging_flags(signaling)

    sfu = sub.add_parser("sfu", help="run one SFU worker")
    sfu.add_argument("--sfu-host", help="control bind address (VILOKANAM_SFU_HOST)")
    sfu.add_argument("--sfu-port", type=int, help="control port (VILOKANAM_SFU_PORT)")
    _store_flags(sfu)
    _logging_flags(sfu)

    media = sub.add_parser("media", help="run a media worker (recordings and uploads: probe, "
                                         "thumbnail, HLS renditions, CIDs)")
    media.add_argument("--media-port", type=int, help="port (VILOKANAM_MEDIA_PORT)")
    media.add_argument("--media-concurrency", type=int,
                       help="jobs at once (VILOKANAM_MEDIA_CONCURRENCY)")
    _store_flags(media)
    _logging_flags(media)

    credit = sub.add_parser("credit", help="credit a viewer's balance by hand (an adjustment "
                                           "in the balance ledger)")
    credit.add_argument("--account", required=True, help="the viewer's SS58 address")
    credit.add_argument("--amount", required=True, help="tokens, e.g. 10 or 0.5")
    credit.add_argument("--note", default="operator credit", help="kept in the ledger")
    _store_flags(credit)
    _logging_flags(credit)

    admin = sub.add_parser("admin", help="operator commands on users")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    moderator = admin_sub.add_parser("moderator", help="make a user a moderator (may review "
                                                       "reports, remove content, suspend users)")
    moderator.add_argument("account", help="the user's SS58 address (any prefix)")
    _store_flags(moderator)
    _logging_flags(moderator)
    lift = admin_sub.add_parser("unsuspend", help="lift a user's suspension (they may log in, "
                                                  "publish, chat and watch again)")
    lift.add_argument("account", help="the user's SS58 address (any prefix)")
    _store_flags(lift)
    _logging_flags(lift)
    verify = sub.add_parser(
        "verify-receipt", help="check a receipt (GET /api/receipts/{id}) against the chain: "
                               "exit 0 if it holds, 1 if not")
    verify.add_argument("file", nargs="?", default="-",
                        help="the receipt JSON (default: standard input)")
    verify.add_argument("--substrate-url", help="chain RPC URL (SUBSTRATE_URL)")
    _logging_flags(verify)

    billing = sub.add_parser("billing", help="run the billing worker")
    billing.add_argument("--billing-port", type=int, help="port (VILOKANAM_BILLING_PORT)")
    billing.add_argument("--substrate-url", help="chain RPC URL (SUBSTRATE_URL)")
    _store_flags(billing)
    _logging_flags(billing)
    return parser


# Flags that are a command's own arguments, not settings.
_COMMAND_ARGS = {"command", "account", "amount", "note", "admin_command", "file"}
# verify-receipt: the receipt does not hold (1), as opposed to a usage error (2)
# or a chain that does not answer (3).
EXIT_DOES_NOT_HOLD = 1


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in vars(args).items()
                 if k not in _COMMAND_ARGS and v is not None}
    settings = Settings.from_env(**overrides)
    register_secret(settings.escrow_uri)
    register_secret(settings.token_secret)
    return settings


def _run_migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from vilokanam.migrations import migrate

    if not settings.database_url:
        raise ConfigError("DATABASE_URL is not set (or pass --database-url)")
    applied = asyncio.run(migrate(settings.database_url))
    print("applied: " + ", ".join(applied) if applied else "nothing to apply: schema is current")
    return 0


def _run_signaling(settings: Settings, _args: argparse.Namespace) -> int:
    from signaling.app import create_app
    from vilokanam.serve import run_role

    run_role(create_app(settings), "signaling", settings.http_host, settings.http_port,
             "VILOKANAM_HTTP_PORT")
    return 0


def _run_sfu(settings: Settings, _args: argparse.Namespace) -> int:
    from sfu.app import create_app
    from vilokanam.serve import run_role

    run_role(create_app(settings), "sfu", settings.sfu_host, settings.sfu_port,
             "VILOKANAM_SFU_PORT")
    return 0


def _run_billing(settings: Settings, _args: argparse.Namespace) -> int:
    from billing.app import create_app
    from vilokanam.serve import run_role

    run_role(create_app(settings), "billing", "127.0.0.1", settings.billing_port,
             "VILOKANAM_BILLING_PORT")
    return 0


def _run_media(settings: Settings, _args: argparse.Namespace) -> int:
    from media.app import create_app
    from vilokanam.serve import run_role

    run_role(create_app(settings), "media", "127.0.0.1", settings.media_port,
             "VILOKANAM_MEDIA_PORT")
    return 0


def _run_credit(settings: Settings, args: argparse.Namespace) -> int:
    from vilokanam.accounts import InvalidAccount
    from vilokanam.admin import credit_account
    from vilokanam.money import decimal_from_json, format_amount

    amount = decimal_from_json(args.amount)
    if amount is None or amount <= 0 or amount.scaleb(settings.token_decimals) % 1:
        raise ConfigError(f"--amount must be a positive number of tokens in whole planck "
                          f"({settings.token_decimals} decimals), got {args.amount!r}")
    try:
        balance = asyncio.run(credit_account(settings, args.account, amount, args.note))
    except InvalidAccount as exc:
        raise ConfigError(f"--account: {exc}") from None
    print(f"credited {format_amount(amount)} {settings.token_symbol}; "
          f"balance {format_amount(balance)} {settings.token_symbol}")
    return 0


def _run_verify_receipt(settings: Settings, args: argparse.Namespace) -> int:
    from vilokanam.receipt_check import (
        ChainUnreachable,
        ReceiptUnreadable,
        parse_receipt,
        substrate_reader,
        verify,
    )

    if not settings.substrate_url:
        raise ConfigError("SUBSTRATE_URL is not set (or pass --substrate-url)")
    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8") as handle:
                text = handle.read()
        receipt = parse_receipt(text)
    except (OSError, UnicodeDecodeError, ReceiptUnreadable) as exc:
        raise ConfigError(f"cannot read the receipt: {exc}") from None
    try:
        read_chain, close = substrate_reader(settings.substrate_url)
        try:
            verdict = verify(receipt, read_chain)
        finally:
            close()
    except ChainUnreachable as exc:
        print(f"vilokanam verify-receipt: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    for settlement_id in verdict.checked:
        print(f"ok: settlement {settlement_id} is on chain and covers this charge")
    for problem in verdict.problems:
        print(f"FAILED: {problem}")
    if verdict.holds:
        print(f"the receipt holds: {receipt.get('settled')} settled on chain")
        return 0
    return EXIT_DOES_NOT_HOLD



def _run_admin(settings: Settings, args: argparse.Namespace) -> int:
    from vilokanam.accounts import InvalidAccount
    from vilokanam.admin import grant_moderator, lift_suspension

    try:
        if args.admin_command == "moderator":
            user = asyncio.run(grant_moderator(settings, args.account))
            print(f"{user.account} is a moderator")
        else:
            account, was = asyncio.run(lift_suspension(settings, args.account))
            print(f"{account} is no longer suspended" if was else f"{account} is not suspended")
    except InvalidAccount as exc:
        raise ConfigError(f"ACCOUNT: {exc}") from None
    return 0


def _run_dev(settings: Settings, args: argparse.Namespace) -> int:
    from vilokanam.dev import run_dev
    from vilokanam.dev_ports import given_settings

    flags = {k for k, v in vars(args).items() if k not in _COMMAND_ARGS and v is not None}
    return run_dev(settings, given_settings(os.environ, flags))


_COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "dev": _run_dev,
    "migrate": _run_migrate,
    "signaling": _run_signaling,
    "sfu": _run_sfu,
    "billing": _run_billing,
    "media": _run_media,
    "credit": _run_credit,
    "admin": _run_admin,
    "verify-receipt": _run_verify_receipt,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings_from(args)
    except ConfigError as exc:
        print(f"vilokanam {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_format, settings.log_level)
    try:
        return _COMMANDS[args.command](settings, args)
    except ConfigError as exc:
        print(f"vilokanam {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except _KNOWN_FAILURES as exc:
        print(f"vilokanam {args.command}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return 130
