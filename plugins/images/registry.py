"""A client of the registry HTTP API v2 (the OCI distribution spec), blocking (worker threads).

Auth follows the ``WWW-Authenticate`` challenge of a 401: ``Bearer`` gets a
token from the challenge's realm (anonymously, or with the registry's basic
credentials from the credentials file), ``Basic`` sends those credentials.
Every answer is hostile input: sizes are capped, digests checked by the caller
(:mod:`plugins.images.pull`) while the bytes stream.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from plugins.images import manifest as mf
from plugins.images.reference import Reference

#: Docker Hub's API is not served at the name images use.
HOSTS = {"docker.io": "registry-1.docker.io"}
ACCEPT = ", ".join((*mf.MANIFEST_TYPES, *mf.INDEX_TYPES))
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
MAX_TOKEN_REPLY = 1 << 20
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class RegistryError(Exception):
    """The registry is unreachable or refused; the message names the registry and the reason."""


@dataclass(frozen=True)
class Access:
    """How to reach registries: from the ``[images]`` settings and the credentials file."""

    plain_http: frozenset[str] = frozenset()
    ca_files: Mapping[str, Path] = field(default_factory=dict)
    credentials: Path | None = None

    def login(self, registry: str) -> tuple[str, str] | None:
        """The (user, password) of *registry* in the credentials file (Docker's config.json form)."""
        if self.credentials is None or not self.credentials.exists():
            return None
        try:
            auths = json.loads(self.credentials.read_text()).get("auths", {})
            entry = auths.get(registry) or auths.get(f"https://{registry}") or {}
            if "auth" in entry:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
                return user, password
            if "username" in entry:
                return str(entry["username"]), str(entry.get("password", ""))
        except (ValueError, AttributeError) as exc:
            raise RegistryError(
                f"credentials file {self.credentials}: unreadable ({exc})"
            ) from None
        return None


class _BodyReader:
    """A file-like reader over a streamed response body, refusing more than *limit* bytes."""

    def __init__(self, response: httpx.Response, limit: int | None, what: str) -> None:
        self.chunks = response.iter_raw(1 << 20)
        self.buffer = b""
        self.left = limit
        self.what = what

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self.buffer) < n:
            try:
                chunk = next(self.chunks)
            except StopIteration:
                break
            except httpx.HTTPError as exc:
                raise RegistryError(f"{self.what}: download broke off ({exc})") from None
            if self.left is not None:
                self.left -= len(chunk)
                if self.left < 0:
                    raise RegistryError(f"{self.what}: larger than announced")
            self.buffer += chunk
        if n < 0:
            out, self.buffer = self.buffer, b""
        else:
            out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def readable(self) -> bool:
        return True


class RegistryClient:
    """One repository of one registry."""

    def __init__(self, ref: Reference, access: Access) -> None:
        self.ref = ref
        self.access = access
        host = HOSTS.get(ref.registry, ref.registry)
        scheme = "http" if ref.registry in access.plain_http else "https"
        self.base = f"{scheme}://{host}/v2/{ref.repository}"
        verify: ssl.SSLContext | bool = True
        if ref.registry in access.ca_files:
            verify = ssl.create_default_context()
            verify.load_verify_locations(cafile=str(access.ca_files[ref.registry]))
        self.http = httpx.Client(verify=verify, timeout=TIMEOUT, follow_redirects=True)
        self.authorization: str | None = None

    def close(self) -> None:
        self.http.close()

    # -- requests ---------------------------------------------------------------------

    @contextmanager
    def _get(self, path: str, accept: str | None, what: str) -> Iterator[httpx.Response]:
        url = f"{self.base}/{path}"
        for attempt in range(2):
            headers = {"Accept": accept} if accept else {}
            if self.authorization:
                headers["Authorization"] = self.authorization
            try:
                with self.http.stream("GET", url, headers=headers) as response:
                    if response.status_code == 401 and attempt == 0:
                        challenge = response.headers.get("WWW-Authenticate", "")
                        response.close()
                        self._authenticate(challenge)
                        continue
                    if response.status_code != 200:
                        raise RegistryError(
                            f"{what}: the registry {self.ref.registry} answered "
                            f"{response.status_code} {_reason(response.status_code)}"
                        )
                    yield response
                    return
            except httpx.TransportError as exc:
                raise RegistryError(
                    f"{what}: the registry {self.ref.registry} is unreachable ({exc})"
                ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _authenticate(self, challenge: str) -> None:
        scheme, _, params_text = challenge.partition(" ")
        login = self.access.login(self.ref.registry)
        if scheme.lower() == "basic":
            if login is None:
                raise RegistryError(
                    f"the registry {self.ref.registry} wants credentials and the credentials "
                    "file has none for it"
                )
            self.authorization = "Basic " + base64.b64encode(":".join(login).encode()).decode()
            return
        if scheme.lower() != "bearer":
            raise RegistryError(
                f"the registry {self.ref.registry} answered 401 without a usable challenge "
                f"({challenge[:80]!r})"
            )
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        realm = params.get("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise RegistryError(f"the registry {self.ref.registry}: bad token realm {realm!r}")
        query = {"scope": params.get("scope", f"repository:{self.ref.repository}:pull")}
        if "service" in params:
            query["service"] = params["service"]
        if (
            login
            and realm.startswith("http://")
            and self.ref.registry not in self.access.plain_http
        ):
            # A login goes in clear over HTTP only to a registry configured as plain HTTP.
            raise RegistryError(
                f"the registry {self.ref.registry} sends the login to {realm}, over plain HTTP; "
                "refused (list the registry in [images] plain_http to allow it)"
            )
        auth = httpx.BasicAuth(*login) if login else None
        try:
            reply = self.http.get(realm, params=query, auth=auth)
        except httpx.TransportError as exc:
            raise RegistryError(f"token service {realm} is unreachable ({exc})") from None
        if reply.status_code != 200:
            raise RegistryError(
                f"token service {realm} answered {reply.status_code} "
                f"{_reason(reply.status_code)}"
                + ("" if login else " (no credentials for this registry)")
            )
        try:
            body = mf.load_json(reply.content[:MAX_TOKEN_REPLY], f"token service {realm}")
        except mf.ManifestError as exc:
            raise RegistryError(str(exc)) from None
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str) or not token or "\n" in token:
            raise RegistryError(f"token service {realm} gave no token")
        self.authorization = f"Bearer {token}"

    # -- API --------------------------------------------------------------------------

    def manifest(self, reference: str) -> tuple[bytes, str]:
        """The manifest (or index) named by a tag or digest, and its media type."""
        what = f"manifest {reference}"
        with self._get(f"manifests/{reference}", ACCEPT, what) as response:
            body = _BodyReader(response, mf.MAX_JSON, what).read()
            kind = response.headers.get("Content-Type", "").split(";")[0].strip()
        return body, kind

    @contextmanager
    def blob(self, digest: str, size: int | None, what: str) -> Iterator[Any]:
        """A reader of the blob's bytes (at most *size* of them)."""
        with self._get(f"blobs/{digest}", None, what) as response:
            yield _BodyReader(response, size, what)


def _reason(status: int) -> str:
    return {
        401: "(unauthorized)",
        403: "(forbidden)",
        404: "(not found)",
        429: "(too many requests)",
    }.get(status, "(server error)" if status >= 500 else "")
