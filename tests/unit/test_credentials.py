"""mljob.kube.Credentials: a kubeconfig read without the kubernetes package reads as that package reads it.

The operator reads its kubeconfig itself (the package costs it about a quarter of its memory) for users with a
token or a client certificate; what needs code to run (an exec plugin, an auth provider) or merging goes to the
package. Each case here is read both ways and compared, field by field.
"""

from __future__ import annotations

import base64
import os
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from mljob.kube import Credentials
from mljob.operator.webhook import key_pair


@pytest.fixture(scope="module")
def pem() -> tuple[bytes, bytes]:
    return key_pair(["localhost"])


def write(folder: Path, user: dict[str, Any], cluster: dict[str, Any] | None = None, name: str = "config") -> Path:
    cluster = cluster or {"server": "https://127.0.0.1:6443/", "certificate-authority": "ca.crt"}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "main",
        "contexts": [
            {"name": "main", "context": {"cluster": "c", "user": "u"}},
            {"name": "other", "context": {"cluster": "c2", "user": "u"}},
        ],
        "clusters": [{"name": "c", "cluster": cluster}, {"name": "c2", "cluster": {"server": "https://other:1"}}],
        "users": [{"name": "u", "user": user}],
    }
    path = folder / name
    path.write_text(yaml.safe_dump(config))
    return path


def key_material(creds: Credentials, which: str) -> bytes | None:
    data, file = getattr(creds, f"{which}_data"), getattr(creds, f"{which}_file")
    return data if data is not None else (Path(file).read_bytes() if file else None)


def same(path: Path, context: str | None = None) -> Credentials:
    ours = Credentials.from_kubeconfig(str(path), context)
    theirs = Credentials.with_kubernetes(str(path), context)
    assert ours is not None
    assert ours.server == theirs.server
    assert ours.verify == theirs.verify
    assert ours.authorization() == theirs.authorization()
    for which in ("ca", "cert", "key"):
        assert key_material(ours, which) == key_material(theirs, which), which
    return ours


def test_client_certificate_files_are_relative_to_the_kubeconfig(tmp_path: Path, pem: tuple[bytes, bytes]):
    cert, key = pem
    (tmp_path / "ca.crt").write_bytes(cert)
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "me.crt").write_bytes(cert)
    (tmp_path / "pki" / "me.key").write_bytes(key)
    creds = same(write(tmp_path, {"client-certificate": "pki/me.crt", "client-key": "pki/me.key"}))
    assert creds.cert_file == str(tmp_path / "pki" / "me.crt")
    assert creds.server == "https://127.0.0.1:6443"
    context = creds.ssl_context()
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_inline_data_and_a_token(tmp_path: Path, pem: tuple[bytes, bytes]):
    cert, key = pem
    b64 = {name: base64.b64encode(value).decode() for name, value in (("cert", cert), ("key", key))}
    cluster = {"server": "https://127.0.0.1:6443", "certificate-authority-data": b64["cert"]}
    creds = same(write(tmp_path, {"client-certificate-data": b64["cert"], "client-key-data": b64["key"]}, cluster))
    assert creds.cert_data == cert
    assert isinstance(creds.ssl_context(), ssl.SSLContext)  # the pair from data loads (through a private folder)
    creds = same(write(tmp_path, {"token": "s3cret"}, cluster, "token"))
    assert creds.authorization() == "Bearer s3cret"


def test_insecure_and_another_context(tmp_path: Path):
    cluster = {"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True}
    creds = same(write(tmp_path, {"token": "t"}, cluster))
    assert not creds.verify
    context = creds.ssl_context()
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_NONE
    other = Credentials.from_kubeconfig(str(tmp_path / "config"), "other")
    assert other is not None
    assert other.server == "https://other:1"


def test_what_needs_code_goes_to_the_kubernetes_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    exec_user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "printf", "args": ["{}"]}}
    assert Credentials.from_kubeconfig(str(write(tmp_path, exec_user))) is None
    assert Credentials.from_kubeconfig(str(write(tmp_path, {"auth-provider": {"name": "oidc"}}))) is None
    assert Credentials.from_kubeconfig(str(write(tmp_path, {"token": "t"}, {"server": "x", "proxy-url": "y"}))) is None
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert Credentials.from_kubeconfig() is None  # a merged list
    with pytest.raises(ValueError, match="no context named 'nope'"):
        Credentials.from_kubeconfig(str(write(tmp_path, {"token": "t"})), "nope")
    with pytest.raises(ValueError, match="cluster 'c' has no server"):
        Credentials.from_kubeconfig(str(write(tmp_path, {"token": "t"}, {"certificate-authority": "ca.crt"})))
    no_context = tmp_path / "no-context"
    no_context.write_text(yaml.safe_dump({"contexts": [], "clusters": [], "users": []}))
    with pytest.raises(ValueError, match="current-context is not set"):
        Credentials.from_kubeconfig(str(no_context))
    with pytest.raises(ValueError, match="no kubeconfig there"):
        Credentials.from_kubeconfig(str(tmp_path / "absent"))


def test_in_a_pod_the_service_account_token_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    (tmp_path / "token").write_text("first\n")
    assert Credentials.in_cluster(tmp_path) is None  # not in a pod
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    (tmp_path / "ca.crt").write_text("ca")
    creds = Credentials.in_cluster(tmp_path)
    assert creds is not None
    assert (creds.server, creds.ca_file) == ("https://10.96.0.1:443", str(tmp_path / "ca.crt"))
    assert creds.authorization() == "Bearer first"
    (tmp_path / "token").write_text("second")
    assert creds.authorization() == "Bearer first"  # within the minute: not read again
    monkeypatch.setattr("mljob.kube.credentials.time.monotonic", lambda: 1e12)
    assert creds.authorization() == "Bearer second"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    v6 = Credentials.in_cluster(tmp_path)
    assert v6 is not None
    assert v6.server == "https://[fd00::1]:443"
