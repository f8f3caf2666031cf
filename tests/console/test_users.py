"""The users pages: the list and search, and a user's page with what every
service holds of them, payloads in their attributes shown as text."""

from __future__ import annotations

import uuid

import httpx

from lifecycle.common.v1 import stage_pb2
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from runtime.structs import dict_to_struct
from tests.console.conftest import IMAGE, SCRIPT, Console
from tests.console.test_pages import inert, page_of
from tests.support import eventually


async def _user(console_suite: Console) -> users_pb2.User:
    """A user with payloads in their attributes, moved once."""
    users = users_pb2_grpc.UserServiceStub(console_suite.channels["users"])
    created = await users.CreateUser(
        users_pb2.CreateUserRequest(
            user=users_pb2.User(
                email=f"{uuid.uuid4().hex[:10]}@example.com",
                attributes=dict_to_struct({"plan": SCRIPT, IMAGE: "key"}),
            )
        )
    )
    await users.TransitionStage(
        users_pb2.TransitionStageRequest(
            user_id=created.user.id, to_stage=stage_pb2.LIFECYCLE_STAGE_ACTIVATION
        )
    )
    return created.user


async def test_a_users_page_shows_stage_history_attributes_and_events(
    client: httpx.AsyncClient, console_suite: Console
) -> None:
    user = await _user(console_suite)
    html = await page_of(client, f"/users/{user.id}")
    assert f"<h1>{user.email}</h1>" in html
    assert '<dd class="stage">activation</dd>' in html
    assert '(first stage) → <span class="stage">acquisition</span>' in html
    assert 'acquisition → <span class="stage">activation</span>' in html
    assert "&lt;script&gt;" in html
    inert(html)

    async def events_shown() -> bool:
        return "user.stage_changed" in await page_of(client, f"/users/{user.id}")

    await eventually(events_shown)


async def test_the_list_finds_a_user_by_email_and_filters_by_stage(
    client: httpx.AsyncClient, console_suite: Console
) -> None:
    user = await _user(console_suite)
    found = await client.get(f"/users?q={user.email}")
    assert found.status_code == 303
    assert found.headers["location"] == f"/users/{user.id}"
    assert user.email in await page_of(client, "/users?stage=activation")
    assert user.email not in await page_of(client, "/users?stage=revenue")
    assert "NOT_FOUND" in await page_of(client, "/users?q=nobody@example.com", 404)
    assert "no stage" in await page_of(client, "/users?stage=%3Cb%3E", 400)
