"""Access tokens: verifying the ones clients send, and signing job tokens for workers.

Mirrors ``livekit/protocol: auth`` and ``agent/token.go`` (reference §1.2, §2.4):

* Only HS256 is accepted. ``iss`` names the API key; its secret comes from the server's key
  map. ``exp`` is required (protocol HEAD), ``nbf`` and ``iat`` are honoured, with one minute
  of leeway. The current time is passed in, so nothing here reads a clock.
* The token comes from ``Authorization: Bearer <jwt>``; a header with another scheme is an
  error. Without the header it comes from the ``access_token`` query parameter. No token at
  all is not an error: the request continues without grants.
* A job token is signed with the key and secret the worker authenticated with, is valid for
  one hour and carries exactly the claims ``BuildAgentToken`` sets; ``omitempty`` fields are
  left out when empty, pointer booleans are always present.

PyJWT warns about HMAC secrets shorter than 32 bytes. The real server accepts them (its
``--dev`` secret is ``secret``), so that warning is silenced around our own calls only.
Secrets and tokens never appear in exceptions or logs.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import jwt

from lksup.devserver.model import Permissions

#: Clock skew accepted on ``exp``, ``nbf`` and ``iat``.
LEEWAY = 60.0
#: Validity of a job token.
JOB_TOKEN_TTL = 3600
_BEARER = "Bearer "


class AuthError(Exception):
    """A token is present but unusable; the request gets 401. The message is safe to show."""


@dataclass(frozen=True)
class Grants:
    """The verified claims the dev server looks at."""

    api_key: str
    identity: str = ""
    room_create: bool = False
    room_list: bool = False
    room_admin: bool = False
    room: str = ""
    agent: bool = False


def token_from_request(authorization: str | None, query: str) -> str:
    """The raw token of a request, or ``""`` when it carries none.

    Raises:
        AuthError: an ``Authorization`` header that is not ``Bearer <token>``.
    """
    if authorization:
        if not authorization.startswith(_BEARER):
            raise AuthError("invalid authorization header. Must start with Bearer ")
        return authorization[len(_BEARER) :]
    values = parse_qs(query).get("access_token", [])
    return values[0] if values else ""


def verify(token: str, keys: Mapping[str, str], *, now: float) -> Grants:
    """Check a token's signature, issuer and times, and return its grants.

    Raises:
        AuthError: malformed, wrongly signed, unknown key, expired or not yet valid.
    """
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise AuthError("invalid token: malformed") from None
    if header.get("alg") != "HS256":
        raise AuthError("invalid token: unsupported algorithm")
    api_key = unverified.get("iss")
    if not isinstance(api_key, str) or not keys.get(api_key):
        raise AuthError("invalid API key")
    secret = keys[api_key]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
            claims = jwt.decode(
                token,
                secret,
                algorithms=["HS256"],
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                },
            )
    except jwt.PyJWTError:
        raise AuthError("invalid token: signature") from None
    _check_times(claims, now)
    return _grants(api_key, claims)


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthError(f"invalid token: {name} is not a number")
    return float(value)


def _check_times(claims: Mapping[str, Any], now: float) -> None:
    exp = _number(claims, "exp")
    if exp is None:
        raise AuthError("invalid token: exp is required")
    if now - LEEWAY > exp:
        raise AuthError("invalid token: expired")
    nbf = _number(claims, "nbf")
    if nbf is not None and now + LEEWAY < nbf:
        raise AuthError("invalid token: not valid yet")
    iat = _number(claims, "iat")
    if iat is not None and now + LEEWAY < iat:
        raise AuthError("invalid token: issued in the future")


def _grants(api_key: str, claims: Mapping[str, Any]) -> Grants:
    video = claims.get("video", {})
    if video is None:
        video = {}
    if not isinstance(video, dict):
        raise AuthError("invalid token: video grant is not an object")
    room = video.get("room", "")
    identity = claims.get("sub", "")
    return Grants(
        api_key=api_key,
        identity=identity if isinstance(identity, str) else "",
        room_create=video.get("roomCreate") is True,
        room_list=video.get("roomList") is True,
        room_admin=video.get("roomAdmin") is True,
        room=room if isinstance(room, str) else "",
        agent=video.get("agent") is True,
    )


@dataclass(frozen=True)
class JobTokenRequest:
    """What a job token is made of (``BuildAgentToken``'s arguments)."""

    room: str
    identity: str
    name: str
    metadata: str
    attributes: Mapping[str, str]
    permissions: Permissions


def job_token_claims(api_key: str, req: JobTokenRequest, *, now: float) -> dict[str, Any]:
    """The claims of a job token, as ``AccessToken.ToJWT`` serializes them."""
    perms = req.permissions
    video: dict[str, Any] = {"roomJoin": True}
    if req.room:
        video["room"] = req.room
    video |= {
        "canPublish": perms.can_publish,
        "canSubscribe": perms.can_subscribe,
        "canPublishData": perms.can_publish_data,
        "canUpdateOwnMetadata": perms.can_update_metadata,
    }
    if perms.hidden:
        video["hidden"] = True
    video |= {"agent": True, "canSubscribeMetrics": perms.can_subscribe_metrics}
    issued = int(now)
    claims: dict[str, Any] = {"iss": api_key, "nbf": issued, "exp": issued + JOB_TOKEN_TTL}
    if req.identity:
        claims["sub"] = req.identity
    if req.name:
        claims["name"] = req.name
    claims["kind"] = "agent"
    claims["video"] = video
    if req.metadata:
        claims["metadata"] = req.metadata
    if req.attributes:
        claims["attributes"] = dict(req.attributes)
    return claims


def sign(claims: Mapping[str, Any], secret: str) -> str:
    """An HS256 JWT with ``typ: JWT``, as go-jose writes it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        return jwt.encode(dict(claims), secret, algorithm="HS256", headers={"typ": "JWT"})


def job_token(api_key: str, secret: str, req: JobTokenRequest, *, now: float) -> str:
    """A signed job token for a worker that authenticated with ``api_key``."""
    return sign(job_token_claims(api_key, req, now=now), secret)
