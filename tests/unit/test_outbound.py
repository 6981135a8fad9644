"""Submit-time URL checks and the allow-list. Every URL here names an IP literal or a name from
/etc/hosts, or uses a scripted resolver, so no test needs a network."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

import pytest

from offload_core.engines.outbound import ALLOWED_HOSTS_SETTING, MAX_URL_LENGTH, OutboundPolicy, UnsafeURL, non_public
from offload_core.settings import Settings

NOBODY = OutboundPolicy([])


def resolver(answers: dict[str, Sequence[str]]):
    def resolve(host: str, port: int) -> Sequence[str]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[host]

    return resolve


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1/hook", "loopback"),
        ("http://localhost:8080/hook", "loopback"),
        # Spellings that getaddrinfo turns into 127.0.0.1.
        ("http://2130706433/", "loopback"),
        ("http://0x7f.1/", "loopback"),
        ("http://127.1/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[2002:7f00:1::]/", "loopback"),  # 6to4
        ("http://[64:ff9b::7f00:1]/", "loopback"),  # NAT64
        ("http://0.0.0.0/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://10.1.2.3/", "private"),
        ("https://192.168.0.1/", "private"),
        ("http://172.16.5.4/", "private"),
        ("http://[fc00::1]/", "private"),
        ("http://100.64.0.1/", "shared (carrier-grade NAT)"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[ff02::1]/", "multicast"),
        ("http://[fec0::1]/", "site-local"),
        ("http://240.0.0.1/", "reserved"),
        ("http://192.0.2.1/", "private"),  # documentation range
    ],
)
def test_non_public_addresses_are_refused_whatever_the_spelling(url: str, kind: str) -> None:
    with pytest.raises(UnsafeURL, match=ALLOWED_HOSTS_SETTING) as refused:
        NOBODY.check_url(url)
    assert f" {kind} address" in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.215.14/hook",
        "https://93.184.215.14:8443/hook?token=abc",
        "https://[2606:4700:4700::1111]/hook",
        "http://[::ffff:93.184.215.14]/",
        "http://[64:ff9b::5db8:d70e]/",  # NAT64 form of 93.184.215.14
    ],
)
def test_public_literals_pass_without_any_lookup(url: str) -> None:
    NOBODY.check_url(url)


def test_a_refusal_names_the_host_and_the_address_it_resolves_to() -> None:
    with pytest.raises(UnsafeURL) as refused:
        NOBODY.check_url("http://2130706433/")
    assert str(refused.value).startswith("2130706433 resolves to 127.0.0.1, a loopback address;")
    with pytest.raises(UnsafeURL) as refused:
        NOBODY.check_url("http://[::ffff:127.0.0.1]/")
    assert "an IPv6 form of 127.0.0.1, a loopback address" in str(refused.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://93.184.215.14/file", "scheme must be http or https, not 'ftp'"),
        ("file:///etc/passwd", "scheme must be http or https, not 'file'"),
        ("gopher://93.184.215.14/", "scheme must be http or https"),
        ("hooks.example.com/path", "no scheme"),
        ("http:///path", "no host"),
        ("http://user:secret@/", "no host"),
        ("https://user:secret@93.184.215.14/hook", "contains credentials"),
        ("https://token@93.184.215.14/hook", "contains credentials"),
        ("http://a\\@127.0.0.1/", "contains credentials"),  # httpx reads "a\" as a user name
        ("http://[::1/", "not a valid URL"),
        ("http://93.184.215.14:99999/", "port 99999 is not a TCP port"),
        ("http://93.184.215.14:0/", "port 0 is not a TCP port"),
        ("http://0177.0.0.1/", "not a valid URL"),  # httpx refuses octal; getaddrinfo would say 127.0.0.1
        ("https://93.184.215.14/" + "a" * MAX_URL_LENGTH, f"at most {MAX_URL_LENGTH}"),
    ],
)
def test_malformed_urls_are_refused_saying_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(UnsafeURL, match=message):
        NOBODY.check_url(url)


def test_credentials_are_not_repeated_in_the_message() -> None:
    with pytest.raises(UnsafeURL) as refused:
        NOBODY.check_url("https://user:hunter2hunter2@93.184.215.14/")
    assert "hunter2" not in str(refused.value)


def test_a_host_that_does_not_resolve_is_refused() -> None:
    policy = OutboundPolicy([], resolve=resolver({}))
    with pytest.raises(UnsafeURL, match=r"the host 'hooks\.example\.test' does not resolve"):
        policy.check_url("https://hooks.example.test/hook")
    empty = OutboundPolicy([], resolve=resolver({"hooks.example.test": []}))
    with pytest.raises(UnsafeURL, match="does not resolve"):
        empty.check_url("https://hooks.example.test/hook")


def test_every_address_of_a_host_must_be_public() -> None:
    policy = OutboundPolicy([], resolve=resolver({"mixed.test": ["93.184.215.14", "10.0.0.7"]}))
    with pytest.raises(UnsafeURL, match=r"mixed\.test resolves to 10\.0\.0\.7, a private address"):
        policy.check_url("https://mixed.test/hook")
    public = OutboundPolicy([], resolve=resolver({"public.test": ["93.184.215.14", "2606:4700:4700::1111"]}))
    public.check_url("https://public.test/hook")


@pytest.mark.parametrize("entry", ["127.0.0.1", "127.0.0.0/8", " 127.0.0.1 "])
def test_an_allow_listed_address_or_network_exempts_loopback_whatever_the_spelling(entry: str) -> None:
    policy = OutboundPolicy([entry])
    for url in ["http://127.0.0.1:8000/hook", "http://2130706433/", "http://0x7f.1/", "http://127.1/"]:
        policy.check_url(url)
    for url in ["http://10.1.2.3/", "http://169.254.169.254/", "http://[::1]/"]:
        with pytest.raises(UnsafeURL):
            policy.check_url(url)


def test_a_network_entry_covers_its_addresses_only() -> None:
    policy = OutboundPolicy(["10.0.0.0/8", "fd00::/8", "[::1]"])
    policy.check_url("http://10.200.0.5/hook")
    policy.check_url("http://[fd12::5]/hook")
    policy.check_url("http://[::1]:9000/hook")
    with pytest.raises(UnsafeURL, match=r"192\.168\.1\.1 is a private address"):
        policy.check_url("http://192.168.1.1/hook")


def test_an_allow_listed_name_is_exempt_but_only_by_name() -> None:
    NOBODY.check_url("http://93.184.215.14/")  # sanity: literals need no allow-list
    with pytest.raises(UnsafeURL, match=r"localhost resolves to 127\.0\.0\.1"):
        NOBODY.check_url("http://localhost/hook")
    policy = OutboundPolicy(["LocalHost"])
    policy.check_url("http://localhost/hook")
    policy.check_url("http://LOCALHOST.:8080/hook")
    # The name does not exempt its address under another spelling.
    with pytest.raises(UnsafeURL):
        policy.check_url("http://127.0.0.1/hook")


def test_an_allow_listed_name_is_not_resolved_at_submit_time() -> None:
    # It may exist only in the workers' network (a cluster-internal service name).
    policy = OutboundPolicy(["hooks.internal"], resolve=resolver({}))
    policy.check_url("http://hooks.internal/hook")


def test_a_leading_dot_exempts_subdomains_but_not_the_name_itself() -> None:
    policy = OutboundPolicy(
        [".internal.test"],
        resolve=resolver({"internal.test": ["10.0.0.1"], "eviltinternal.test": ["10.0.0.2"]}),
    )
    policy.check_url("http://a.internal.test/hook")
    policy.check_url("http://b.a.INTERNAL.test/hook")
    with pytest.raises(UnsafeURL):
        policy.check_url("http://internal.test/hook")
    with pytest.raises(UnsafeURL):
        policy.check_url("http://eviltinternal.test/hook")


@pytest.mark.parametrize(
    "entry", ["*.example.com", "http://hooks.example.com", "hooks.example.com:8080", "10.0.0.0/33"]
)
def test_an_unusable_allow_list_entry_is_a_configuration_error(entry: str) -> None:
    with pytest.raises(ValueError, match=f"{ALLOWED_HOSTS_SETTING}: .* is not a host name, IP address or network"):
        OutboundPolicy([entry])


def test_the_policy_reads_the_setting() -> None:
    settings = Settings(API_KEYS=["k" * 16], OUTBOUND_ALLOWED_HOSTS="localhost, 10.0.0.0/8")
    policy = OutboundPolicy.from_settings(settings)
    policy.check_url("http://localhost/hook")
    policy.check_url("http://10.1.2.3/hook")
    with pytest.raises(UnsafeURL):
        policy.check_url("http://192.168.0.1/hook")


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("2002:808:808::1", True),  # 6to4 of a public address
        ("2002:a00:1::1", False),  # 6to4 of 10.0.0.1
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
        ("::ffff:10.0.0.1", False),
        ("255.255.255.255", False),
        ("198.18.0.1", False),  # benchmarking
    ],
)
def test_public_means_globally_routable_unicast(address: str, public: bool) -> None:
    assert (non_public(ipaddress.ip_address(address)) is None) is public


def test_the_highest_tcp_port_is_a_port() -> None:
    NOBODY.check_url("http://93.184.215.14:65535/hook")
    OutboundPolicy(["10.0.0.0/8"]).check_url("http://10.1.2.3:65535/hook")
    with pytest.raises(UnsafeURL, match="port 65536 is not a TCP port"):
        NOBODY.check_url("http://93.184.215.14:65536/hook")


@pytest.mark.parametrize("entry", ["10.0.0.0/8", "10.1.2.3"])
@pytest.mark.parametrize("spelling", ["::ffff:10.1.2.3", "::ffff:a01:203"])
def test_an_allow_listed_ipv4_address_admits_its_ipv4_mapped_ipv6_forms(entry: str, spelling: str) -> None:
    policy = OutboundPolicy([entry])
    assert policy.address_is_allowed(ipaddress.ip_address(spelling))
    policy.check_url(f"http://[{spelling}]:8080/hook")
    # Only that address: another private one in its mapped form stays refused.
    with pytest.raises(UnsafeURL, match="private address"):
        policy.check_url("http://[::ffff:192.168.0.1]/hook")
