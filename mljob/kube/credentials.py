"""Where the API server is and how to authenticate: a pod's service account, or a kubeconfig.

Kept apart from the requests (:mod:`mljob.kube.api`) because reading credentials is its own problem: a token the
kubelet rotates, kubeconfig paths relative to their file, PEM data that ``ssl`` loads only from files, and the
``kubernetes`` package, imported only for a kubeconfig that needs code to run (an exec plugin, an auth provider)
or a merged ``KUBECONFIG`` list.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_USER_KEYS = frozenset({"token", "client-certificate", "client-certificate-data", "client-key", "client-key-data"})
_CLUSTER_KEYS = frozenset({"server", "certificate-authority", "certificate-authority-data", "insecure-skip-tls-verify"})


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to authenticate, as read from a kubeconfig or a pod."""

    server: str
    ca_file: str | None = None
    verify: bool = True
    cert_file: str | None = None
    key_file: str | None = None
    authorization: Callable[[], str | None] = lambda: None
    """The ``Authorization`` header value, asked for per request so a refreshed token is used."""
    ca_data: bytes | None = None
    cert_data: bytes | None = None
    key_data: bytes | None = None
    """PEM, from a kubeconfig's ``*-data`` fields."""

    @classmethod
    def load(cls, kubeconfig: str | None = None, context: str | None = None) -> Credentials:
        """The in-cluster service account when running in a pod, else the kubeconfig (``KUBECONFIG``).

        What needs no code to run (a token, a client certificate, as files or data) is read here; a user with an
        exec plugin or an auth provider, and a merged ``KUBECONFIG`` list, go to the ``kubernetes`` package, which
        runs and merges those. Only then is it imported: it is a large share of a process's memory that the
        operator does without (bench/README.md, "Memory").
        """
        if kubeconfig is None and context is None:
            found = cls.in_cluster()
            if found is not None:
                return found
        read = cls.from_kubeconfig(kubeconfig, context)
        return read if read is not None else cls.with_kubernetes(kubeconfig, context)

    @classmethod
    def in_cluster(cls, folder: Path = SERVICE_ACCOUNT) -> Credentials | None:
        """A pod's service account: its token is re-read once a minute (the kubelet rotates bound tokens)."""
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if not host or not port or not (folder / "token").is_file():
            return None
        read_at, token = -1e9, ""

        def authorization() -> str | None:
            nonlocal read_at, token
            if time.monotonic() - read_at > 60:
                token, read_at = (folder / "token").read_text().strip(), time.monotonic()
            return f"Bearer {token}" if token else None

        server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        ca = folder / "ca.crt"
        return cls(server=server, ca_file=str(ca) if ca.is_file() else None, authorization=authorization)

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None = None, context: str | None = None) -> Credentials | None:
        """A kubeconfig's context with a token or a client certificate; None for what only ``kubernetes`` reads.

        File paths in it are relative to the kubeconfig's folder, as kubectl reads them.
        """
        path = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        if os.pathsep in path.strip(os.pathsep):
            return None
        file = Path(path.strip(os.pathsep)).expanduser()
        if not file.is_file():
            raise ValueError(f"{file}: no kubeconfig there (set KUBECONFIG, or run in a pod)")
        config = yaml.safe_load(file.read_text()) or {}

        def named(section: str, name: object) -> dict[str, Any]:
            for item in config.get(section) or ():
                if item.get("name") == name:
                    return dict(item.get(section[:-1]) or {})
            raise ValueError(f"{file}: no {section[:-1]} named {name!r}")

        if not (context or config.get("current-context")):
            raise ValueError(f"{file}: current-context is not set (or give a context)")
        ctx = named("contexts", context or config.get("current-context"))
        cluster, user = named("clusters", ctx.get("cluster")), named("users", ctx.get("user"))
        if set(user) - _USER_KEYS or set(cluster) - _CLUSTER_KEYS:
            return None
        if not cluster.get("server"):
            raise ValueError(f"{file}: cluster {ctx.get('cluster')!r} has no server")

        def local(key: str) -> str | None:
            value = user.get(key) or cluster.get(key)
            return str(file.parent / str(value)) if value else None

        def data(key: str) -> bytes | None:
            value = user.get(key) or cluster.get(key)
            return base64.b64decode(value) if value else None

        token = user.get("token")
        return cls(
            server=str(cluster["server"]).rstrip("/"),
            ca_file=local("certificate-authority"),
            ca_data=data("certificate-authority-data"),
            verify=not cluster.get("insecure-skip-tls-verify"),
            cert_file=local("client-certificate"),
            cert_data=data("client-certificate-data"),
            key_file=local("client-key"),
            key_data=data("client-key-data"),
            authorization=(lambda: f"Bearer {token}") if token else (lambda: None),
        )

    @classmethod
    def with_kubernetes(cls, kubeconfig: str | None = None, context: str | None = None) -> Credentials:
        """Read by the ``kubernetes`` package: exec plugins, auth providers and merged kubeconfigs included."""
        import kubernetes  # heavy; imported only for what needs it

        client: Any = kubernetes.client
        config: Any = kubernetes.config  # untyped package
        cfg = client.Configuration()
        in_cluster = False
        if kubeconfig is None and context is None:
            try:
                config.load_incluster_config(client_configuration=cfg)
                in_cluster = True
            except config.ConfigException:
                pass
        if not in_cluster:
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)

        def authorization() -> str | None:
            value = cfg.get_api_key_with_prefix("BearerToken")
            return str(value) if value else None

        return cls(
            server=str(cfg.host).rstrip("/"),
            ca_file=cfg.ssl_ca_cert,
            verify=bool(cfg.verify_ssl),
            cert_file=cfg.cert_file,
            key_file=cfg.key_file,
            authorization=authorization,
        )

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        context = ssl.create_default_context(
            cafile=self.ca_file, cadata=self.ca_data.decode() if self.ca_data else None
        )
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_data or self.key_data:
            # ssl loads a key pair from files only: a private folder for the moment it takes.
            with tempfile.TemporaryDirectory(prefix="mljob-tls-") as folder:
                cert, key = Path(folder, "tls.crt"), Path(folder, "tls.key")
                cert.write_bytes(self.cert_data or Path(str(self.cert_file)).read_bytes())
                key.write_bytes(self.key_data or Path(str(self.key_file)).read_bytes())
                context.load_cert_chain(str(cert), str(key))
        elif self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context
