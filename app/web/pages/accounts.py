"""The account pages: sign up, sign in, sign out. Errors are shown in the form, next to their field."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Response, get, post
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException
from litestar.params import Body, QueryParameter
from litestar.response import Template
from litestar.status_codes import HTTP_200_OK, HTTP_400_BAD_REQUEST, HTTP_401_UNAUTHORIZED

from app import accounts
from app.web.deps import AnyRequest, client_address, services
from app.web.limits import FORM_ROUTE, MAX_FORM_BYTES
from app.web.rendering import render
from app.web.sessions import NEXT_MAX, revoke, safe_next, signed_in, signed_out

FormBody = Body(media_type=RequestEncodingType.URL_ENCODED)


def form_post(path: str) -> post:
    """A page's form route: a form's bound whatever its encoding, and its 413 says so (app/web/errors.py)."""
    return post(
        path,
        include_in_schema=False,
        status_code=HTTP_200_OK,
        request_max_body_size=MAX_FORM_BYTES,
        opt={FORM_ROUTE: True},
    )


NextPath = Annotated[str, QueryParameter(name="next", max_length=NEXT_MAX, description="Where to go after signing in")]


class LoginForm(msgspec.Struct):
    email: str = ""
    password: str = ""
    next: str = ""


class RegisterForm(msgspec.Struct):
    email: str = ""
    name: str = ""
    password: str = ""
    next: str = ""


def account_form(
    request: AnyRequest,
    kind: str,
    values: dict[str, str],
    errors: dict[str, str],
    status_code: int = HTTP_200_OK,
    headers: dict[str, str] | None = None,
) -> Template:
    return render(
        request,
        f"pages/{kind}.html",
        f"partials/{kind}.html",
        {"values": values, "errors": errors},
        status_code=status_code,
        headers=headers,
    )


@get("/login", name="login", include_in_schema=False)
async def login_page(request: AnyRequest, next_path: NextPath = "/") -> Template:
    return account_form(request, "login", {"email": "", "next": safe_next(next_path)}, {})


# A form's bound whatever its encoding: sent as multipart, a sign-in or sign-up (signed out, unthrottled
# until checked) took the API's 1 MB, its fields normalised on the event loop and echoed back.
@form_post("/login")
async def login_submit(request: AnyRequest, data: Annotated[LoginForm, FormBody]) -> Response[Any]:
    values = {"email": data.email.strip(), "next": safe_next(data.next)}
    errors: dict[str, str] = {}
    if problem := accounts.sign_in_problem(data.email):
        errors["email"] = problem
    if not data.password:
        errors["password"] = "Enter your password"
    elif len(data.password) > accounts.PASSWORD_MAX:  # no account has one this long: skip the hashing
        errors["password"] = accounts.BAD_CREDENTIALS
    if errors:
        return account_form(request, "login", values, errors, HTTP_400_BAD_REQUEST)
    try:
        throttle = services(request).throttle
        user = await accounts.authenticate(data.email, data.password, client_address(request), throttle)
    except HTTPException as exc:  # 401 wrong email or password, 429 too many attempts
        where = "password" if exc.status_code == HTTP_401_UNAUTHORIZED else "form"
        return account_form(request, "login", values, {where: exc.detail}, exc.status_code, exc.headers)
    return signed_in(request, user, values["next"])


@get("/register", name="register", include_in_schema=False)
async def register_page(request: AnyRequest, next_path: NextPath = "/") -> Template:
    return account_form(request, "register", {"email": "", "name": "", "next": safe_next(next_path)}, {})


def register_problems(data: RegisterForm) -> dict[str, str]:
    problems = {
        "email": accounts.email_problem(data.email),
        "name": accounts.name_problem(data.name),
        "password": accounts.password_problem(data.password),
    }
    return {name: problem for name, problem in problems.items() if problem}


@form_post("/register")
async def register_submit(request: AnyRequest, data: Annotated[RegisterForm, FormBody]) -> Response[Any]:
    values = {"email": data.email.strip(), "name": data.name.strip(), "next": safe_next(data.next)}
    if errors := register_problems(data):
        return account_form(request, "register", values, errors, HTTP_400_BAD_REQUEST)
    try:
        throttle = services(request).throttle
        user = await accounts.register(data.email, data.password, data.name, client_address(request), throttle)
    except HTTPException as exc:  # 409 the email is taken, 429 too many sign-ups from this address
        where = "email" if isinstance(exc, accounts.EmailTaken) else "form"
        return account_form(request, "register", values, {where: exc.detail}, exc.status_code, exc.headers)
    return signed_in(request, user, values["next"])


@form_post("/logout")
async def logout(request: AnyRequest) -> Response[Any]:
    await revoke(request, request.auth)
    return signed_out(request, "/login")


routes: list[Any] = [login_page, login_submit, register_page, register_submit, logout]
