"""A small synchronous Kubernetes API client on the standard library (http.client + ssl).

Why not Kopf or the `kubernetes` package (measured on this project's venv, Python 3.11, max RSS
right after import): the bare interpreter is 10 MB; `import kubernetes` alone 43 MB (it imports
all ~550 generated model and API modules), `import kopf` 60 MB (it pulls `kubernetes` in when
installed). The daemon's own needs (pydantic models, prometheus-client, grpc, and numpy for the
fake NVML) already take it to 67 MB; with `kubernetes` it reaches 77 MB, with Kopf 90 MB, before it
has done any work, against a budget of 80 MB per node (issue 4). The daemon only needs list,
watch, get, create and patch on five resource paths, which this module does in a few hundred
lines with the same credentials the DaemonSet gets (the in-cluster service account) and the
test control plane hands out (a kubeconfig with client certificates).

Blocking calls: run them in threads (`asyncio.to_thread`) or in the watch threads of
`polca_node.watching`. Every failure is an `ApiError` (HTTP status, or 0 for a transport error,
an unreadable token or an answer that is not JSON): callers handle one exception type, and no
OSError or ValueError from the transport escapes to end a task. A 401 is retried once with the
token file read again (projected service-account tokens rotate).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

__all__ = [
    "ApiError",
    "Credentials",
    "CredentialsError",
    "KubeClient",
    "WatchStream",
    "in_cluster_credentials",
    "kubeconfig_credentials",
    "load_credentials",
]

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# Projected service-account tokens rotate (about hourly); re-read the file this often.
TOKEN_REFRESH_S = 60.0
USER_AGENT = "polca-node"


# How a kept-alive connection that the server has closed fails on its next use (TLS: an EOF).
_STALE_CONNECTION = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


class ApiError(Exception):
    """A Kubernetes API call failed: `status` is the HTTP status, 0 for a transport error."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.message}"

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def gone(self) -> bool:
        """The resource version is too old to watch from: list again."""
        return self.status == 410


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to prove who we are."""

    host: str
    port: int
    base_path: str
    ssl_context: ssl.SSLContext
    token: Callable[[], str | None]
    # Forget a cached token so the next `token()` reads it again: called on a 401, when a
    # projected token was rotated before our periodic re-read. None: the token cannot change
    # (client certificates, a static token), so a 401 is final.
    forget_token: Callable[[], None] | None = None


class _TokenFile:
    """A bearer token read from a file, re-read every TOKEN_REFRESH_S (rotated tokens)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._read_at = -TOKEN_REFRESH_S

    def __call__(self) -> str | None:
        with self._lock:
            now = self._clock()
            if self._token is None or now - self._read_at >= TOKEN_REFRESH_S:
                self._token = self._path.read_text(encoding="utf-8").strip()
                self._read_at = now
            return self._token

    def forget(self) -> None:
        with self._lock:
            self._token = None


def _context_with_client_cert(
    context: ssl.SSLContext, cert_pem: bytes | None, key_pem: bytes | None
) -> None:
    # ssl only loads certificate chains from files: write them to a private temporary
    # directory, load, and remove them at once.
    if cert_pem is None or key_pem is None:
        return
    with tempfile.TemporaryDirectory(prefix="polca-node-tls-") as directory:
        cert_path, key_path = Path(directory, "tls.crt"), Path(directory, "tls.key")
        for path, data in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        context.load_cert_chain(str(cert_path), str(key_path))


def _file_or_data(entry: Mapping[str, Any], key: str, base_dir: Path) -> bytes | None:
    """A kubeconfig `<key>` (a path, relative to the kubeconfig) or `<key>-data` (base64)."""
    data = entry.get(f"{key}-data")
    if data:
        return base64.b64decode(data)
    path = entry.get(key)
    if path:
        return (base_dir / str(path)).read_bytes()
    return None


def _split_server(server: str) -> tuple[str, int, str]:
    parts = urlsplit(server)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"only https API servers are supported, got {server!r}")
    return parts.hostname, parts.port or 443, parts.path.rstrip("/")


def _named(entries: Any, name: str, what: str) -> Mapping[str, Any]:
    for entry in entries or ():
        if entry.get("name") == name:
            found: Mapping[str, Any] = entry.get(what) or {}
            return found
    raise ValueError(f"kubeconfig has no {what} named {name!r}")


class CredentialsError(ValueError):
    """No usable Kubernetes credentials: the message says where we looked and what to do."""


def kubeconfig_credentials(path: Path, context_name: str | None = None) -> Credentials:
    """Credentials from a kubeconfig file: client certificates or a bearer token."""
    import yaml  # only here: in a cluster the daemon never reads a kubeconfig

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise CredentialsError(
            f"cannot read kubeconfig {path}: {exc.strerror}; pass --kubeconfig, set KUBECONFIG, "
            "or run in a pod (in-cluster service account)"
        ) from None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CredentialsError(
            f"kubeconfig {path} is not a YAML kubeconfig ({type(exc).__name__}); pass "
            "--kubeconfig with a kubeconfig file, or set KUBECONFIG"
        ) from None
    try:
        return _credentials_from_config(config, path.resolve().parent, context_name)
    except (KeyError, TypeError, AttributeError, ValueError, OSError, ssl.SSLError) as exc:
        # A kubeconfig that parses but lacks a part, points at a missing file or holds a bad
        # certificate: one line that names the file, never a traceback (issue 12, finding 8).
        detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise CredentialsError(f"kubeconfig {path} is not usable: {detail}") from None


def _credentials_from_config(config: Any, base_dir: Path, context_name: str | None) -> Credentials:
    if not isinstance(config, Mapping):
        raise TypeError("not a mapping at the top level")
    context = _named(config.get("contexts"), context_name or config["current-context"], "context")
    cluster = _named(config.get("clusters"), context["cluster"], "cluster")
    user = _named(config.get("users"), context["user"], "user")
    host, port, base_path = _split_server(cluster["server"])

    ca = _file_or_data(cluster, "certificate-authority", base_dir)
    ssl_context = ssl.create_default_context(cadata=ca.decode() if ca else None)
    if cluster.get("insecure-skip-tls-verify"):
        ssl_context.check_hostname = False
        ssl_context.verify_mode = ssl.CERT_NONE
    _context_with_client_cert(
        ssl_context,
        _file_or_data(user, "client-certificate", base_dir),
        _file_or_data(user, "client-key", base_dir),
    )
    token: Callable[[], str | None]
    if user.get("token"):
        static = str(user["token"])
        token = lambda: static  # noqa: E731 - a constant token source
    elif user.get("tokenFile"):
        token_file = _TokenFile(base_dir / str(user["tokenFile"]))
        return Credentials(host, port, base_path, ssl_context, token_file, token_file.forget)
    else:
        token = lambda: None  # noqa: E731
    return Credentials(host, port, base_path, ssl_context, token)


def in_cluster_credentials(account_dir: Path = SERVICE_ACCOUNT_DIR) -> Credentials:
    """The pod's service account, as every in-cluster client finds it."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise CredentialsError("not in a cluster: KUBERNETES_SERVICE_HOST is not set")
    try:
        ssl_context = ssl.create_default_context(cafile=str(account_dir / "ca.crt"))
        token_file = _TokenFile(account_dir / "token")
        return Credentials(host, int(port), "", ssl_context, token_file, token_file.forget)
    except (OSError, ValueError) as exc:
        raise CredentialsError(
            f"in-cluster service account unusable ({account_dir}, port {port!r}): {exc}"
        ) from None


def load_credentials(kubeconfig: Path | None = None) -> Credentials:
    """An explicit kubeconfig, else $KUBECONFIG, else the in-cluster service account, else
    ~/.kube/config."""
    if kubeconfig is not None:
        return kubeconfig_credentials(kubeconfig)
    from_env = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    if from_env:
        return kubeconfig_credentials(Path(from_env))
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return in_cluster_credentials()
    return kubeconfig_credentials(Path.home() / ".kube" / "config")


def _json_or_error(data: bytes, what: str) -> Any:
    """The parsed answer; a body that is not JSON is a failed call (status 0), not a crash."""
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise ApiError(0, "BadResponse", f"{what}: the answer is not JSON: {exc}") from exc


def _error_from_response(response: http.client.HTTPResponse, body: bytes) -> ApiError:
    # The API server answers errors with a Status object; keep its reason and message.
    try:
        status = json.loads(body)
        return ApiError(response.status, str(status.get("reason", "")), str(status["message"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        return ApiError(response.status, response.reason, body[:512].decode(errors="replace"))


class WatchStream:
    """The events of one watch request, as dicts. `close()` may be called from any thread.

    Closing from another thread only shuts the socket down, which wakes the reading thread;
    that thread releases the connection itself, so http.client is never torn down under it.
    """

    def __init__(
        self,
        connection: http.client.HTTPSConnection,
        response: Any,
        on_close: Callable[[http.client.HTTPSConnection], None],
    ) -> None:
        self._connection = connection
        self._response = response
        self._on_close = on_close
        self._lock = threading.Lock()
        self._closed = False
        self._reading = False
        self._released = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with self._lock:
            if self._closed:
                self._release_locked()
                return
            self._reading = True
        try:
            while True:
                try:
                    line = self._response.readline()
                except Exception as exc:
                    if self._closed:
                        return  # closed under us: any error from the dead socket is expected
                    if isinstance(exc, OSError | http.client.HTTPException | ValueError):
                        raise ApiError(0, type(exc).__name__, f"watch stream broke: {exc}") from exc
                    raise
                if not line:
                    return  # the server ended the watch (timeoutSeconds) or we closed it
                if line.strip():
                    event = _json_or_error(line, "watch stream")
                    if not isinstance(event, dict):
                        raise ApiError(0, "BadResponse", f"watch stream: not an event: {line!r}")
                    yield event
        finally:
            with self._lock:
                self._reading = False
                self._release_locked()

    def _release_locked(self) -> None:
        if not self._released:
            self._released = True
            self._on_close(self._connection)

    def close(self) -> None:
        """End the stream; a thread blocked reading it returns at once."""
        with self._lock:
            self._closed = True
            if not self._reading:
                self._release_locked()
                return
        sock = self._connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class KubeClient:
    """JSON requests to one API server; one kept-alive connection per calling thread."""

    def __init__(self, credentials: Credentials, *, timeout_s: float = 10.0) -> None:
        self._credentials = credentials
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: set[http.client.HTTPSConnection] = set()

    def _connect(self, timeout_s: float) -> http.client.HTTPSConnection:
        connection = http.client.HTTPSConnection(
            self._credentials.host,
            self._credentials.port,
            timeout=timeout_s,
            context=self._credentials.ssl_context,
        )
        with self._lock:
            self._connections.add(connection)
        return connection

    def _forget(self, connection: http.client.HTTPSConnection) -> None:
        connection.close()
        with self._lock:
            self._connections.discard(connection)

    def _headers(self, what: str, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        try:
            token = self._credentials.token()
        except (OSError, ValueError) as exc:
            # A token file being rotated (or unreadable) is a failed call, retried like any.
            raise ApiError(0, "TokenUnreadable", f"{what}: cannot read the token: {exc}") from exc
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def _url(self, path: str, params: Mapping[str, str | int | bool] | None) -> str:
        query = ""
        if params:
            query = "?" + urlencode(
                {k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items()}
            )
        return f"{self._credentials.base_path}{path}{query}"

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        """One request; the parsed JSON answer. Retries once on a connection the server closed,
        and once with a re-read token after a 401 (rotated service-account tokens)."""
        payload = None if body is None else json.dumps(body).encode()
        url = self._url(path, params)
        what = f"{method} {path}"
        token_retried = False
        for attempt in (1, 2, 3):
            headers = self._headers(what, content_type if payload is not None else None)
            connection: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
            if connection is None:
                connection = self._connect(self.timeout_s)
                self._local.conn = connection
            try:
                connection.request(method, url, body=payload, headers=headers)
                response = connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self._forget(connection)
                self._local.conn = None
                # A kept-alive connection the server closed (a restarted API server, too) fails
                # on first use: retry once on a new one.
                if attempt == 1 and isinstance(exc, _STALE_CONNECTION):
                    continue
                raise ApiError(0, type(exc).__name__, f"{what}: {exc}") from exc
            forget = self._credentials.forget_token
            if response.status == 401 and forget is not None and not token_retried:
                token_retried = True
                forget()
                continue
            if response.status >= 400:
                raise _error_from_response(response, data)
            return _json_or_error(data, what)
        raise AssertionError("unreachable")  # pragma: no cover

    def watch(
        self, path: str, params: Mapping[str, str | int | bool], *, read_timeout_s: float
    ) -> WatchStream:
        """Open a watch (`params` must include watch=true) on its own connection; after a 401,
        once more with a re-read token.

        Connecting and the answer's headers get the client's timeout; only then does the socket
        wait up to `read_timeout_s` for events. A long connect timeout would leave a watch stuck
        on an unreachable server (a dropped route, not a refused connection) long after it is
        back, whatever the retry backoff."""
        url = self._url(path, params)
        what = f"watch {path}"
        for attempt in (1, 2):
            headers = self._headers(what, None)
            connection = self._connect(self.timeout_s)
            try:
                connection.request("GET", url, headers=headers)
                response = connection.getresponse()
                error_body = response.read() if response.status >= 400 else b""
                if response.status < 400 and connection.sock is not None:
                    connection.sock.settimeout(read_timeout_s)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self._forget(connection)
                raise ApiError(0, type(exc).__name__, f"{what}: {exc}") from exc
            if response.status < 400:
                return WatchStream(connection, response, self._forget)
            self._forget(connection)
            forget = self._credentials.forget_token
            if response.status == 401 and forget is not None and attempt == 1:
                forget()
                continue
            raise _error_from_response(response, error_body)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Close every connection this client opened (watches included)."""
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            sock = connection.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            connection.close()
