"""Polkadot accounts: one key is one user, whatever SS58 prefix it arrives in.

`canonical_account` re-encodes any valid SS58 address in the configured prefix
(VILOKANAM_SS58_PREFIX), which is what `users.account_id` stores."""

from __future__ import annotations

from scalecodec.utils.ss58 import ss58_decode, ss58_encode


class InvalidAccount(ValueError):
    pass


def public_key_of(address: str) -> bytes:
    """The 32-byte public key of an SS58 account address. Short SS58 account
    *indices* decode too, but name no key: they are refused."""
    try:
        key = bytes.fromhex(ss58_decode(address))
    except (ValueError, TypeError, IndexError) as exc:
        raise InvalidAccount(f"not a valid SS58 address: {exc}") from None
    if len(key) != 32:
        raise InvalidAccount("not an account address (an SS58 account index names no key)")
    return key


def canonical_account(address: str, ss58_prefix: int) -> str:
    return str(ss58_encode(public_key_of(address), ss58_format=ss58_prefix))


def address_of(secret_uri: str, ss58_prefix: int = 42) -> str:
    """The sr25519 address of a secret URI (dev URIs like //Alice, mnemonics)."""
    from substrateinterface import Keypair

    return str(Keypair.create_from_uri(secret_uri, ss58_format=ss58_prefix).ss58_address)
