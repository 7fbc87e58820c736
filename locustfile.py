"""Load test: users sign in once, then mix a light request with classifications.

    locust -f locustfile.py --headless -u 50 -r 10 -t 60s --host http://127.0.0.1:8000

LOAD_SHAPE=original    each user waits 1 to 5 s between requests (the original system's test)
LOAD_SHAPE=saturation  users send without waiting, so the model is never idle
IMAGES=distinct        every upload is a new image, so the result cache hides no model work (default)
IMAGES=cached          one image repeated: the cached path
ACCOUNTS=10            users share this many accounts, each signed in once per Locust process
                       (password hashing is deliberately slow: 100 sign-ins would load the server
                       for seconds before any prediction)
"""

from __future__ import annotations

import itertools
import os
import uuid

from gevent.lock import Semaphore
from locust import FastHttpUser, between, constant, task
from locust.contrib.fasthttp import FastHttpSession
from urllib3 import encode_multipart_formdata

from bench.images import distinct_photo

SHAPE = os.environ.get("LOAD_SHAPE", "original")
IMAGES = os.environ.get("IMAGES", "distinct")
ACCOUNTS = int(os.environ.get("ACCOUNTS", "10"))
PASSWORD = "load-test-password"
# A salt per run: images from an earlier run would be answered from the cache.
_RUN = uuid.uuid4().int % 2**24
_counter = itertools.count()
_users = itertools.count()
_tokens: dict[int, str] = {}
_signing_in = Semaphore()


CACHED_IMAGE = distinct_photo(_RUN)


def next_image() -> bytes:
    if IMAGES == "cached":
        return CACHED_IMAGE
    return distinct_photo((_RUN << 20) + next(_counter))


def token(client: FastHttpSession, account: int) -> str:
    """Sign in to one of the shared accounts (registering it first), once per process."""
    with _signing_in:
        if account not in _tokens:
            email = f"load-{_RUN}-{account}@example.com"
            body = {"email": email, "password": PASSWORD}
            client.post("/api/auth/register", json=body, name="register")
            response = client.post("/api/auth/login", json=body, name="login")
            _tokens[account] = response.json()["access_token"]
        return _tokens[account]


# FastHttpUser (geventhttpclient): a third of the CPU per request of HttpUser (requests), measured; the
# load generator shares the machine with the system it measures.
class ServiceUser(FastHttpUser):
    wait_time = between(1, 5) if SHAPE == "original" else constant(0)
    # Past the server's own wait (WAIT_TIMEOUT, 60 s in the bench): a slow answer is the server's 504 to
    # count, not a client timeout (FastHttpUser's default is 60 s; HttpUser had none).
    network_timeout = 120.0

    def on_start(self) -> None:
        self.client.auth_header = f"Bearer {token(self.client, next(_users) % ACCOUNTS)}"

    @task(1)
    def me(self) -> None:
        self.client.get("/api/users/me", name="GET /api/users/me")

    @task(3)
    def predict(self) -> None:
        body, content_type = encode_multipart_formdata({"file": ("photo.jpg", next_image(), "image/jpeg")})
        # geventhttpclient sends a bytes body as it is; Locust's annotation of `data` leaves bytes out.
        self.client.post(
            "/api/predictions",
            data=body,  # type: ignore[arg-type]
            headers={"Content-Type": content_type},
            name="POST /api/predictions",
        )
