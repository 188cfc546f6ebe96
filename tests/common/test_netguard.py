"""SSRF guard: addresses in every spelling, allowlist, ports, pinned connection, no redirects, a wall-clock
deadline, no URL in the logs."""

import ipaddress
import logging
import time

import pytest

from common.netguard import (
    NetPolicy,
    SendError,
    UnsafeURL,
    blocked_reason,
    parse_ports,
    post,
    resolve,
    resolve_and_post,
)
from tests.services.webhook_receiver import Receiver

pytestmark = pytest.mark.trust

DENY_ALL = NetPolicy()
# Test receivers listen on loopback at a random port: both need an explicit allowance.
LOOPBACK_OK = NetPolicy.from_strings(["127.0.0.0/8", "::1/128"], ports="1024-65535", deadline_s=3)

BLOCKED = [
    "127.0.0.1", "127.1.2.3", "0.0.0.0", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
    "169.254.1.1", "100.64.0.1", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",
    "198.18.0.1", "192.0.2.1", "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "2002:7f00:1::",
    "64:ff9b::a9fe:a9fe", "::7f00:1", "fec0::1", "2001:db8::1", "fd00:ec2::254", "169.254.170.23",
    "fd00:ec2::23",
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


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://[::ffff:169.254.169.254]/",
                                 "http://169.254.170.2/v2/credentials", "http://[fd00:ec2::254]/latest/",
                                 # EKS Pod Identity agent, IPv4 and IPv6
                                 "http://169.254.170.23/v1/credentials", "http://[fd00:ec2::23]/v1/credentials"])
def test_metadata_stays_blocked_even_when_its_range_is_allowlisted(url):
    policy = NetPolicy.from_strings(["169.254.0.0/16", "::ffff:0:0/96", "fd00::/8"])
    with pytest.raises(UnsafeURL) as e:
        resolve(url, policy)
    assert e.value.code == "url_forbidden_address"


def test_allowlisted_link_local_that_is_not_metadata_passes():
    policy = NetPolicy.from_strings(["169.254.0.0/16", "::ffff:0:0/96"])
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
        answer = post(target, b'{"a":1}', {"Content-Type": "application/json"}, LOOPBACK_OK)
    assert answer.status_code == 200
    assert calls == ["hooks.example"]
    (got,) = rx.requests
    assert got.headers["host"] == f"hooks.example:{rx.port}"
    assert got.path == "/path?q=1" and got.body == b'{"a":1}'


def test_redirects_are_not_followed():
    with Receiver() as target_rx, Receiver(redirect_to="PLACEHOLDER") as rx:
        rx.redirect_to = target_rx.url
        target = resolve(rx.url, LOOPBACK_OK)
        answer = post(target, b"{}", {}, LOOPBACK_OK)
        assert answer.status_code == 302
        assert len(rx.requests) == 1 and target_rx.requests == []


def test_loopback_refused_without_allowlist_even_by_name():
    with Receiver() as rx:
        with pytest.raises(UnsafeURL):
            resolve(f"http://localhost:{rx.port}/hook", DENY_ALL)
        assert rx.requests == []


def test_refusal_does_not_tell_the_resolved_address():
    """A 422 (or a delivery log line) naming the internal address a host name resolves to maps the network."""
    def resolver(host, port):
        return ["10.20.30.40"]

    with pytest.raises(UnsafeURL) as e:
        resolve("https://intranet.example/hook", DENY_ALL, resolver=resolver)
    assert e.value.code == "url_forbidden_address"
    assert "10.20.30.40" not in str(e.value) and "private" in e.value.message and "reserved" in e.value.message


@pytest.mark.parametrize(("url", "allowed"), [
    ("http://93.184.216.34/h", True), ("https://93.184.216.34/h", True), ("http://93.184.216.34:443/h", True),
    ("https://93.184.216.34:80/h", True), ("http://93.184.216.34:6379/h", False),
    ("https://93.184.216.34:22/h", False), ("http://93.184.216.34:8080/h", False),
])
def test_ports_other_than_80_and_443_need_an_allowance(url, allowed):
    if allowed:
        resolve(url, DENY_ALL)
    else:
        with pytest.raises(UnsafeURL) as e:
            resolve(url, DENY_ALL)
        assert e.value.code == "url_forbidden_port"
        resolve(url, NetPolicy.from_strings(ports="22,6379,8000-8999"))


@pytest.mark.parametrize("spec", ["x", "0", "65536", "9000-8000", "²", "80-", "1e3"])
def test_bad_port_allowances_are_refused(spec):
    with pytest.raises(ValueError):
        parse_ports(spec)


def test_a_trickling_receiver_is_cut_at_the_deadline():
    """Per-read timeouts never fire when a byte comes every 0.2 s; the deadline is wall clock."""
    policy = NetPolicy.from_strings(["127.0.0.0/8"], ports="1024-65535", deadline_s=1.0)
    with Receiver(trickle_s=0.2) as rx:
        started = time.monotonic()
        with pytest.raises(SendError) as e:
            post(resolve(rx.url, policy), b"{}", {}, policy)
        elapsed = time.monotonic() - started
    assert e.value.kind == "timeout" and 1.0 <= elapsed < 1.5, elapsed


def test_the_answer_body_is_not_read():
    """Status and headers are all a delivery needs: a receiver trickling a megabyte costs nothing."""
    policy = NetPolicy.from_strings(["127.0.0.0/8"], ports="1024-65535", deadline_s=5.0)
    with Receiver(body_trickle_s=0.05, headers={"Retry-After": "7"}) as rx:
        started = time.monotonic()
        answer = post(resolve(rx.url, policy), b"{}", {}, policy)
        elapsed = time.monotonic() - started
    assert answer.status_code == 200 and answer.headers["retry-after"] == "7" and elapsed < 1.0, elapsed


def test_no_url_in_the_logs(caplog):
    """Webhook URLs carry secrets (`?token=`); the HTTP client logs nothing that holds them, at any level."""
    caplog.set_level(logging.DEBUG)
    with Receiver() as rx:
        url = rx.url + "?token=s3cr3t-in-query"
        assert post(resolve(url, LOOPBACK_OK), b"{}", {}, LOOPBACK_OK).status_code == 200
    assert rx.requests[0].path.endswith("token=s3cr3t-in-query")
    assert not [r for r in caplog.records if "s3cr3t" in r.getMessage()]


def test_a_slow_dns_answer_counts_against_the_deadline():
    """The URL's owner may run its DNS server too: a lookup that takes 3 s ends the attempt at 1 s."""
    policy = NetPolicy.from_strings(["127.0.0.0/8"], ports="1024-65535", deadline_s=1.0)

    def slow_resolver(host, port):
        time.sleep(3)
        return ["127.0.0.1"]

    started = time.monotonic()
    with pytest.raises(SendError) as e:
        resolve_and_post("http://slow-dns.example:8080/hook", b"{}", {}, policy, resolver=slow_resolver)
    assert e.value.kind == "timeout" and time.monotonic() - started < 1.5


def test_resolve_and_post_checks_the_address_at_send_time():
    with Receiver() as rx:
        with pytest.raises(UnsafeURL):
            resolve_and_post(rx.url, b"{}", {}, NetPolicy(ports="1024-65535"))
        answer = resolve_and_post(rx.url.replace("127.0.0.1", "rebind.example"), b"{}", {}, LOOPBACK_OK,
                                  resolver=lambda host, port: ["127.0.0.1"])
    assert answer.status_code == 200 and len(rx.requests) == 1
