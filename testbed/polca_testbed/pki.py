"""Certificates and keys for the local control plane, made with the openssl CLI.

A throwaway CA signs the API server's serving certificate and an admin client certificate
in the `system:masters` group; a separate RSA key pair signs service-account tokens.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    """Paths of everything the API server, etcd and clients need."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_public_key: Path
    sa_private_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {result.stderr.strip()}")


def _signed_cert(
    pki_dir: Path, name: str, subject: str, extensions: str, *, days: int = 3650
) -> tuple[Path, Path]:
    key, csr, cert, ext = (pki_dir / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
    ext.write_text(extensions)
    _openssl("genrsa", "-out", key.name, "2048", cwd=pki_dir)
    _openssl("req", "-new", "-key", key.name, "-subj", subject, "-out", csr.name, cwd=pki_dir)
    _openssl(
        "x509", "-req", "-in", csr.name, "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", cert.name, "-days", str(days), "-sha256",
        "-extfile", ext.name,
        cwd=pki_dir,
    )  # fmt: skip
    return cert, key


def make_pki(pki_dir: Path) -> Pki:
    """Create (or reuse, when complete) the control plane's certificates in `pki_dir`."""
    pki_dir.mkdir(parents=True, exist_ok=True)
    pki = Pki(
        ca_cert=pki_dir / "ca.crt",
        ca_key=pki_dir / "ca.key",
        serving_cert=pki_dir / "apiserver.crt",
        serving_key=pki_dir / "apiserver.key",
        admin_cert=pki_dir / "admin.crt",
        admin_key=pki_dir / "admin.key",
        sa_public_key=pki_dir / "sa.pub",
        sa_private_key=pki_dir / "sa.key",
    )
    if all(Path(str(p)).exists() for p in vars(pki).values()):
        return pki
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "3650", "-subj", "/CN=polca-test-ca",
        cwd=pki_dir,
    )  # fmt: skip
    _signed_cert(
        pki_dir,
        "apiserver",
        "/CN=kube-apiserver",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc\n",
    )
    _signed_cert(
        pki_dir,
        "admin",
        "/O=system:masters/CN=polca-admin",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n",
    )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki_dir)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki_dir)
    return pki
