"""SSRF guard: addresses in every spelling, allowlist, pinned connection, no redirects."""

import ipaddress

import pytest

from common.netguard import NetPolicy, UnsafeURL, blocked_reason, post, resolve
from tests.trust.receiver import Receiver

DENY_ALL = NetPolicy()
LOOPBACK_OK = NetPolicy.from_strings(["127.0.0.0/8", "::1/128"])

BLOCKED = [
    "127.0.0.1", "127.1.2.3", "0.0.0.0", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
    "169.254.1.1", "100.64.0.1", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",
    "198.18.0.1", "192.0.2.1", "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "2002:7f00:1::",
    "64:ff9b::a9fe:a9fe", "::7f00:1", "fec0::1", "2001:db8::1", "fd00:ec2::254",
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("addr", BLOCKED)
def test_non_public_addresses_are_blocked(addr):
    assert blocked_reason(ipaddress.ip_address(addr)) is not None
    with pytest.raises(UnsafeURL) as e:
        resolve(f"http://{'[' + addr + ']' if ':' in addr else addr}/x", DENY_ALL)
    assert e.value.code == "url_forbidden_address"


@pytest.mark.parametrize("addr", PUBLIC)
def test_public_addresses_pass(addr):
    assert blocked_reason(ipaddress.ip_address(addr)) is None


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("file:///etc/passwd", "url_scheme_forbidden"),
        ("gopher://127.0.0.1:6379/_INFO", "url_scheme_forbidden"),
        ("ftp://example.com/", "url_scheme_forbidden"),
        ("javascript:alert(1)", "url_scheme_forbidden"),
        ("http://user:pw@example.com/", "url_invalid"),
        ("http:///nohost", "url_invalid"),
        ("http://exa mple.com/", "url_invalid"),
        ("http://example.com:99999/", "url_invalid"),
        ("", "url_invalid"),
        ("http://" + "a" * 3000 + ".com/", "url_invalid"),
    ],
)
def test_malformed_or_foreign_urls(url, code):
    with pytest.raises(UnsafeURL) as e:
        resolve(url, DENY_ALL)
    assert e.value.code == code


def test_integer_and_hex_ip_spellings_are_caught_after_resolution():
    # glibc turns "2130706433" and "0x7f.1" into 127.0.0.1; the resolved address is what is checked.
    for host in ("2130706433", "0x7f.1", "localhost"):
        with pytest.raises(UnsafeURL):
            resolve(f"http://{host}/", DENY_ALL)


def test_one_bad_record_among_good_ones_refuses_the_host():
    def resolver(host, port):
        return ["93.184.216.34", "127.0.0.1"]

    with pytest.raises(UnsafeURL):
        resolve("https://hooks.example/x", DENY_ALL, resolver=resolver)


def test_metadata_stays_blocked_even_when_its_range_is_allowlisted():
    policy = NetPolicy.from_strings(["169.254.0.0/16", "::ffff:0:0/96"])
    with pytest.raises(UnsafeURL):
        resolve("http://169.254.169.254/latest/meta-data/", policy)
    with pytest.raises(UnsafeURL):
        resolve("http://[::ffff:169.254.169.254]/", policy)
    assert resolve("http://169.254.1.1/", policy).ip == ipaddress.ip_address("169.254.1.1")


def test_unresolvable_host():
    def resolver(host, port):
        raise OSError("Name or service not known")

    with pytest.raises(UnsafeURL) as e:
        resolve("https://nowhere.invalid/", DENY_ALL, resolver=resolver)
    assert e.value.code == "url_unresolvable"


def test_pinned_connection_sends_original_host_and_resolves_once():
    calls = []

    def resolver(host, port):
        calls.append(host)
        return ["127.0.0.1"]

    with Receiver() as rx:
        target = resolve(f"http://hooks.example:{rx.port}/path?q=1", LOOPBACK_OK, resolver=resolver)
        response, body = post(target, b'{"a":1}', {"Content-Type": "application/json"}, LOOPBACK_OK)
    assert response.status_code == 200 and body == b"ok"
    assert calls == ["hooks.example"]
    (got,) = rx.requests
    assert got.headers["host"] == f"hooks.example:{rx.port}"
    assert got.path == "/path?q=1" and got.body == b'{"a":1}'


def test_redirects_are_not_followed():
    with Receiver() as target_rx, Receiver(redirect_to="PLACEHOLDER") as rx:
        rx.redirect_to = target_rx.url
        target = resolve(rx.url, LOOPBACK_OK)
        response, _ = post(target, b"{}", {}, LOOPBACK_OK)
        assert response.status_code == 302
        assert len(rx.requests) == 1 and target_rx.requests == []


def test_loopback_refused_without_allowlist_even_by_name():
    with Receiver() as rx:
        with pytest.raises(UnsafeURL):
            resolve(f"http://localhost:{rx.port}/hook", DENY_ALL)
        assert rx.requests == []
