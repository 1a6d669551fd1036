"""The daemon's API client over real TLS with client certificates, against a small local server:
JSON requests, Status errors, keep-alive, and watch streams that close from another thread."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from polca_node.kube_client import ApiError, KubeClient, kubeconfig_credentials
from polca_testbed.pki import make_pki


class FakeApiServer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked watches, as the API server
    release_watch: threading.Event
    seen: list[tuple[str, str, str, bytes]]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def do_GET(self) -> None:
        self.seen.append(("GET", self.path, self.headers.get("Authorization", ""), b""))
        if self.path.startswith("/api/v1/pods?") and "watch=true" in self.path:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for name in ("a", "b"):
                event = {"type": "ADDED", "object": {"metadata": {"name": name}}}
                self._chunk(json.dumps(event).encode() + b"\n")
            self.release_watch.wait(10)
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path.startswith("/api/v1/pods"):
            self._json(200, {"metadata": {"resourceVersion": "7"}, "items": []})
            return
        self._json(
            404, {"kind": "Status", "reason": "NotFound", "message": f"{self.path} not found"}
        )

    def do_PATCH(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(("PATCH", self.path, self.headers["Content-Type"], body))
        self._json(200, {"patched": json.loads(body)})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, type[FakeApiServer]]]:
    directory = tmp_path_factory.mktemp("api")
    pki = make_pki(directory / "pki")

    class Handler(FakeApiServer):
        release_watch = threading.Event()
        seen: list[tuple[str, str, str, bytes]] = []  # noqa: RUF012 - one server per module

    handler = Handler
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.serving_cert), str(pki.serving_key))
    context.verify_mode = ssl.CERT_REQUIRED  # only our client certificate gets in
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    kubeconfig = directory / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "current-context": "t",
        "clusters": [{"name": "c", "cluster": {
            "server": f"https://127.0.0.1:{httpd.server_address[1]}",
            "certificate-authority": str(pki.ca_cert)}}],
        "users": [{"name": "u", "user": {
            "client-certificate": str(pki.admin_cert), "client-key": str(pki.admin_key)}}],
        "contexts": [{"name": "t", "context": {"cluster": "c", "user": "u"}}],
    }))  # fmt: skip
    yield kubeconfig, handler
    handler.release_watch.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def client(server: tuple[Path, type[FakeApiServer]]) -> Iterator[KubeClient]:
    api = KubeClient(kubeconfig_credentials(server[0]), timeout_s=5)
    yield api
    api.close()


def test_requests_and_errors(client: KubeClient, server: tuple[Path, type[FakeApiServer]]) -> None:
    listing = client.request("GET", "/api/v1/pods", params={"fieldSelector": "spec.nodeName=n1"})
    assert listing["metadata"]["resourceVersion"] == "7"
    assert client.request("GET", "/api/v1/pods")["items"] == []  # same kept-alive connection
    with pytest.raises(ApiError) as raised:
        client.request("GET", "/apis/polca.dev/v1alpha1/nodepowerstates/n1")
    assert raised.value.not_found
    assert raised.value.reason == "NotFound"
    patched = client.request(
        "PATCH", "/x/status", body=[{"op": "add", "path": "/status", "value": {}}],
        content_type="application/json-patch+json",
    )  # fmt: skip
    assert patched["patched"][0]["op"] == "add"
    seen = server[1].seen
    assert ("GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1", "", b"") in seen
    assert any(s[0] == "PATCH" and s[2] == "application/json-patch+json" for s in seen)


def test_watch_streams_events_and_closes_from_another_thread(client: KubeClient) -> None:
    stream = client.watch("/api/v1/pods", {"watch": True}, read_timeout_s=30)
    events = iter(stream)
    assert [next(events)["object"]["metadata"]["name"] for _ in range(2)] == ["a", "b"]
    done = threading.Event()
    leftovers: list[Any] = []

    def drain() -> None:
        leftovers.extend(events)  # blocks: the server holds the watch open
        done.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    time.sleep(0.1)
    assert not done.is_set()
    stream.close()
    assert done.wait(5), "close() did not wake the reading thread"
    assert leftovers == []


def test_unreachable_server_is_an_api_error(
    tmp_path: Path, server: tuple[Path, type[FakeApiServer]]
) -> None:
    config = yaml.safe_load(server[0].read_text())
    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:9"  # nothing listens
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    api = KubeClient(kubeconfig_credentials(path), timeout_s=2)
    with pytest.raises(ApiError) as raised:
        api.request("GET", "/api/v1/pods")
    assert raised.value.status == 0
    api.close()


class TokenCheckingServer(BaseHTTPRequestHandler):
    """Accepts only the current bearer token, as the API server after a token rotation; one
    path answers a body that is not JSON (a proxy's error page)."""

    protocol_version = "HTTP/1.1"
    accepted = {"token": ""}  # noqa: RUF012 - one server per test
    tokens_seen: list[str] = []  # noqa: RUF012

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _send(self, status: int, data: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        self.tokens_seen.append(token)
        if token != self.accepted["token"]:
            body = {"kind": "Status", "reason": "Unauthorized", "message": "Unauthorized"}
            self._send(401, json.dumps(body).encode())
        elif self.path.startswith("/html"):
            self._send(200, b"<html>gateway</html>", "text/html")
        elif self.path.startswith("/hang"):  # a server that never answers
            time.sleep(3)
        elif "watch=true" in self.path:
            event = {"type": "ADDED", "object": {"metadata": {"name": "a"}}}
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if "slow" in self.path:  # the first event comes long after the headers
                self.wfile.flush()
                time.sleep(1.0)
            data = json.dumps(event).encode() + b"\n"
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n")
        else:
            self._send(200, json.dumps({"items": []}).encode())


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[tuple[Path, Path, type[TokenCheckingServer]]]:
    pki = make_pki(tmp_path / "pki")

    class Handler(TokenCheckingServer):
        accepted = {"token": "first"}  # noqa: RUF012
        tokens_seen: list[str] = []  # noqa: RUF012

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(pki.serving_cert), str(pki.serving_key))
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "current-context": "t",
        "clusters": [{"name": "c", "cluster": {
            "server": f"https://127.0.0.1:{httpd.server_address[1]}",
            "certificate-authority": str(pki.ca_cert)}}],
        "users": [{"name": "u", "user": {"tokenFile": str(token_file)}}],
        "contexts": [{"name": "t", "context": {"cluster": "c", "user": "u"}}],
    }))  # fmt: skip
    yield kubeconfig, token_file, Handler
    httpd.shutdown()
    httpd.server_close()


def rotate(token_file: Path, handler: type[TokenCheckingServer], token: str) -> None:
    """The kubelet writes a new projected token and the old one stops working."""
    temporary = token_file.with_name("token.new")
    temporary.write_text(token + "\n")
    temporary.replace(token_file)
    handler.accepted["token"] = token


def test_a_rotated_token_is_read_again_on_401(
    token_server: tuple[Path, Path, type[TokenCheckingServer]],
) -> None:
    kubeconfig, token_file, handler = token_server
    api = KubeClient(kubeconfig_credentials(kubeconfig), timeout_s=5)
    try:
        assert api.request("GET", "/api/v1/pods") == {"items": []}
        # Rotated well before the client's own 60 s re-read: the old token gets a 401, the
        # client reads the file again and the call succeeds, invisibly to the caller.
        rotate(token_file, handler, "second")
        assert api.request("GET", "/api/v1/pods") == {"items": []}
        assert handler.tokens_seen == ["first", "first", "second"]
        rotate(token_file, handler, "third")
        stream = api.watch("/api/v1/pods", {"watch": True}, read_timeout_s=5)
        assert [e["object"]["metadata"]["name"] for e in stream] == ["a"]
        assert handler.tokens_seen[-2:] == ["second", "third"]
    finally:
        api.close()


def test_a_token_the_server_keeps_refusing_is_an_api_error(
    token_server: tuple[Path, Path, type[TokenCheckingServer]],
) -> None:
    kubeconfig, _token_file, handler = token_server
    handler.accepted["token"] = "nobody has this one"
    api = KubeClient(kubeconfig_credentials(kubeconfig), timeout_s=5)
    try:
        with pytest.raises(ApiError) as raised:
            api.request("GET", "/api/v1/pods")
        assert raised.value.status == 401
        assert len(handler.tokens_seen) == 2  # one retry with the re-read token, no more
    finally:
        api.close()


def test_a_missing_token_file_and_a_non_json_answer_are_api_errors(
    token_server: tuple[Path, Path, type[TokenCheckingServer]],
) -> None:
    kubeconfig, token_file, _handler = token_server
    api = KubeClient(kubeconfig_credentials(kubeconfig), timeout_s=5)
    try:
        with pytest.raises(ApiError) as raised:
            api.request("GET", "/html")
        assert (raised.value.status, raised.value.reason) == (0, "BadResponse")
        token_file.unlink()
        forget = api._credentials.forget_token
        assert forget is not None
        forget()
        with pytest.raises(ApiError) as raised:
            api.request("GET", "/api/v1/pods")
        assert (raised.value.status, raised.value.reason) == (0, "TokenUnreadable")
    finally:
        api.close()


def test_a_watch_connects_with_the_short_timeout_and_waits_for_events_with_the_long_one(
    token_server: tuple[Path, Path, type[TokenCheckingServer]],
) -> None:
    kubeconfig, _token_file, _handler = token_server
    api = KubeClient(kubeconfig_credentials(kubeconfig), timeout_s=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(ApiError) as raised:
            api.watch("/hang", {"watch": True}, read_timeout_s=30)
        assert raised.value.status == 0
        assert time.monotonic() - started < 2.0  # not the 30 s meant for a quiet watch
        stream = api.watch("/slow", {"watch": True}, read_timeout_s=30)
        assert [e["object"]["metadata"]["name"] for e in stream] == ["a"]  # after 1 s > 0.3 s
    finally:
        api.close()
