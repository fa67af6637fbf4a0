"""Operator commands: crediting a viewer's balance by hand (in dev, and for
support adjustments; every change is a balance_ledger row) and granting the
moderator role, lifting a suspension."""

from __future__ import annotations

from decimal import Decimal

from vilokanam.accounts import canonical_account
from vilokanam.backends import Backends
from vilokanam.balances import balance_of, credit
from vilokanam.config import Settings
from vilokanam.users import User, get_or_create_user, make_moderator, unsuspend

DEV_GRANT = Decimal(100)  # tokens each dev account may spend in `vilokanam dev`
DEV_GRANT_NOTE = "dev grant"


async def credit_account(settings: Settings, account: str, amount: Decimal,
                         note: str) -> Decimal:
    """Credit `amount` tokens to `account` (created if new); returns its balance."""
    backends = await Backends.open(settings)
    try:
        user = await get_or_create_user(backends.pg,
                                        canonical_account(account, settings.ss58_prefix))
        await credit(backends.pg, backends.redis, user.id, amount, "adjustment", note,
                     settings.token_decimals)
        return await balance_of(backends.pg, user.id)
    finally:
        await backends.close()


async def grant_dev_funds(settings: Settings, accounts: list[str]) -> int:
    """Each dev account gets DEV_GRANT once (its first `vilokanam dev`)."""
    backends = await Backends.open(settings)
    granted = 0
    try:
        for account in accounts:
            user = await get_or_create_user(backends.pg,
                                            canonical_account(account, settings.ss58_prefix))
            already = await backends.pg.fetchval(
                "SELECT 1 FROM balance_ledger WHERE user_id = $1 AND reference = $2",
                user.id, DEV_GRANT_NOTE)
            if not already:
                await credit(backends.pg, backends.redis, user.id, DEV_GRANT, "adjustment",
                             DEV_GRANT_NOTE, settings.token_decimals)
                granted += 1
    finally:
        await backends.close()
    return granted


async def grant_moderator(settings: Settings, account: str) -> User:
    """Make `account` (created if new) a moderator: it may then review reports."""
    backends = await Backends.open(settings)
    try:
        return await make_moderator(backends.pg, canonical_account(account, settings.ss58_prefix))
    finally:
        await backends.close()


async def lift_suspension(settings: Settings, account: str) -> tuple[str, bool]:
    """The canonical account and whether it was suspended (it is not now)."""
    backends = await Backends.open(settings)
    try:
        canonical = canonical_account(account, settings.ss58_prefix)
        return canonical, await unsuspend(backends.pg, canonical)
    finally:
        await backends.close()
