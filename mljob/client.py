"""``mljob.Client``: submit, get, wait for, read the logs of and delete MLJobs in a cluster; from a notebook too.

Synchronous, on the official ``kubernetes`` client, with the cluster from ``KUBECONFIG`` (or ``~/.kube/config``)
or the pod's service account. Jobs come back as :class:`mljob.api.MLJob` models::

    from mljob import Client
    client = Client(namespace="team")
    job = client.submit("examples/pytorch-ddp/job.yaml")
    job = client.wait(job.name, "Succeeded", timeout=600)
    for replica, line in client.logs(job.name):
        print(f"[{replica}] {line}")

A job file is checked before it is sent, exactly as ``mljob validate`` checks it (:class:`InvalidJob` carries the
``field.path: what is wrong`` lines). Waiting watches the job (no polling) and raises :class:`JobEnded` when it
ends in another phase than the one waited for, :class:`TimeoutError` when the time is up.
"""

from __future__ import annotations

import importlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mljob.api import GROUP, PLURAL, VERSION, ConditionType, MLJob, Phase
from mljob.core.names import LABEL_INDEX, LABEL_JOB, LABEL_ROLE
from mljob.core.validation import check_document, load_documents
from mljob.plugins import Plugins, load_plugins

TERMINAL = (Phase.SUCCEEDED, Phase.FAILED)
WAITABLE = {p.value.lower(): p.value for p in Phase} | {c.value.lower(): c.value for c in ConditionType}


class ClientError(Exception):
    """Something a person can act on; the message says what."""


class InvalidJob(ClientError):
    """The job file does not check; :attr:`lines` are ``field.path: what is wrong``."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = list(lines)
        super().__init__("\n".join(self.lines))


class NotFound(ClientError):
    """No such job."""


class JobEnded(ClientError):
    """The job ended in a phase other than the one waited for."""

    def __init__(self, job: MLJob) -> None:
        self.job = job
        status = job.status
        phase = status.phase.value if status is not None else "?"
        message = status.message if status is not None else ""
        super().__init__(f"{job.name} {phase}" + (f": {message}" if message else ""))


class Client:
    """One cluster connection and a default namespace."""

    def __init__(
        self,
        namespace: str | None = None,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        plugins: Plugins | None = None,
    ) -> None:
        # The official client, untyped: what it returns is checked by the models, not by mypy.
        kubernetes: Any = importlib.import_module("kubernetes")
        # The official client reads KUBECONFIG when it is imported; read it now, as kubectl does per command.
        kubeconfig = kubeconfig or os.environ.get("KUBECONFIG") or None
        try:
            kubernetes.config.load_kube_config(config_file=kubeconfig, context=context)
            _, active = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
            default = (context and namespace) or (active or {}).get("context", {}).get("namespace")
        except (kubernetes.config.ConfigException, FileNotFoundError, TypeError):
            try:
                kubernetes.config.load_incluster_config()
            except kubernetes.config.ConfigException:
                raise ClientError("no cluster: set KUBECONFIG (or ~/.kube/config), or run in a pod") from None
            default = None
        self.namespace = namespace or default or "default"
        self.api: Any = kubernetes.client.ApiClient()
        self.custom: Any = kubernetes.client.CustomObjectsApi(self.api)
        self.core: Any = kubernetes.client.CoreV1Api(self.api)
        self._plugins = plugins
        self._kubernetes = kubernetes

    @property
    def plugins(self) -> Plugins:
        if self._plugins is None:
            self._plugins = load_plugins()
        return self._plugins

    def _ns(self, namespace: str | None) -> str:
        return namespace or self.namespace

    def _missing(self, error: Exception) -> bool:
        return isinstance(error, self._kubernetes.client.ApiException) and error.status == 404

    # --- verbs -------------------------------------------------------------------------------------------------

    def submit(
        self,
        job: MLJob | Mapping[str, Any] | str | Path,
        *,
        namespace: str | None = None,
        name: str | None = None,
    ) -> MLJob:
        """Check, then create the job (a model, a mapping, or the path of a one-job YAML file)."""
        doc = self._document(job)
        meta = doc.setdefault("metadata", {})
        if name:
            meta["name"] = name
        meta["namespace"] = namespace or meta.get("namespace") or self.namespace
        checked = check_document(doc, self.plugins)
        if not checked.ok:
            raise InvalidJob([str(p) for p in checked.problems])
        try:
            made = self.custom.create_namespaced_custom_object(GROUP, VERSION, meta["namespace"], PLURAL, doc)
        except self._kubernetes.client.ApiException as error:
            raise ClientError(_server_message(error)) from None
        return MLJob.model_validate(made)

    def _document(self, job: MLJob | Mapping[str, Any] | str | Path) -> dict[str, Any]:
        if isinstance(job, MLJob):
            return job.model_dump(by_alias=True, exclude_none=True, exclude={"status"})
        if isinstance(job, Mapping):
            return {k: v for k, v in job.items() if k != "status"}
        path = Path(job)
        try:
            text = path.read_text()
        except OSError as error:
            raise ClientError(f"{path}: {error.strerror or error}") from None
        docs, problems = load_documents(text, str(path))
        if problems:
            raise InvalidJob([str(p) for p in problems])
        if len(docs) != 1:
            raise InvalidJob([f"{path}: holds {len(docs)} documents; submit one job at a time"])
        doc = docs[0]
        if not isinstance(doc, dict):
            raise InvalidJob([f"{path}: the document is not a mapping"])
        return doc

    def get(self, name: str, *, namespace: str | None = None) -> MLJob:
        try:
            body = self.custom.get_namespaced_custom_object(GROUP, VERSION, self._ns(namespace), PLURAL, name)
        except self._kubernetes.client.ApiException as error:
            if self._missing(error):
                raise NotFound(f"mljob {name} not found in namespace {self._ns(namespace)}") from None
            raise ClientError(_server_message(error)) from None
        return MLJob.model_validate(body)

    def jobs(self, *, namespace: str | None = None, all_namespaces: bool = False) -> list[MLJob]:
        """Every job in the namespace (or in all), sorted by namespace and name."""
        if all_namespaces:
            found = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        else:
            found = self.custom.list_namespaced_custom_object(GROUP, VERSION, self._ns(namespace), PLURAL)
        jobs = []
        for item in found.get("items") or []:
            item.setdefault("apiVersion", f"{GROUP}/{VERSION}")
            item.setdefault("kind", "MLJob")
            jobs.append(MLJob.model_validate(item))
        return sorted(jobs, key=lambda j: (j.namespace, j.name))

    def delete(self, name: str, *, namespace: str | None = None) -> None:
        """Delete the job; its pods, service and placement objects go with it."""
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, self._ns(namespace), PLURAL, name)
        except self._kubernetes.client.ApiException as error:
            if self._missing(error):
                raise NotFound(f"mljob {name} not found in namespace {self._ns(namespace)}") from None
            raise ClientError(_server_message(error)) from None

    def wait(
        self,
        name: str,
        until: str = "Succeeded",
        *,
        namespace: str | None = None,
        timeout: float = 600,
        on_change: Callable[[MLJob], None] | None = None,
    ) -> MLJob:
        """Watch the job until ``until`` (a phase, or a condition that is True) holds; see the module's doc."""
        wanted = WAITABLE.get(until.lower())
        if wanted is None:
            choices = ", ".join(sorted(set(WAITABLE.values())))
            raise ClientError(f"--for: {until!r} is not a phase or condition ({choices})")
        ns = self._ns(namespace)
        deadline = time.monotonic() + timeout
        job = self.get(name, namespace=ns)
        while True:
            if on_change is not None:
                on_change(job)
            if _holds(job, wanted):
                return job
            if job.status is not None and job.status.phase in TERMINAL:
                raise JobEnded(job)
            left = deadline - time.monotonic()
            if left <= 0:
                phase = job.status.phase.value if job.status is not None else "Pending"
                raise TimeoutError(f"{name} is {phase} after {timeout:g} s, not {wanted}")
            job = self._next_version(name, ns, job, left)

    def _next_version(self, name: str, namespace: str, job: MLJob, left: float) -> MLJob:
        """The job's next version from a watch (from the version we hold), or the same one when the time is up."""
        watch = self._kubernetes.watch.Watch()
        try:
            for event in watch.stream(
                self.custom.list_namespaced_custom_object,
                GROUP, VERSION, namespace, PLURAL,
                field_selector=f"metadata.name={name}",
                resource_version=job.metadata.resource_version,
                timeout_seconds=max(1, int(min(left, 60))),
            ):  # fmt: skip
                if event["type"] == "DELETED":
                    raise NotFound(f"mljob {name} was deleted while waiting")
                if event["type"] in ("ADDED", "MODIFIED"):
                    return MLJob.model_validate(event["object"])
        except self._kubernetes.client.ApiException as error:
            if error.status != 410:  # a too old version: read it again
                raise ClientError(_server_message(error)) from None
        finally:
            watch.stop()
        return self.get(name, namespace=namespace)

    def pods(self, name: str, *, namespace: str | None = None) -> list[dict[str, Any]]:
        """The job's pods, in replica order."""
        found = self.core.list_namespaced_pod(self._ns(namespace), label_selector=f"{LABEL_JOB}={name}")
        pods = [self.api.sanitize_for_serialization(p) for p in found.items]
        return sorted(pods, key=lambda p: _replica_key(p))

    def events(self, name: str, *, namespace: str | None = None) -> list[dict[str, Any]]:
        """The Events about the job, oldest first."""
        found = self.core.list_namespaced_event(self._ns(namespace), field_selector=f"involvedObject.name={name}")
        events = [self.api.sanitize_for_serialization(e) for e in found.items]
        return sorted(events, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))

    def logs(
        self, name: str, *, replica: str | None = None, follow: bool = False, namespace: str | None = None
    ) -> Iterator[tuple[str, str]]:
        """``(replica, line)`` from every replica's container (or one: ``worker-1``), interleaved as they come."""
        ns = self._ns(namespace)
        self.get(name, namespace=ns)
        pods = self.pods(name, namespace=ns)
        chosen = [p for p in pods if replica is None or _replica_name(p) == replica.lower()]
        if not chosen:
            known = ", ".join(_replica_name(p) for p in pods) or "none yet"
            why = f"{name} has no replica {replica}; replicas: {known}" if replica else f"{name} has no pods yet"
            raise NotFound(why)
        if not follow:
            for pod in chosen:
                for line in self._pod_log(pod, ns, follow=False):
                    yield _replica_name(pod), line
            return
        lines: queue.Queue[tuple[str, str] | None] = queue.Queue()
        errors: list[ClientError] = []

        def pump(pod: dict[str, Any]) -> None:
            try:
                for line in self._pod_log(pod, ns, follow=True):
                    lines.put((_replica_name(pod), line))
            except ClientError as error:
                errors.append(error)
            finally:
                lines.put(None)

        for pod in chosen:
            threading.Thread(target=pump, args=(pod,), daemon=True).start()
        open_streams = len(chosen)
        while open_streams:
            item = lines.get()
            if item is None:
                open_streams -= 1
            else:
                yield item
        if errors:
            raise errors[0]

    def _pod_log(self, pod: dict[str, Any], namespace: str, follow: bool) -> Iterator[str]:
        pod_name = pod["metadata"]["name"]
        container = _wiring_container(pod, self.plugins)
        try:
            response: Any = self.core.read_namespaced_pod_log(
                pod_name, namespace, container=container, follow=follow, _preload_content=False
            )
        except self._kubernetes.client.ApiException as error:
            raise ClientError(f"no log for {pod_name}: {_server_message(error)}") from None
        buffer = b""
        for chunk in response.stream(1024):
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                yield line.decode(errors="replace")
        if buffer:
            yield buffer.decode(errors="replace")


def _holds(job: MLJob, wanted: str) -> bool:
    status = job.status
    if status is None:
        return False
    if status.phase.value == wanted:
        return True
    return any(c.type.value == wanted and c.status == "True" for c in status.conditions)


def _replica_name(pod: Mapping[str, Any]) -> str:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return f"{labels.get(LABEL_ROLE, '?')}-{labels.get(LABEL_INDEX, '?')}"


def _replica_key(pod: Mapping[str, Any]) -> tuple[str, int]:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    index = str(labels.get(LABEL_INDEX, "0"))
    return str(labels.get(LABEL_ROLE, "")), int(index) if index.isdigit() else 0


def _wiring_container(pod: Mapping[str, Any], plugins: Plugins) -> str | None:
    containers = [str(c["name"]) for c in (pod.get("spec") or {}).get("containers") or []]
    if len(containers) == 1:
        return containers[0]
    names = {f.container_name for f in plugins.frameworks.values()}
    found = next((c for c in containers if c in names), containers[0] if containers else None)
    return None if found is None else str(found)


def _server_message(error: Any) -> str:
    """The API server's own message from an ApiException's body, else its reason."""
    try:
        body = json.loads(error.body or "{}")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return f"{error.status} {error.reason}"
