"""The local cluster's certificates and tokens, made with the openssl command.

One CA signs the apiserver's serving certificate, each kubelet's serving certificate and
the apiserver's client certificate toward the kubelets; every other client authenticates
with a static token (kube-apiserver --token-auth-file), so no client certificate is needed
for them. Service account tokens are signed with their own RSA key.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DAYS",
    "PKIError",
    "Token",
    "ensure_ca",
    "ensure_service_account_key",
    "issue",
    "token_file",
]

DAYS = "3650"


class PKIError(RuntimeError):
    pass


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PKIError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def _key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(path))
    path.chmod(0o600)


@dataclass(frozen=True)
class Token:
    user: str
    groups: tuple[str, ...] = ()
    value: str = ""


def ensure_ca(d: Path) -> tuple[Path, Path]:
    crt, key = d / "ca.crt", d / "ca.key"
    if not crt.exists():
        _key(key)
        _openssl(
            "req", "-x509", "-new", "-key", str(key), "-days", DAYS, "-subj",
            "/CN=nftproxy-cluster-ca", "-out", str(crt),
        )  # fmt: skip
    return crt, key


def issue(
    d: Path,
    name: str,
    *,
    cn: str,
    org: str = "",
    ips: Sequence[str] = (),
    dns: Sequence[str] = (),
    server: bool = True,
) -> tuple[Path, Path]:
    """A key and a certificate signed by the CA in `d`, for a server or a client."""
    ca_crt, ca_key = ensure_ca(d)
    crt, key = d / f"{name}.crt", d / f"{name}.key"
    if crt.exists():
        return crt, key
    _key(key)
    subject = f"/CN={cn}" + (f"/O={org}" if org else "")
    csr = d / f"{name}.csr"
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    ext = d / f"{name}.ext"
    lines = [
        "basicConstraints=CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={'serverAuth' if server else 'clientAuth'}",
    ]
    sans = [f"IP:{ip}" for ip in ips] + [f"DNS:{n}" for n in dns]
    if sans:
        lines.append("subjectAltName=" + ",".join(sans))
    ext.write_text("\n".join(lines) + "\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", DAYS, "-extfile", str(ext), "-out", str(crt),
    )  # fmt: skip
    csr.unlink()
    ext.unlink()
    return crt, key


def ensure_service_account_key(d: Path) -> tuple[Path, Path]:
    key, pub = d / "sa.key", d / "sa.pub"
    if not key.exists():
        _key(key)
        _openssl("pkey", "-in", str(key), "-pubout", "-out", str(pub))
    return key, pub


def token_file(path: Path, users: Sequence[Token]) -> dict[str, str]:
    """Write kube-apiserver's static token file (keeping tokens already issued); user -> token."""
    known: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            fields = line.split(",")
            if len(fields) >= 2:
                known[fields[1]] = fields[0]
    rows = []
    for uid, t in enumerate(users):
        value = known.get(t.user) or t.value or secrets.token_hex(16)
        known[t.user] = value
        groups = ",".join(t.groups)
        rows.append(f"{value},{t.user},{uid}" + (f',"{groups}"' if groups else ""))
    path.write_text("\n".join(rows) + "\n")
    path.chmod(0o600)
    return {t.user: known[t.user] for t in users}
