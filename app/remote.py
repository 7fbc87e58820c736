"""The image classification service as the command-line client (app/client.py) sees it: its routes, and its
answers read with care, as any server's might be odd (a redirect, an HTML page, a body of gigabytes, fields
missing): each becomes a ClientError that says what was wrong, never a traceback."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from app.exports import result_row

LOOKUP_LIMIT = 1000
# A collection refused for now (429 or 503 with Retry-After) is sent again, up to this many times.
BUSY_ATTEMPTS = 120
BUSY_WAIT_S = 5.0
# The most of one answer read: a lookup's (LOOKUP_LIMIT results) is well under 1 MB; more is not the service.
MAX_ANSWER_BYTES = 32 << 20


class ClientError(RuntimeError):
    """The service could not be reached or refused the work."""


class UsageError(ClientError):
    """Bad arguments or credentials."""


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Service:
    def __init__(
        self,
        url: str,
        token: str | None,
        email: str | None,
        password: str | None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        try:
            address = httpx.URL(self.url)
        except httpx.InvalidURL as exc:
            raise UsageError(f"--url {url}: {exc}") from exc
        if address.scheme not in ("http", "https") or not address.host:
            raise UsageError(f"--url {url}: give the service's address, as http://host:port or https://host")
        self.http = httpx.Client(base_url=self.url, timeout=300, transport=transport)
        if not token:
            if not (email and password):
                raise UsageError("give --token (or APP_TOKEN), or --email and --password (or APP_PASSWORD)")
            token = self._login(email, password)
        self.http.headers["Authorization"] = f"Bearer {token}"

    def _send(self, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, Any]:
        """The answer and its JSON (None if it has none), read up to MAX_ANSWER_BYTES."""
        with self.http.stream(method, path, **kwargs) as response:
            body = bytearray()
            for part in response.iter_bytes():
                body += part
                if len(body) > MAX_ANSWER_BYTES:
                    raise ClientError(f"{method} {path}: an answer of over {MAX_ANSWER_BYTES} bytes: {self.not_ours}")
        try:
            return response, json.loads(body)
        except ValueError:
            return response, None

    @property
    def not_ours(self) -> str:
        return f"is {self.url} the image classification service?"

    def _check(self, response: httpx.Response, answer: Any) -> dict[str, Any]:
        where = f"{response.request.method} {response.request.url.path}: {response.status_code}"
        if response.is_redirect:  # not followed: a POST would be sent on as a GET
            raise ClientError(
                f"{where}, sent on to {response.headers.get('Location')}: is --url the service's own address?"
            )
        if response.status_code >= 400:
            detail = (answer.get("detail") if isinstance(answer, dict) else None) or response.reason_phrase
            error = UsageError if response.status_code in (401, 403) else ClientError
            raise error(f"{where} {str(detail)[:500]}")
        if not isinstance(answer, dict):
            raise ClientError(f"{where}, and no JSON object: {self.not_ours}")
        return answer

    @contextmanager
    def _reading(self, what: str) -> Iterator[None]:
        """An answer's fields, read: ClientError where the answer is not shaped as the service's."""
        try:
            yield
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ClientError(f"{what}: an answer not shaped as expected ({exc!r}): {self.not_ours}") from exc

    def _login(self, email: str, password: str) -> str:
        body = self._check(*self._send("POST", "/api/auth/login", json={"email": email, "password": password}))
        with self._reading("signing in"):
            return str(body["access_token"])

    def user_id(self) -> object:
        """Who the credentials belong to (checks them before any work)."""
        with self._reading("checking the credentials"):
            return str(self._check(*self._send("GET", "/api/users/me"))["id"])

    def lookup(self, hashes: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for part in chunks(sorted(set(hashes)), LOOKUP_LIMIT):
            body = self._check(*self._send("POST", "/api/predictions/lookup", json={"sha256": part}))
            with self._reading("looking up results"):
                results = {str(h): dict(r) for h, r in body["found"].items()}
                for result in results.values():
                    result_row(result | {"file_name": ""})  # one the CSV can be written from
            found |= results
        return found

    def upload(self, images: list[tuple[str, bytes]], name: str) -> str:
        files = [("files", image) for image in images]
        for _ in range(BUSY_ATTEMPTS):
            response, answer = self._send("POST", "/api/collections", files=files, data={"name": name})
            # Too many collections in progress, or the service busy: wait as told (a little at a time,
            # since one of ours may finish sooner), then try again.
            if response.status_code not in (429, 503) or "Retry-After" not in response.headers:
                break
            time.sleep(busy_wait(response.headers["Retry-After"]))
        body = self._check(response, answer)
        with self._reading("sending a collection"):
            return str(body["id"])

    def named(self, tag: str) -> str | None:
        """The id of one's collection whose name ends with `tag`, among one's newest 100, if there is one."""
        body = self._check(*self._send("GET", "/api/collections", params={"per_page": 100}))
        with self._reading("finding a collection sent"):
            return next((str(c["id"]) for c in body["items"] if str(c["name"]).endswith(f", {tag})")), None)

    def progress(self, collection_id: str) -> dict[str, Any] | None:
        """The collection's `status` (reading, classifying, done) and `progress` counts; None if it is gone."""
        response, answer = self._send("GET", f"/api/collections/{collection_id}", params={"per_page": 1})
        if response.status_code == 404:
            return None
        body = self._check(response, answer)
        with self._reading("following a collection"):
            counts = {k: int(body["progress"][k]) for k in ("total", "done", "failed")}
            return {"status": str(body["status"]), "progress": counts}


def busy_wait(retry_after: str) -> float:
    """Seconds to wait for a Retry-After, at most BUSY_WAIT_S (also for one given as a date, or nonsense)."""
    try:
        wait = float(retry_after)
    except ValueError:
        return BUSY_WAIT_S
    return min(max(wait, 0.0), BUSY_WAIT_S) if math.isfinite(wait) else BUSY_WAIT_S
