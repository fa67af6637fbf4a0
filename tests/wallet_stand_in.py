"""A stand-in for the polkadot{.js} extension, for the browser tests (the real
extension cannot be installed in headless, offline Chromium). It injects
`window.injectedWeb3["polkadot-js"]` with the extension's interface — enable()
→ accounts.get() and signer.signRaw() — and its signer asks Python to sign with
the test's keys the way the extension does: a message (`type: "bytes"`) inside
`<Bytes>…</Bytes>`, a transaction payload as given, answered as a typed
MultiSignature (what the extension's signPayload answers for those bytes).
What holds it to the real thing: the server's sr25519/ed25519 check of the
login signature, and the chain accepting the signed transaction. Calls are
recorded in window.walletCalls."""

from __future__ import annotations

import json
from typing import Any

from playwright.async_api import BrowserContext, Page
from substrateinterface import Keypair, KeypairType

from vilokanam.accounts import public_key_of

SCRIPT = """
window.walletCalls = [];
window.injectedWeb3 = {"polkadot-js": {version: "0.0.0-test", enable: async (origin) => {
  window.walletCalls.push({enable: origin});
  return {
    accounts: {get: async () => %(accounts)s},
    signer: {signRaw: async (payload) => {
      window.walletCalls.push({signRaw: payload});
      return {id: 1, signature: await window.testWalletSign(payload.address, payload.data,
                                                            payload.type)};
    }},
  };
}}};
"""
# MultiSignature's variant index by key type (the first byte of a typed signature).
_MULTI_SIGNATURE = {KeypairType.ED25519: b"\x00", KeypairType.SR25519: b"\x01"}


async def install(target: Page | BrowserContext, accounts: list[dict[str, str]],
                  keys: list[Keypair]) -> None:
    """Before the page loads: the stand-in, sharing `accounts`, signing with
    `keys` (found by public key: the page may name an account in any prefix)."""
    by_key = {bytes(key.public_key): key for key in keys}

    def sign(address: str, hex_data: str, kind: Any = "bytes") -> str:
        key = by_key[public_key_of(address)]
        data = bytes.fromhex(hex_data.removeprefix("0x"))
        if kind == "payload":
            return "0x" + (_MULTI_SIGNATURE[key.crypto_type] + bytes(key.sign(data))).hex()
        return "0x" + bytes(key.sign(b"<Bytes>" + data + b"</Bytes>")).hex()

    await target.expose_function("testWalletSign", sign)
    await target.add_init_script(SCRIPT % {"accounts": json.dumps(accounts)})
