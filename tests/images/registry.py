"""A real registry on loopback for the tests: Debian's ``docker-registry``, with a config
and storage of its own, optionally behind token auth served by a small endpoint here.

``.ci/run`` and ``scripts/install.sh`` install the package (its service is never
started nor enabled); images are pushed into it with ``skopeo`` from OCI layouts.
"""

from __future__ import annotations

import base64
import http.server
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REGISTRY_BIN = Path("/usr/bin/docker-registry")
SKOPEO = shutil.which("skopeo") or "/usr/bin/skopeo"
#: The one login the token endpoint accepts.
USER, PASSWORD = "corral", "s3cret"
SERVICE, ISSUER = "corral-test-registry", "corral-test-issuer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash of *password* through the C library's crypt (libxcrypt on Debian).

    Raises:
        RuntimeError: Python has no ``crypt`` module (3.13 and later).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            raise RuntimeError("no crypt module to make a bcrypt hash") from None
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))


def self_signed_cert(workdir: Path, name: str, ip: str | None = None) -> tuple[Path, Path]:
    """(certificate, key) of a fresh self-signed RSA certificate, made with openssl."""
    key, cert = workdir / f"{name}.key", workdir / f"{name}.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
               "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)]  # fmt: skip
    if ip is not None:
        command += ["-addext", f"subjectAltName=IP:{ip}"]
    subprocess.run(command, check=True, capture_output=True)
    return cert, key


class TokenIssuer:
    """Signs registry tokens (RS256 JWTs with the certificate in ``x5c``) with openssl."""

    def __init__(self, workdir: Path) -> None:
        self.cert, self.key = self_signed_cert(workdir, "corral-test-token")
        der = subprocess.run(
            ["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
            check=True, capture_output=True,
        ).stdout  # fmt: skip
        self.x5c = base64.b64encode(der).decode()

    def token(self, scope: str) -> str:
        now = int(time.time())
        access = []
        if scope:
            kind, name, actions = scope.split(":", 2)
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {
            "iss": ISSUER, "sub": USER, "aud": SERVICE, "exp": now + 600, "nbf": now - 10,
            "iat": now, "jti": str(now), "access": access,
        }  # fmt: skip
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(), check=True, capture_output=True,
        ).stdout  # fmt: skip
        return f"{signing_input}.{_b64url(signature)}"


@contextmanager
def token_endpoint(issuer: TokenIssuer) -> Iterator[str]:
    """A token service on loopback granting tokens to :data:`USER` only; its realm URL."""
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.end_headers()
                return
            query = dict(
                part.split("=", 1) for part in self.path.partition("?")[2].split("&") if "=" in part
            )
            scope = urllib.parse.unquote(query.get("scope", ""))
            body = json.dumps({"token": issuer.token(scope)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/token"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class Registry:
    """A running registry: its ``host:port`` and how to push to it."""

    address: str
    storage: Path
    login: tuple[str, str] | None = None

    def push(
        self, layout: Path, tag: str, name: str, all_platforms: bool = False, docker: bool = False
    ) -> str:
        """Copy image *tag* of OCI *layout* to ``ADDRESS/name``; the reference pushed.
        *docker*: as a Docker schema 2 manifest (skopeo converts it)."""
        ref = f"{self.address}/{name}"
        command = [SKOPEO, "--insecure-policy", "copy", "-q", "--dest-tls-verify=false"]
        if all_platforms:
            command.append("--all")
        if docker:
            command += ["--format", "v2s2"]
        if self.login:
            command += ["--dest-creds", ":".join(self.login)]
        subprocess.run([*command, f"oci:{layout}:{tag}", f"docker://{ref}"], check=True)
        return ref


@contextmanager
def run_registry(
    workdir: Path,
    token_realm: str | None = None,
    cert: Path | None = None,
    tls: tuple[Path, Path] | None = None,
    basic_auth: bool = False,
) -> Iterator[Registry]:
    """``docker-registry serve`` on a free loopback port, stopped (and waited for) at the end."""
    port = free_port()
    storage = workdir / "storage"
    storage.mkdir(parents=True)
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }
    if token_realm is not None:
        config["auth"] = {
            "token": {
                "realm": token_realm,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(cert),
            }
        }
    if basic_auth:  # htpasswd with the one login, bcrypt (the only hash the registry takes)
        htpasswd = workdir / "htpasswd"
        hashed = bcrypt_hash(PASSWORD)
        htpasswd.write_text(f"{USER}:{hashed}\n")
        config["auth"] = {"htpasswd": {"realm": "corral-test", "path": str(htpasswd)}}
    if tls is not None:  # (certificate, key): HTTPS
        config["http"]["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}  # type: ignore[index]
    config_file = workdir / "config.yml"
    config_file.write_text(json.dumps(config))  # JSON is YAML
    log = open(workdir / "registry.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [str(REGISTRY_BIN), "serve", str(config_file)], stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert process.poll() is None, (workdir / "registry.log").read_text()
                assert time.monotonic() < deadline, "the registry did not listen in 30 s"
                time.sleep(0.05)
        login = (USER, PASSWORD) if token_realm or basic_auth else None
        yield Registry(f"127.0.0.1:{port}", storage, login)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
