import pytest

from signaling.stream_keys import hash_stream_key, key_matches, new_stream_key
from signaling.tokens import InvalidToken, issue_token, verify_token

SECRET = "s" * 40


def test_token_round_trip() -> None:
    token = issue_token(SECRET, "user-1", "5Grw", ttl_s=60, now=1000)
    claims = verify_token(SECRET, token, now=1001)
    assert (claims.user_id, claims.account, claims.expires_at) == ("user-1", "5Grw", 1060)


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # forged signature
    lambda t: "v2" + t[2:],
    lambda t: t.replace(".", "", 1),
    lambda t: "",
])
def test_forged_or_malformed_tokens_are_refused(mangle) -> None:  # type: ignore[no-untyped-def]
    token = issue_token(SECRET, "user-1", "acc", now=1000)
    with pytest.raises(InvalidToken):
        verify_token(SECRET, mangle(token), now=1001)


def test_other_secret_and_expiry_are_refused() -> None:
    token = issue_token(SECRET, "user-1", "acc", ttl_s=10, now=1000)
    with pytest.raises(InvalidToken, match="signature"):
        verify_token("t" * 40, token, now=1001)
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(SECRET, token, now=1010)


def test_stream_keys_are_unique_and_checked_by_hash() -> None:
    key, other = new_stream_key(), new_stream_key()
    assert key != other and key.startswith("sk_") and len(key) > 40
    stored = hash_stream_key(key)
    assert len(stored) == 32
    assert key_matches(key, stored) and not key_matches(other, stored)
