"""Helpers shared by the tests."""

from __future__ import annotations

from uuid import uuid4

import httpx


def unique_email() -> str:
    return f"user-{uuid4().hex[:12]}@example.com"


async def sign_up(client: httpx.AsyncClient, email: str | None = None) -> dict[str, str]:
    """Register and log in a new user; returns the Authorization header."""
    email = email or unique_email()
    response = await client.post("/api/auth/register", json={"email": email, "password": "correct horse"})
    assert response.status_code == 201, response.text
    response = await client.post("/api/auth/login", json={"email": email, "password": "correct horse"})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}
