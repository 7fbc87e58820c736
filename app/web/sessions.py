"""Who is signed in: JWTs (Litestar's JWT auth with pyjwt) as a bearer header for the API and an HttpOnly
cookie for the pages, their revocation, CSRF, and where a sign-in leads."""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Self, cast
from urllib.parse import urlencode, urlsplit
from uuid import uuid4

from litestar import Response
from litestar.config.csrf import CSRFConfig
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.middleware import csrf as litestar_csrf
from litestar.middleware.authentication import AuthenticationResult
from litestar.middleware.csrf import generate_csrf_token
from litestar.security.jwt import JWTCookieAuth, JWTCookieAuthenticationMiddleware, Token

from app import keys
from app.models import User
from app.settings import Settings
from app.stages import stage
from app.web.deps import AnyRequest, services
from app.web.rendering import go, wants_partial

JWT_ALGORITHM = "HS256"
AUTH_COOKIE = "token"
# In production (https) the cookies' names take this prefix: browsers then take them only when Secure, for
# Path=/ and no Domain, so no other host (a sibling subdomain) can set or replace them.
HOST_ONLY = "__Host-"
# Routes anyone may reach; everything else needs a signed-in user.
PUBLIC_PATHS = [
    "^/api/auth/(register|login)$",
    "^/api/labels",
    "^/health",
    "^/metrics",
    "^/schema",
    "^/static",
    "^/login",
    "^/register",
    "^/favicon",
]


# A signed-in person's row is read at most this often per web process: signing in each request costs no
# query. Nothing in a row that matters here changes at run time (the admin flag is set at start); a token's
# revocation is still checked on every request (`is_revoked`).
USER_TTL = 2.0
MAX_USERS_KEPT = 10_000


class SignedIn:
    """The rows of the people signed in lately, by id, each kept USER_TTL seconds."""

    def __init__(self) -> None:
        self._rows: dict[int, tuple[float, User]] = {}

    async def get(self, user_id: int) -> User | None:
        kept = self._rows.get(user_id)
        if kept is not None and time.monotonic() - kept[0] <= USER_TTL:
            return kept[1]
        user = await User.get_or_none(id=user_id)
        if len(self._rows) >= MAX_USERS_KEPT:
            self._rows.clear()
        if user is not None:
            self._rows[user_id] = (time.monotonic(), user)
        return user


async def retrieve_user(token: Token, connection: ASGIConnection[Any, Any, Any, Any]) -> User | None:
    try:
        user_id = int(token.sub)
    except ValueError:
        return None
    signed_in: SignedIn = connection.app.state.signed_in
    return await signed_in.get(user_id)


# Verifying a token (pyjwt: its signature, then its claims) cost 0.13 ms of CPU per request (measured), and a
# client sends the same token with every request. A token verified once is kept by its exact text: the
# same text always verifies the same way. Its expiry is still checked on every request, and its revocation
# (`is_revoked`); past MAX_TOKENS_KEPT, the tokens kept are dropped.
MAX_TOKENS_KEPT = 10_000
_verified: dict[tuple[Any, ...], Token] = {}


class KeptToken(Token):
    """Litestar's Token, verified once per process (see MAX_TOKENS_KEPT)."""

    @classmethod
    def decode(
        cls,
        encoded_token: str,
        secret: str,
        algorithm: str,
        audience: str | Sequence[str] | None = None,
        issuer: str | Sequence[str] | None = None,
        require_claims: Sequence[str] | None = None,
        verify_exp: bool = True,
        verify_nbf: bool = True,
        strict_audience: bool = False,
    ) -> Self:
        checks = (audience, issuer, require_claims, verify_exp, verify_nbf, strict_audience)
        key = (cls, encoded_token, secret, algorithm, repr(checks))
        token = _verified.get(key)
        if token is None:
            token = super().decode(encoded_token, secret, algorithm, *checks)
            if len(_verified) >= MAX_TOKENS_KEPT:
                _verified.clear()
            _verified[key] = token
        elif verify_exp and token.exp.timestamp() <= time.time():
            del _verified[key]
            raise NotAuthorizedException("Invalid token")  # Litestar's answer to an expired token
        return cast("Self", token)


# Methods that change nothing: they need no CSRF token.
SAFE_METHODS = {"GET", "HEAD", "OPTIONS", "TRACE"}
CSRF_CLAIM = "csrf"
CSRF_COOKIE = "csrftoken"


def cookie_name(settings: Settings, name: str) -> str:
    return HOST_ONLY + name if settings.production else name


class AuthMiddleware(JWTCookieAuthenticationMiddleware):
    """The JSON API takes only the bearer header: a cookie there would bypass CSRF protection. The pages'
    forms must carry the CSRF token of this very session (see `issue_token`)."""

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        with stage("auth"):
            return await self._authenticate(connection)

    async def _authenticate(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        if connection.scope["path"].startswith("/api"):
            header = connection.headers.get(self.auth_header, "")
            scheme, _, encoded = header.partition(" ")
            if scheme.lower() != "bearer" or not encoded:
                raise NotAuthorizedException("Sign in: send 'Authorization: Bearer <token>'")
            return await self.authenticate_token(encoded_token=encoded, connection=connection)
        result = await super().authenticate_request(connection)
        if connection.scope.get("method") not in SAFE_METHODS:
            check_bound_csrf(connection, result.auth)
        return result


def same_token(a: str, b: str) -> bool:
    """compare_digest of two strs raises TypeError when one has a non-ASCII character, as a CSRF cookie, header or
    form field anyone sends may (a 500); compared as UTF-8, such a token is a wrong one (403)."""
    return hmac.compare_digest(a.encode(), b.encode())


# Litestar's CSRF middleware compares its tokens with this name, imported from `secrets` into its module.
litestar_csrf.compare_digest = same_token  # type: ignore[assignment]  # secrets.compare_digest is overloaded


def check_bound_csrf(connection: ASGIConnection[Any, Any, Any, Any], token: Token) -> None:
    """Litestar's CSRF check makes the form's token match the CSRF cookie; this makes that cookie the one the
    session was signed in with, so a cookie planted from elsewhere (another site's subdomain, a network on
    the way) cannot carry a form in someone's session."""
    bound = token.extras.get(CSRF_CLAIM)
    cookie = connection.cookies.get(csrf_cookie_name(connection))
    if not isinstance(bound, str) or not bound or not cookie or not same_token(bound, cookie):
        raise PermissionDeniedException("This form does not belong to your session: reload the page and try again")


def build_jwt_auth(settings: Settings) -> JWTCookieAuth[User, Token]:
    return JWTCookieAuth[User, Token](
        retrieve_user_handler=retrieve_user,
        token_secret=settings.secret_key,
        algorithm=JWT_ALGORITHM,
        require_claims=["exp", "sub"],
        default_token_expiration=timedelta(minutes=settings.token_minutes),
        key=cookie_name(settings, AUTH_COOKIE),
        samesite="lax",
        secure=settings.production,
        exclude=PUBLIC_PATHS,
        authentication_middleware_class=AuthMiddleware,
        token_cls=KeptToken,
    )


def csrf_config(settings: Settings) -> CSRFConfig:
    """The pages' forms carry a CSRF token; the API, health, metrics and schema take none (no cookies there)."""
    return CSRFConfig(
        secret=settings.secret_key,
        cookie_name=cookie_name(settings, CSRF_COOKIE),
        cookie_secure=settings.production,
        cookie_httponly=False,
        exclude=["^/api/", "^/health", "^/metrics", "^/schema"],
    )


def csrf_cookie_name(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    config = connection.app.csrf_config
    assert config is not None  # the pages' forms are always protected (app/web/app.py)
    return config.cookie_name


def jwt_auth(connection: ASGIConnection[Any, Any, Any, Any]) -> JWTCookieAuth[User, Token]:
    found: JWTCookieAuth[User, Token] = connection.app.state.jwt_auth
    return found


def issue_token(request: AnyRequest, user: User, csrf_cookie: str = "") -> str:
    """A jti on every token lets logout revoke exactly that token; a page session's token also names the
    CSRF cookie made for it as it signed in (`signed_in`), which binds the two."""
    return jwt_auth(request).create_token(
        identifier=str(user.id), token_unique_jwt_id=uuid4().hex, token_extras={CSRF_CLAIM: csrf_cookie}
    )


async def revoke(request: AnyRequest, token: Token) -> None:
    # Remember the revocation only as long as the token would have lived: rounded up, and a second more, so
    # no part of its last second is left unrevoked.
    ttl = max(1, math.ceil(token.exp.timestamp() - time.time()) + 1)
    if isinstance(token.jti, str):
        await services(request).redis.set(keys.revoked_token(token.jti), "1", ex=ttl)


async def is_revoked(token: Token, connection: Any) -> bool:
    if not isinstance(token.jti, str):
        return False
    return bool(await services(connection).redis.exists(keys.revoked_token(token.jti)))


# Where a sign-in may send people afterwards: never back to the account forms themselves.
ACCOUNT_PATHS = ("/login", "/register", "/logout")
NEXT_MAX = 2000  # characters of `next` the account pages take; a longer page address is not come back to


def safe_next(target: str | None) -> str:
    """A local path to continue to after signing in; anything else (another host, a scheme, past NEXT_MAX: it
    comes back as a Location header) goes home."""
    if not target or len(target) > NEXT_MAX or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    if any(ord(c) < 32 for c in target):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or parts.path.startswith(ACCOUNT_PATHS):
        return "/"
    return target


def current_page(request: AnyRequest) -> str:
    """The path and query of the page a swap or a form post was made from (htmx's HX-Current-URL), or "/".
    Its scheme and host are not compared with the request's (htmx's `current_url_abs_path` does): behind
    a proxy that ends TLS the page is https and the request http, and every swap went back to "/". Only
    the path is used, and `safe_next` keeps it here. The header is the client's to write: one that does
    not parse as a URL is no page."""
    htmx = getattr(request, "htmx", None)
    try:
        page = urlsplit((htmx.current_url if htmx else None) or "")
    except ValueError:
        return "/"
    here = page.path + (f"?{page.query}" if page.query else "")
    return here or "/"


def login_url(request: AnyRequest) -> str:
    """/login, coming back afterwards to the page being viewed."""
    if request.method == "GET" and not wants_partial(request):
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    else:  # a form post or a swap: come back to the page it was made from
        here = current_page(request)
    target = safe_next(here)
    return "/login" if target == "/" else f"/login?{urlencode({'next': target})}"


def signed_in(request: AnyRequest, user: User, target: str) -> Response[Any]:
    """Sign a browser in, with a CSRF cookie of its own: the one it came with may have been planted by
    someone who knows its token (another site's subdomain, a network on the way)."""
    auth, csrf = jwt_auth(request), request.app.csrf_config
    assert csrf is not None  # the pages' forms are always protected (app/web/app.py)
    response = go(request, target)
    csrf_cookie = generate_csrf_token(csrf.secret)
    response.set_cookie(
        Cookie(
            key=csrf.cookie_name,
            value=csrf_cookie,
            path=csrf.cookie_path,
            domain=csrf.cookie_domain,
            httponly=csrf.cookie_httponly,
            samesite=csrf.cookie_samesite,
            secure=csrf.cookie_secure or request.url.scheme == "https",
        )
    )
    response.set_cookie(
        Cookie(
            key=auth.key,
            value=issue_token(request, user, csrf_cookie),
            path=auth.path,
            domain=auth.domain,
            max_age=int(auth.default_token_expiration.total_seconds()),
            httponly=True,  # out of reach of scripts
            samesite=auth.samesite,  # lax: not sent on cross-site posts
            secure=auth.secure or request.url.scheme == "https",  # production, or served over https
        )
    )
    return response


def signed_out(request: AnyRequest, target: str) -> Response[Any]:
    auth = jwt_auth(request)
    response = go(request, target)
    secure = auth.secure or request.url.scheme == "https"  # a __Host- cookie is replaced only by a Secure one
    response.set_cookie(auth.key, "", path=auth.path, domain=auth.domain, secure=secure, max_age=0, expires=0)
    # The next session gets a CSRF token of its own.
    response.set_cookie(csrf_cookie_name(request), "", secure=secure, max_age=0, expires=0)
    return response
