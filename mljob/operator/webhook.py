"""Admission: the API server asks the operator before it stores an MLJob, and a bad one fails at ``kubectl apply``.

The review is exactly ``mljob validate`` (the API models, the framework's and the plugins' rules), plus the
platform's limits and what this cluster cannot place (a gang scheduler or Kueue it does not serve), with every
field path in the message. kopf serves it (``kopf.on.validate`` and its webhook server) and keeps the
ValidatingWebhookConfiguration (``--webhook-config``, default ``mljob.io``) pointing at it with our CA bundle.

The key pair is the operator's own: the first replica to start generates it and keeps it in a Secret, every
other replica reads the same one, so the CA bundle in the configuration is right whichever replica answers.
The configuration's ``failurePolicy`` is ``Ignore``: with the operator down, jobs can still be created, and the
operator's status-level validation (the same checks) fails a bad one with ``InvalidSpec`` once it is back.
An UPDATE is reviewed only when the spec changes, so the operator's own writes to a job admitted before the
webhook existed are never refused.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mljob.core.desired import Placement, placement_problems
from mljob.core.kinds import MLJOB, JobKind
from mljob.core.kubeflow import admission as kubeflow_admission
from mljob.core.kubeflow import mpijob
from mljob.core.validation import DEFAULT_LIMITS, Limits, check_document
from mljob.framework import Problem
from mljob.kube import Api, ApiError
from mljob.plugins import Plugins

logger = logging.getLogger("mljob.operator")

DEFAULT_SECRET = "mljob-system/mljob-webhook-cert"
DEFAULT_CONFIG = "mljob.io"


@dataclass(frozen=True)
class WebhookOptions:
    """Where the webhook listens and how the API server reaches it."""

    port: int = 9443
    addr: str = "0.0.0.0"
    host: str | None = None
    """The host in a ``url`` clientConfig (out of cluster: ``127.0.0.1``); ignored with ``service``."""
    service: str | None = None
    """``namespace/name`` of the Service in front of the operator: a ``service`` clientConfig (in cluster)."""
    secret: str = DEFAULT_SECRET
    """``namespace/name`` of the Secret that keeps the shared key pair."""
    config: str = DEFAULT_CONFIG
    """The ValidatingWebhookConfiguration kopf creates and keeps up to date."""

    def hosts(self) -> list[str]:
        """The names the certificate is valid for: the URL host, the service's DNS names, loopback."""
        names = ["localhost", "127.0.0.1"]
        if self.host:
            names.insert(0, self.host)
        if self.service:
            namespace, name = self.service.split("/", 1)
            names[:0] = [f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"]
        return list(dict.fromkeys(names))


def review(
    body: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    plugins: Plugins,
    limits: Limits = DEFAULT_LIMITS,
    placement: Placement | None = None,
    kind: JobKind = MLJOB,
) -> list[str]:
    """Why the API server must refuse this job, one ``field.path: what is wrong`` line each; [] to admit.

    A Kubeflow kind gets Kubeflow's own webhook checks (:mod:`mljob.core.kubeflow.admission`: names, replica types,
    ``managedBy``), then mljob's on what it maps to, with the kind's field paths.
    """
    if old is not None and old.get("spec") == body.get("spec"):
        return []  # metadata or status only: the operator's own ledger, a label; the spec was reviewed
    document = {key: value for key, value in body.items() if key != "status"}
    problems: list[Problem] = []
    if kind is not MLJOB:
        if kind.kind == "MPIJob":
            problems += mpijob.review(document, old)
        else:
            problems += kubeflow_admission.review(kind.kind, document, old)
        if problems:
            return [str(p) for p in problems]
        view, unmapped = kind.view(document)
        problems += unmapped
        document = dict(view)
    checked = check_document(document, plugins, limits, gang_may_wait=kind.gang_may_wait)
    problems += [Problem(kind.path_of(p.path), p.message) for p in checked.problems]
    if checked.job is not None and not problems:
        problems += [
            Problem(kind.path_of(p.path), p.message)
            for p in placement_problems(checked.job, placement or Placement(), kind)
        ]
    return [str(p) for p in problems]


def key_pair(hosts: list[str]) -> tuple[bytes, bytes]:
    """A self-signed serving certificate for ``hosts`` (it is its own CA bundle) and its key, as PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


async def shared_key_pair(api: Api, secret: str, hosts: list[str]) -> tuple[bytes, bytes]:
    """The key pair in ``secret``, created by whichever replica comes first; every replica serves the same one.

    A Secret made for other hosts (the service was renamed) is replaced.
    """
    namespace, name = secret.split("/", 1)
    path = f"/api/v1/namespaces/{namespace}/secrets/{name}"
    wanted = ",".join(hosts)
    for _ in range(3):
        try:
            found = await api.request("GET", path)
        except ApiError as error:
            if error.status != 404:
                raise
            found = None
        if found is not None:
            data = found.get("data") or {}
            if (found.get("metadata") or {}).get("annotations", {}).get("mljob.io/hosts") == wanted:
                return base64.b64decode(data["tls.crt"]), base64.b64decode(data["tls.key"])
            await api.request("DELETE", path, {"preconditions": {"uid": found["metadata"]["uid"]}})
        cert, key = key_pair(hosts)
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": namespace, "annotations": {"mljob.io/hosts": wanted}},
            "data": {"tls.crt": base64.b64encode(cert).decode(), "tls.key": base64.b64encode(key).decode()},
        }
        try:
            await api.request("POST", f"/api/v1/namespaces/{namespace}/secrets", body)
            return cert, key
        except ApiError as error:
            if error.status != 409:  # another replica was first: read what it made
                raise
    raise RuntimeError(f"could not agree on the webhook key pair in secret {secret}")


CONVERT_ID = "convert-mpijobs"
"""The id (``/convert-mpijobs``) at which the webhook server answers MPIJob's CRD conversion reviews."""
CONVERTED_CRDS = ("mpijobs.kubeflow.org",)
"""The CRDs whose versions the operator converts (:mod:`mljob.core.kubeflow.mpijob`)."""

WEBHOOK_PATH = "/review"
"""kopf serves each handler at /<handler id>; the MLJob handler is ``review``."""


def handler_id(kind: JobKind) -> str:
    """The id (and so the path) of the review handler of ``kind``: ``review``, ``review-pytorchjobs``..."""
    return "review" if kind is MLJOB else f"review-{kind.plural}"


def configuration(
    options: WebhookOptions, ca: bytes, namespaces: list[str], kinds: Sequence[JobKind] = (MLJOB,)
) -> dict[str, Any]:
    """The ValidatingWebhookConfiguration that sends creates and updates of the kinds served, in the operator's
    namespaces, to it: one webhook per kind.

    Written by the operator itself (server-side apply), not by kopf: kopf's managed configuration has no
    namespace selector, and an operator that watches some namespaces must not judge jobs in the others.
    """
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": options.config, "labels": {"app.kubernetes.io/managed-by": "mljob-operator"}},
        "webhooks": [_webhook(options, ca, namespaces, kind) for kind in kinds],
    }


def client_config(options: WebhookOptions, ca: bytes, path: str) -> dict[str, Any]:
    """How the API server reaches ``path`` on the operator: through its Service, else at its URL."""
    bundle = base64.b64encode(ca).decode()
    if options.service:
        namespace, name = options.service.split("/", 1)
        service = {"namespace": namespace, "name": name, "port": options.port, "path": path}
        return {"service": service, "caBundle": bundle}
    return {"url": f"https://{options.host or '127.0.0.1'}:{options.port}{path}", "caBundle": bundle}


def conversion(options: WebhookOptions, ca: bytes) -> dict[str, Any]:
    """The ``spec.conversion`` of a CRD whose versions the operator converts."""
    return {
        "strategy": "Webhook",
        "webhook": {"conversionReviewVersions": ["v1"], "clientConfig": client_config(options, ca, f"/{CONVERT_ID}")},
    }


def _webhook(options: WebhookOptions, ca: bytes, namespaces: list[str], kind: JobKind) -> dict[str, Any]:
    client = client_config(options, ca, "/" + handler_id(kind))
    hook: dict[str, Any] = {
        "name": "review.mljob.io" if kind is MLJOB else f"{kind.plural}.{kind.group}.review.mljob.io",
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Ignore",
        "matchPolicy": "Equivalent",
        "timeoutSeconds": 10,
        "rules": [
            {
                "apiGroups": [kind.group],
                "apiVersions": [kind.version],
                "resources": [kind.plural],
                "operations": ["CREATE", "UPDATE"],
                "scope": "Namespaced",
            }
        ],
        "clientConfig": client,
    }
    if namespaces:
        hook["namespaceSelector"] = {
            "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": sorted(namespaces)}]
        }
    return hook


async def register(
    api: Api, options: WebhookOptions, ca: bytes, namespaces: list[str], kinds: Sequence[JobKind] = (MLJOB,)
) -> None:
    """Apply the configuration (every replica applies the same one: idempotent), and point the CRDs the operator
    converts (MPIJob's v1 and v2beta1) at its conversion webhook."""
    path = (
        f"/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{options.config}"
        "?fieldManager=mljob-operator&force=true"
    )
    body = configuration(options, ca, namespaces, kinds)
    await api.request("PATCH", path, body, "application/apply-patch+yaml")
    for crd in CONVERTED_CRDS:
        if any(f"{kind.plural}.{kind.group}" == crd for kind in kinds):
            # A merge patch of spec.conversion alone: the CRD's other fields stay whoever's they are (kubectl's).
            crd_path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}"
            patch = {"spec": {"conversion": conversion(options, ca)}}
            try:
                await api.request("PATCH", crd_path, patch, "application/merge-patch+json")
            except ApiError as error:  # v2beta1 is still served; v1 requests then fail, saying why
                logger.warning("could not point %s at the conversion webhook: %s", crd, error)


def write_key_pair(cert: bytes, key: bytes) -> tuple[Path, Path]:
    """The webhook server's certificate and key as files (the TLS library reads files), the key private."""
    folder = Path(tempfile.mkdtemp(prefix="mljob-webhook-"))
    (folder / "tls.crt").write_bytes(cert)
    (folder / "tls.key").write_bytes(key)
    (folder / "tls.key").chmod(0o600)
    return folder / "tls.crt", folder / "tls.key"
