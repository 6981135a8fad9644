"""OFFLOAD_API_KEYS entries: plain, hashed and named keys, their ids and scopes, and who may
see which record."""

from __future__ import annotations

import hashlib

import pytest

from offload_core.contract.api_keys import (
    Principal,
    RequestRate,
    authenticate,
    may_see,
    parse_api_key,
    parse_key_rate_limits,
)
from offload_core.settings import Settings

KEY = "test-key-0123456789abcdef"
HASHED = "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()


def test_a_plain_key_and_its_hash_are_the_same_principal_whose_id_is_not_the_key() -> None:
    plain, hashed = parse_api_key(KEY), parse_api_key(HASHED)
    assert plain.principal == hashed.principal == Principal(hashlib.sha256(KEY.encode()).hexdigest()[:16])
    assert KEY not in plain.principal.id
    assert authenticate([hashed], KEY) == hashed.principal
    assert authenticate([hashed], HASHED) is None  # the hash itself is not a key


def test_a_named_key_has_its_id_and_scopes() -> None:
    ops = parse_api_key(f"ops:admin:{HASHED}")
    assert ops.principal == Principal("ops", frozenset({"admin"}))
    assert ops.principal.is_admin
    shop = parse_api_key("shop::another-key-0123456789")
    assert (shop.principal.id, shop.principal.is_admin) == ("shop", False)
    assert authenticate([ops, shop], "another-key-0123456789") == shop.principal
    assert authenticate([ops, shop], "not-a-key-at-all-0000") is None


def test_two_keys_with_one_id_are_one_principal_during_a_rotation() -> None:
    keys = [parse_api_key("shop::old-key-0123456789abc"), parse_api_key("shop::new-key-0123456789abc")]
    assert authenticate(keys, "old-key-0123456789abc") == authenticate(keys, "new-key-0123456789abc")


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("short", "at least 16 characters"),
        ("sha256:abc", "64 hex digits"),
        ("shop:root:a-long-enough-key-000", "unknown scope 'root'"),
        ("bad id!::a-long-enough-key-000", "key id 'bad id!'"),
        ("shop:a-long-enough-key-000", "one colon"),
    ],
)
def test_a_malformed_entry_is_refused_at_start_without_echoing_the_key(entry: str, problem: str) -> None:
    with pytest.raises(ValueError, match="OFFLOAD_API_KEYS entry 2") as raised:
        Settings(API_KEYS=[KEY, entry])
    assert problem in str(raised.value)
    assert "a-long-enough-key-000" not in str(raised.value)


def test_a_key_sees_its_own_records_and_an_admin_all() -> None:
    shop, other, ops = Principal("shop"), Principal("other"), Principal("ops", frozenset({"admin"}))
    assert may_see(shop, "shop")
    assert not may_see(other, "shop")
    assert not may_see(shop, None)
    assert may_see(ops, "shop")
    assert may_see(ops, None)


def test_rate_limits_parse_per_key_and_say_what_is_wrong() -> None:
    settings = Settings(API_RATE_LIMIT="100/60", API_KEY_RATE_LIMITS="shop=5/1,batch=off")
    assert settings.api_rate_limit == RequestRate(100, 60)
    assert settings.api_key_rate_limits() == {"shop": RequestRate(5, 1), "batch": None}
    assert Settings(API_RATE_LIMIT="off").api_rate_limit is None
    with pytest.raises(ValueError, match=r"OFFLOAD_API_RATE_LIMIT: .*<requests>/<seconds>"):
        Settings(API_RATE_LIMIT="100 per minute")
    with pytest.raises(ValueError, match=r"OFFLOAD_API_KEY_RATE_LIMITS: key shop: .*window"):
        Settings(API_KEY_RATE_LIMITS="shop=5/0")
    with pytest.raises(ValueError, match="two rate limits"):
        parse_key_rate_limits(["shop=1/1", "shop=2/1"])
