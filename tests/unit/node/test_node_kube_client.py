"""Credentials from kubeconfig files and the service account; API errors keep their reason."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import pytest
import yaml

from polca_node.kube_client import (
    ApiError,
    CredentialsError,
    in_cluster_credentials,
    kubeconfig_credentials,
    load_credentials,
)


def write_kubeconfig(
    path: Path, user: dict[str, object], server: str = "https://10.1.2.3:6443"
) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "main",
        "clusters": [
            {"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}
        ],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "main", "context": {"cluster": "c", "user": "u"}},
                     {"name": "other", "context": {"cluster": "c", "user": "missing"}}],
    }))  # fmt: skip
    return path


def test_token_user(tmp_path: Path) -> None:
    credentials = kubeconfig_credentials(write_kubeconfig(tmp_path / "kc", {"token": "s3cret"}))
    assert (credentials.host, credentials.port, credentials.base_path) == ("10.1.2.3", 6443, "")
    assert credentials.token() == "s3cret"
    assert credentials.ssl_context.verify_mode == ssl.CERT_NONE


def test_token_file_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    path = write_kubeconfig(tmp_path / "kc", {"tokenFile": "token"}, "https://api.example:443/k8s/")
    credentials = kubeconfig_credentials(path)
    assert credentials.token() == "from-file"
    assert credentials.base_path == "/k8s"


def test_missing_user_is_a_clear_error(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "kc", {"token": "x"})
    with pytest.raises(ValueError, match="no user named 'missing'"):
        kubeconfig_credentials(path, "other")


def test_plain_http_is_refused(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "kc", {"token": "x"}, "http://10.1.2.3:8080")
    with pytest.raises(ValueError, match="only https"):
        kubeconfig_credentials(path)


def test_bad_client_certificate_data_fails_loudly(tmp_path: Path) -> None:
    junk = base64.b64encode(b"not a certificate").decode()
    path = write_kubeconfig(
        tmp_path / "kc", {"client-certificate-data": junk, "client-key-data": junk}
    )
    # Loudly, but as one line naming the file (CredentialsError), not an ssl traceback.
    with pytest.raises(CredentialsError, match=r"kubeconfig .*kc is not usable: .*PEM"):
        kubeconfig_credentials(path)


def test_in_cluster_needs_the_service_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ValueError, match="not in a cluster"):
        in_cluster_credentials(tmp_path)


def test_explicit_kubeconfig_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    path = write_kubeconfig(tmp_path / "kc", {"token": "explicit"})
    assert load_credentials(path).token() == "explicit"


def test_api_error_flags() -> None:
    assert ApiError(404, "NotFound", "x").not_found
    assert ApiError(410, "Expired", "x").gone
    assert str(ApiError(403, "Forbidden", "no")) == "403 Forbidden: no"
