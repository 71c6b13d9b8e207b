"""The demo page end to end in Chromium: two people on two replicas, token refresh, logout-all.

Every test drives the page as a person would (forms and buttons) and reads what the page
shows; the page's own module (web/sockgate-client.js) does the protocol.
"""

from __future__ import annotations

import re
import signal
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.browser.conftest import ACCESS_TTL, PASSWORD, REFRESH_MARGIN, DemoCluster

CONNECTED = '[data-testid="conn-state"][data-status="connected"]'
SIGNED_OUT = '[data-testid="conn-state"][data-status="signed_out"]'
RECONNECTING = '[data-testid="conn-state"][data-status="reconnecting"]'


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:6]}"


def open_demo(context: Any, cluster: DemoCluster, gateway: int) -> Any:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    page.goto(f"{cluster.page_url}?gateway={gateway}&refresh_margin={REFRESH_MARGIN}")
    page.wait_for_selector(SIGNED_OUT)
    return page


def sign_up(page: Any, name: str) -> None:
    """Creates the account through the form; the page logs in and connects."""
    page.get_by_role("tab", name="Create account").click()
    page.get_by_test_id("username").fill(name)
    page.get_by_test_id("email").fill(f"{name}@example.com")
    page.get_by_test_id("password").fill(PASSWORD)
    page.get_by_test_id("auth-submit").click()
    page.wait_for_selector(CONNECTED)


def log_in(page: Any, name: str) -> None:
    page.get_by_test_id("username").fill(name)
    page.get_by_test_id("password").fill(PASSWORD)
    page.get_by_test_id("auth-submit").click()
    page.wait_for_selector(CONNECTED)


def join(page: Any, room: str) -> None:
    page.get_by_test_id("room-input").fill(room)
    page.get_by_test_id("join").click()
    page.locator(f'[data-testid="room-list"] [data-room="{room}"]').wait_for()


def say(page: Any, text: str) -> None:
    page.get_by_test_id("message-input").fill(text)
    page.get_by_test_id("send").click()
    page.locator(".msg.own .text", has_text=text).wait_for()


def expect_text(page: Any, test_id: str, pattern: str, timeout: float = 15_000) -> None:
    page.wait_for_function(
        "([id, source]) => new RegExp(source).test("
        'document.querySelector(`[data-testid="${id}"]`).textContent)',
        arg=[test_id, pattern],
        timeout=timeout,
    )


def socket_id(page: Any) -> str:
    return str(page.get_by_test_id("socket-id").text_content()).strip()


def test_two_people_chat_across_replicas(
    demo_cluster: DemoCluster, new_context: Any, artifacts_dir: Path
) -> None:
    # Plain names (the screenshot shows them); no other test registers them.
    alice_name, bob_name, room = "alice", "bob", "public:lobby"
    alice = open_demo(new_context(), demo_cluster, gateway=0)
    bob = open_demo(new_context(), demo_cluster, gateway=1)
    sign_up(alice, alice_name)
    sign_up(bob, bob_name)
    host = re.escape(demo_cluster.gateways[0].removeprefix("http://"))
    expect_text(alice, "conn-state", rf"Connected · {host}")
    assert (
        alice.get_by_test_id("session-gateway").text_content()
        != bob.get_by_test_id("session-gateway").text_content()
    ), "the two people must be on different replicas"

    join(alice, room)
    join(bob, room)
    # Presence crosses replicas: Alice sees Bob arrive.
    alice.locator(".msg.system", has_text=f"{bob_name} joined").wait_for()
    alice.locator('[data-testid="presence"] .chip', has_text=bob_name).wait_for()
    expect_text(alice, "presence", r"^2 in the room")
    # Bob joined second: `who` showed him Alice, who is on the other replica.
    bob.locator('[data-testid="presence"] .chip', has_text=alice_name).wait_for()
    expect_text(bob, "presence", r"^2 in the room")

    say(alice, "Hello from replica one")
    bob.locator(
        f'.msg[data-sender="{alice_name}"] .text', has_text="Hello from replica one"
    ).wait_for()
    say(bob, "Hi Alice, replica two here")
    alice.locator(
        f'.msg[data-sender="{bob_name}"] .text', has_text="Hi Alice, replica two here"
    ).wait_for()

    # A backend notifies the room: both see it, whichever replica they are on.
    demo_cluster.publish_notification(
        room, {"title": "Deploy finished", "text": "sockgate 1.0 is live on every replica"}
    )
    for page in (alice, bob):
        page.locator(".notification", has_text="Deploy finished").wait_for()

    alice.screenshot(path=str(artifacts_dir / "demo.png"))
    assert alice.errors == [] and bob.errors == []


def test_token_refresh_reauths_the_live_socket(demo_cluster: DemoCluster, new_context: Any) -> None:
    page = open_demo(new_context(), demo_cluster, gateway=0)
    sign_up(page, unique("carol"))
    join(page, "public:refresh")
    before = socket_id(page)
    assert before and before != "—"

    # Refresh is due ACCESS_TTL - REFRESH_MARGIN (10 s) after login; allow some slack.
    timeout = (ACCESS_TTL - REFRESH_MARGIN + 10) * 1000
    expect_text(page, "refresh-count", r"^[1-9]", timeout=timeout)
    page.locator('[data-testid="activity"] li', has_text="(reauth)").wait_for()

    # The same socket: the new token went over `reauth`, not through a reconnect.
    assert socket_id(page) == before
    assert page.locator(CONNECTED).count() == 1
    say(page, "still here after the refresh")
    assert page.errors == []


def test_logout_everywhere_disconnects_the_other_tab(
    demo_cluster: DemoCluster, new_context: Any
) -> None:
    name = unique("dave")
    context = new_context()
    first = open_demo(context, demo_cluster, gateway=0)
    sign_up(first, name)
    # A second tab of the same person, on the other replica, with its own session.
    second = open_demo(context, demo_cluster, gateway=1)
    log_in(second, name)
    bystander = open_demo(new_context(), demo_cluster, gateway=0)
    sign_up(bystander, unique("erin"))

    second.get_by_test_id("logout-all").click()
    second.wait_for_selector(SIGNED_OUT)
    # The gateway cut the first tab's socket (revocation through Redis); its refresh is refused,
    # so the page goes back to the login form instead of reconnecting.
    first.wait_for_selector(SIGNED_OUT, timeout=10_000)
    expect_text(first, "auth-note", "session ended")
    assert first.locator("#signed-out").is_visible()
    assert bystander.locator(CONNECTED).count() == 1, "other people stay connected"

    # Logging in again works: a new session.
    log_in(first, name)
    assert first.errors == [] and second.errors == []


def test_reconnects_with_backoff_and_rejoins_rooms(
    demo_cluster: DemoCluster, new_context: Any
) -> None:
    room = "public:reconnect"
    spare = demo_cluster.start_spare()
    try:
        frank = open_demo(new_context(), demo_cluster, gateway=2)
        sign_up(frank, unique("frank"))
        join(frank, room)
        first_socket = socket_id(frank)
        grace = open_demo(new_context(), demo_cluster, gateway=0)
        sign_up(grace, unique("grace"))
        join(grace, room)

        # The replica goes away (SIGTERM drains it): the page says so and keeps retrying.
        spare.stop()
        frank.wait_for_selector(RECONNECTING)
        expect_text(frank, "conn-state", r"Reconnecting · attempt [0-9]+")
        spare = demo_cluster.start_spare()

        # Back on a new socket, in the same room without asking.
        frank.wait_for_selector(CONNECTED, timeout=40_000)
        assert socket_id(frank) != first_socket
        grace.get_by_test_id("message-input").fill("welcome back")
        grace.get_by_test_id("send").click()
        frank.locator(".msg .text", has_text="welcome back").wait_for()
        assert frank.errors == []
    finally:
        spare.stop()


def test_a_refused_token_sends_the_page_back_to_login(
    demo_cluster: DemoCluster, new_context: Any
) -> None:
    spare = demo_cluster.start_spare()
    try:
        page = open_demo(new_context(), demo_cluster, gateway=2)
        name = unique("heidi")
        sign_up(page, name)
        # The replica dies (no goodbye): the page retries with the token it holds...
        spare.signal(signal.SIGKILL)
        spare.wait(5)
        page.wait_for_selector(RECONNECTING)
        # ...which is revoked meanwhile, from another device.
        with httpx.Client(base_url=demo_cluster.auth.url, timeout=10) as client:
            login = client.post("/v1/auth/login", json={"username": name, "password": PASSWORD})
            token = login.json()["access_token"]
            response = client.post(
                "/v1/auth/logout-all", headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == 204
        spare = demo_cluster.start_spare()
        # The new replica refuses the handshake (token_revoked): back to the login form,
        # no retry loop with a token that can never work.
        page.wait_for_selector(SIGNED_OUT, timeout=40_000)
        expect_text(page, "auth-note", "revoked")
        assert page.errors == []
    finally:
        spare.stop()


def test_backoff_is_exponential_with_full_jitter(
    demo_cluster: DemoCluster, new_context: Any
) -> None:
    page = open_demo(new_context(), demo_cluster, gateway=0)
    delays = page.evaluate(
        """async () => {
            const { backoffDelay } = await import("./sockgate-client.js");
            const opts = (r) => ({ baseDelayMs: 500, maxDelayMs: 30000, random: () => r });
            return {
                top: [0, 1, 2, 3, 4, 5, 6, 7, 10].map((n) => backoffDelay(n, opts(0.999999))),
                bottom: [0, 3, 10].map((n) => backoffDelay(n, opts(0))),
                sampled: Array.from({ length: 400 }, () => backoffDelay(4)),
            };
        }"""
    )
    # The ceiling doubles from the base up to the cap; the draw is anywhere below it.
    assert delays["top"] == [499, 999, 1999, 3999, 7999, 15999, 29999, 29999, 29999]
    assert delays["bottom"] == [0, 0, 0]
    sampled = delays["sampled"]
    assert min(sampled) < 1000 and max(sampled) > 7000 and all(0 <= d < 8000 for d in sampled)


def test_gateways_accept_the_page_origin_only(demo_cluster: DemoCluster) -> None:
    handshake = "/socket.io/?EIO=4&transport=polling"
    for gateway in demo_cluster.gateways:
        allowed = httpx.get(gateway + handshake, headers={"Origin": demo_cluster.auth.url})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == demo_cluster.auth.url
        for origin in ("http://evil.example", "http://localhost:1", "null"):
            refused = httpx.get(gateway + handshake, headers={"Origin": origin})
            assert refused.status_code == 400, origin


def test_demo_is_served_with_a_tight_policy(demo_cluster: DemoCluster) -> None:
    with httpx.Client(base_url=demo_cluster.auth.url, timeout=10) as client:
        page = client.get("/demo/")
        assert page.status_code == 200
        assert "sockgate demo" in page.text
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        for gateway in demo_cluster.gateways:
            assert gateway in csp
            assert gateway.replace("http://", "ws://") in csp

        config = client.get("/demo/config.json").json()
        assert config["gateways"] == [*demo_cluster.gateways, demo_cluster.spare_url]
        assert config["pageOrigin"] == demo_cluster.auth.url

        vendor = client.get("/demo/vendor/socket.io.esm.min.js")
        assert vendor.status_code == 200
        assert "javascript" in vendor.headers["content-type"]
        # Only the client build is exposed, nothing else from node_modules.
        assert client.get("/demo/vendor/socket.io.js").status_code == 404
        assert client.get("/demo/../node_modules/jose/package.json").status_code == 404
        assert client.get("/demo", follow_redirects=False).status_code == 308
