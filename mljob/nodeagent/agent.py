"""The node agent: registers Nodes, keeps their leases, runs the pods bound to them, serves their logs.

One asyncio process for one or more Nodes. Per Node: the Node object (created, or its status rewritten when it
exists), its Lease renewed every ``renew_seconds``, the Ready condition's heartbeat every ``status_seconds``, and
a list-then-watch of the pods with ``spec.nodeName`` set to it, each pod handed to a
:class:`~mljob.nodeagent.worker.PodWorker`. One kubelet API server answers log, exec and port-forward requests for
every Node.

On start, the pods already bound are taken up as a kubelet takes them up after a node reboot: finished ones stay
as they are, deleted ones are deleted for good, and in the others every container that was running is reported
gone (``ContainerStatusUnknown``, 137) and restarted or not by the pod's ``restartPolicy``. Nothing of a pod
survives the agent: see mljob.nodeagent.runtime.

The API calls go through :class:`mljob.kube.Api` (aiohttp, the kubeconfig read by the ``kubernetes`` package),
as the operator's do, with one addition: a watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mljob.api import format_time, parse_time
from mljob.kube import SYNC, Api, ApiError, inform
from mljob.nodeagent import cgroups, kubelet_api, streaming
from mljob.nodeagent.apidata import TokenKey
from mljob.nodeagent.node import LEASE_NAMESPACE, NodeSpec, lease_body, micro_time, node_body, node_conditions
from mljob.nodeagent.sandbox import PodNetwork
from mljob.nodeagent.worker import Calls, PodWorker, Settings

log = logging.getLogger("mljob.nodeagent")
COMPONENT = "mljob-node-agent"
SHUTDOWN_GRACE = 5.0
"""Seconds the processes get to stop when the agent itself is stopped (they die with it anyway)."""


@dataclass(frozen=True)
class Config:
    """The agent's settings (the ``mljob node-agent`` flags)."""

    nodes: tuple[NodeSpec, ...]
    state_dir: Path
    bind_address: str = "127.0.0.1"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    lease_seconds: int = 40
    renew_seconds: float = 10.0
    status_seconds: float = 60.0
    backoff_base: float = 10.0
    backoff_max: float = 300.0
    sync_seconds: float = 60.0
    base_env: Mapping[str, str] = field(default_factory=dict)
    hierarchy: cgroups.Hierarchy | None = None
    """Where pods' cgroups go (:func:`mljob.nodeagent.cgroups.detect`); None: pods run unlimited, for ``no_cgroups``."""
    no_cgroups: str = ""
    streaming_helper: Path | None = None
    """The ``kubelet-streaming`` binary that serves exec and port-forward (None: they answer 501)."""


class Agent:
    """Everything the agent runs; :meth:`run` until cancelled, then every pod's processes are stopped."""

    def __init__(
        self, api: Api, networks: Mapping[str, PodNetwork], config: Config, isolation: tuple[str, ...]
    ) -> None:
        self.api = api
        self.networks = networks
        """Each Node's :class:`PodNetwork` (one per Node: each has its own pod CIDR)."""
        self.config = config
        self.workers: dict[str, PodWorker] = {}
        self.node_uids: dict[str, str] = {}
        self.ready_since = datetime.now(UTC)
        first = config.nodes[0]
        self.settings = Settings(
            state_dir=config.state_dir,
            isolation=isolation,
            base_env=dict(config.base_env),
            host_ip=first.ip,
            backoff_base=config.backoff_base,
            backoff_max=config.backoff_max,
            sync_seconds=config.sync_seconds,
            # the agent's environment, its interpreter, and where mljob itself is (a checkout, for an editable install)
            image_roots=(sys.prefix, sys.base_prefix, str(Path(__file__).resolve().parents[2])),
            allocatable={"cpu": first.cpu, "memory": first.memory, "pods": first.pods},
            hierarchy=config.hierarchy,
            no_cgroups=config.no_cgroups,
        )
        self.calls = Calls(
            self._patch_status, self._delete_pod, self._event, self._read, self._request_token, self._services
        )
        self._background: set[asyncio.Task[None]] = set()
        self.synced: set[str] = set()
        """Nodes whose pods have been listed once (the start-up reconcile is done)."""

    async def run(self) -> None:
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        runner = None
        tasks: list[asyncio.Task[None]] = []
        try:
            for node in self.config.nodes:
                await self.register(node)
            context = None
            if self.config.tls_cert is not None and self.config.tls_key is not None:
                context = kubelet_api.tls(self.config.tls_cert, self.config.tls_key, self.config.client_ca)
            authorizer = streaming.Authorizer(self.api) if self.config.client_ca is not None else None
            streams = kubelet_api.Streaming(self.config.streaming_helper, authorizer)
            runner = await kubelet_api.serve(
                self, self.config.bind_address, self.config.nodes[0].port, context, streams
            )
            for node in self.config.nodes:
                tasks += [
                    asyncio.create_task(self._renew_lease(node.name), name=f"lease {node.name}"),
                    asyncio.create_task(self._heartbeat(node), name=f"heartbeat {node.name}"),
                    asyncio.create_task(self._inform(node.name), name=f"pods {node.name}"),
                ]
            log.info("node agent up: nodes %s", ", ".join(n.name for n in self.config.nodes))
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(w.shutdown(SHUTDOWN_GRACE) for w in list(self.workers.values())))
            await self._remove_cgroups()
            if runner is not None:
                await runner.cleanup()
            await self.api.close()

    # --- the Node and its Lease ------------------------------------------------------------------------------

    async def register(self, node: NodeSpec) -> None:
        """Create the Node, or take over an existing one: its labels and status are rewritten as ours."""
        now = datetime.now(UTC)
        body = node_body(node, now)
        try:
            created = await self.api.request("POST", "/api/v1/nodes", body)
        except ApiError as error:
            if error.status != 409:
                raise
            meta = {"labels": body["metadata"]["labels"]}
            created = await self.api.request(
                "PATCH", f"/api/v1/nodes/{node.name}", {"metadata": meta}, "application/merge-patch+json"
            )
        # Written again through the status subresource: what a create keeps of a status is the server's choice.
        await self.api.request(
            "PATCH", f"/api/v1/nodes/{node.name}/status", {"status": body["status"]}, "application/merge-patch+json"
        )
        self.node_uids[node.name] = str(created["metadata"]["uid"])
        await self._renew(node.name)

    async def _renew(self, node: str) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{node}"
        now = datetime.now(UTC)
        patch = {"spec": {"holderIdentity": node, "renewTime": micro_time(now)}}
        try:
            await self.api.request("PATCH", path, patch, "application/merge-patch+json")
        except ApiError as error:
            if error.status != 404:
                raise
            body = lease_body(node, self.node_uids[node], self.config.lease_seconds, now)
            await self.api.request("POST", f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases", body)

    async def _renew_lease(self, node: str) -> None:
        while True:
            await asyncio.sleep(self.config.renew_seconds)
            try:
                await self._renew(node)
            except ApiError as error:
                log.warning("renewing the lease of %s: %s", node, error)

    async def _heartbeat(self, node: NodeSpec) -> None:
        while True:
            await asyncio.sleep(self.config.status_seconds)
            conditions = node_conditions(datetime.now(UTC), self.ready_since)
            try:
                await self.api.request(
                    "PATCH",
                    f"/api/v1/nodes/{node.name}/status",
                    {"status": {"conditions": conditions}},
                    "application/merge-patch+json",
                )
            except ApiError as error:
                log.warning("node status of %s: %s", node.name, error)

    # --- pods ------------------------------------------------------------------------------------------------

    async def _inform(self, node: str) -> None:
        """List, then watch, the node's pods (:func:`mljob.kube.inform`: a relist on 410, backoff while away)."""
        params = {"fieldSelector": f"spec.nodeName={node}"}
        async for event, payload in inform(self.api, "/api/v1/pods", params, what=f"the pods of {node}"):
            if event == SYNC:
                self._reconcile(node, list(payload))
            elif event == "DELETED":
                await self._gone(payload)
            else:
                self._seen(node, payload)

    def _reconcile(self, node: str, pods: list[dict[str, Any]]) -> None:
        """A (re)list: every pod bound here gets a worker; workers of pods no longer listed stop."""
        present = {str(p["metadata"]["uid"]) for p in pods}
        for uid, worker in list(self.workers.items()):
            if worker.node == node and uid not in present:
                self._keep(asyncio.create_task(worker.gone()))
        for pod in pods:
            self._seen(node, pod)
        if node not in self.synced:
            self.synced.add(node)
            self._forget_leftovers()

    def _forget_leftovers(self) -> None:
        """Remove what is left of pods deleted while the agent was away: their folders (logs, emptyDirs), and
        their sandboxes (``PodNetwork.sandboxes()``, ``remove_uid()``)."""
        if len(self.synced) < len(self.config.nodes):
            return
        known = {str(w.dir) for w in self.workers.values()}
        folder = self.config.state_dir / "pods"
        for entry in folder.iterdir() if folder.is_dir() else ():
            if str(entry) not in known:
                shutil.rmtree(entry, ignore_errors=True)
        self._keep(asyncio.create_task(self._sweep_sandboxes()))
        self._keep(asyncio.create_task(self._sweep_cgroups()))

    async def _sweep_cgroups(self) -> None:
        """The cgroups of pods deleted while the agent was away (their processes died with it)."""
        hierarchy = self.config.hierarchy
        if hierarchy is None:
            return
        for node in self.config.nodes:
            try:
                for uid in await asyncio.to_thread(cgroups.leftover_pods, hierarchy, node.name, set(self.workers)):
                    log.info("removing the cgroups of pod %s on %s: the pod is gone", uid, node.name)
                    await asyncio.to_thread(cgroups.remove_pod, hierarchy, node.name, uid)
            except OSError:
                log.exception("sweeping the cgroups of %s", node.name)

    async def _remove_cgroups(self) -> None:
        """When the agent stops, after its pods' processes: their cgroups too (a restart makes them again), so a
        Node that is not played again leaves nothing behind."""
        hierarchy = self.config.hierarchy
        if hierarchy is None:
            return
        for node in self.config.nodes:
            try:
                if not await asyncio.to_thread(cgroups.remove_node, hierarchy, node.name):
                    log.warning("the cgroups of %s are still there (busy)", node.name)
            except OSError:
                log.exception("removing the cgroups of %s", node.name)

    async def _sweep_sandboxes(self) -> None:
        uids = set(self.workers)
        for node, network in self.networks.items():
            try:
                for uid in await asyncio.to_thread(network.sandboxes) - uids:
                    log.info("removing the sandbox of pod %s on %s: the pod is gone", uid, node)
                    await asyncio.to_thread(network.remove_uid, uid)
            except Exception:
                log.exception("sweeping the sandboxes of %s", node)

    def _seen(self, node: str, pod: dict[str, Any]) -> None:
        uid = str(pod["metadata"]["uid"])
        worker = self.workers.get(uid)
        if worker is not None:
            worker.update(pod)
            return
        worker = PodWorker(pod, node, self.networks[node], self.settings, self.calls)
        self.workers[uid] = worker
        worker.start()
        self._keep(asyncio.create_task(self._forget_when_done(worker)))

    def _keep(self, task: asyncio.Task[None]) -> None:
        """Hold a background task until it ends (the loop keeps only weak references)."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _forget_when_done(self, worker: PodWorker) -> None:
        await worker.done.wait()
        if self.workers.get(worker.uid) is worker:
            del self.workers[worker.uid]

    async def _gone(self, pod: Mapping[str, Any]) -> None:
        worker = self.workers.get(str(pod["metadata"]["uid"]))
        if worker is not None:
            await worker.gone()

    # --- the worker's writes ---------------------------------------------------------------------------------

    async def _patch_status(self, pod: Mapping[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        body = {"metadata": {"uid": meta["uid"]}, "status": status}
        try:
            await self.api.request("PATCH", path, body, "application/merge-patch+json")
        except ApiError as error:
            if error.status not in (404, 409):  # gone, or the name is another pod's now: nothing to write
                raise

    async def _delete_pod(self, pod: Mapping[str, Any]) -> None:
        """Delete for good, as the kubelet does once the processes are gone: grace 0, this uid only."""
        meta = pod["metadata"]
        options = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": meta["uid"]},
        }
        try:
            await self.api.request("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", options)
        except ApiError as error:
            if error.status not in (404, 409):
                raise

    # --- what pods read through their kubelet ----------------------------------------------------------------

    async def _read(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A ConfigMap or Secret; None when it is not there."""
        try:
            found: dict[str, Any] = await self.api.request("GET", f"/api/v1/namespaces/{namespace}/{resource}/{name}")
        except ApiError as error:
            if error.status == 404:
                return None
            raise
        return found

    async def _request_token(self, pod: Mapping[str, Any], key: TokenKey) -> tuple[str, datetime]:
        """A TokenRequest for the pod's ServiceAccount, bound to the pod (it stops working when the pod goes)."""
        meta = pod["metadata"]
        spec: dict[str, Any] = {
            "expirationSeconds": key.seconds,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
        }
        if key.audience:
            spec["audiences"] = [key.audience]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{key.service_account}/token"
        answer = await self.api.request("POST", path, body)
        status = answer.get("status") or {}
        expires = parse_time(status.get("expirationTimestamp"))
        if not status.get("token") or expires is None:
            raise ApiError(0, "BadTokenRequest", f"the TokenRequest's answer has no token or expiry: {path}")
        return str(status["token"]), expires

    async def _services(self, namespace: str) -> list[dict[str, Any]]:
        """The namespace's Services and the API server's (``default/kubernetes``), for the Services' env."""
        listed = await self.api.request("GET", f"/api/v1/namespaces/{namespace}/services")
        found: list[dict[str, Any]] = list(listed.get("items") or ())
        for item in found:  # a list's items carry no kind, and the namespace is the one asked for
            item.setdefault("metadata", {}).setdefault("namespace", namespace)
        if namespace != "default":
            master = await self.api.get("Service", "default", "kubernetes")
            if master is not None:
                found.append(master)
        return found

    async def _event(self, pod: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        meta = pod["metadata"]
        now = format_time(datetime.now(UTC))
        node = str((pod.get("spec") or {}).get("nodeName") or "")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "source": {"component": COMPONENT, "host": node},
            "reportingComponent": COMPONENT,
            "reportingInstance": node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self.api.request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", event)

    # --- logs (kubelet_api.LogSource) ------------------------------------------------------------------------

    def _named(self, namespace: str, pod: str) -> PodWorker | None:
        """The worker of the pod of that name on this agent."""
        named = [
            w
            for w in self.workers.values()
            if w.pod["metadata"]["namespace"] == namespace and w.pod["metadata"]["name"] == pod
        ]
        # A name may be two pods for a moment (one being deleted, its replacement): the API server means the live one.
        named.sort(key=lambda w: not w.pod["metadata"].get("deletionTimestamp"))
        return named[-1] if named else None

    def log_file(self, namespace: str, pod: str, container: str, previous: bool) -> kubelet_api.LogFile:
        """The file of a container's current (or previous) run: the newest pod of that name on this agent."""
        worker = self._named(namespace, pod)
        if worker is not None:
            folder = worker.logs_dir
            names = {str(c["name"]) for c in (worker.pod.get("spec") or {}).get("containers") or ()}
            names |= {str(c["name"]) for c in (worker.pod.get("spec") or {}).get("initContainers") or ()}
            if container not in names:
                raise kubelet_api.NoLog(f'container "{container}" in pod "{pod}" is not available')
        else:
            candidates = sorted(
                (self.config.state_dir / "pods").glob(f"{namespace}_{pod}_*"), key=lambda p: p.stat().st_mtime
            )
            if not candidates:
                raise kubelet_api.NoLog(f'pod "{pod}" in namespace "{namespace}" is not on this node')
            folder = candidates[-1] / "logs"
        runs = sorted((int(p.stem) for p in (folder / container).glob("*.log") if p.stem.isdigit()), reverse=True)
        if previous:
            if len(runs) < 2:
                raise kubelet_api.NoLog(f'previous terminated container "{container}" in pod "{pod}" not found')
            path = folder / container / f"{runs[1]}.log"
        elif runs:
            path = folder / container / f"{runs[0]}.log"
        else:
            raise kubelet_api.NoLog(f'container "{container}" in pod "{pod}" is waiting to start')
        live = worker.live_logs if worker is not None else set()
        return kubelet_api.LogFile(path, lambda: path in live)

    # --- exec and port-forward (kubelet_api.PodSource) -------------------------------------------------------

    def _running(self, namespace: str, pod: str, uid: str) -> PodWorker:
        worker = self._named(namespace, pod)
        if worker is None or (uid and worker.uid != uid):
            raise streaming.NoTarget(404, f'pod does not exist: no pod "{pod}" in namespace "{namespace}" on this node')
        return worker

    def exec_target(self, namespace: str, pod: str, uid: str, container: str) -> streaming.ExecTarget:
        """The container's PID 1 and environment, read from the process itself (what its command started with)."""
        worker = self._running(namespace, pod, uid)
        spec = worker.pod.get("spec") or {}
        names = {str(c["name"]) for c in (*(spec.get("containers") or ()), *(spec.get("initContainers") or ()))}
        if container not in names:
            raise streaming.NoTarget(
                404, f'container "{container}" is not in pod "{pod}" (its containers: {", ".join(sorted(names))})'
            )
        process = worker.processes.get(container)
        init = streaming.container_init(process.pid) if process is not None else None
        if init is None:
            raise streaming.NoTarget(500, f'container not found ("{container}")')  # the kubelet's words: not running
        return streaming.exec_target(init)

    def netns_of(self, namespace: str, pod: str, uid: str) -> str:
        """The pod's network namespace, as a running container's PID 1 has it (the host's in host-network mode)."""
        worker = self._running(namespace, pod, uid)
        for process in list(worker.processes.values()):
            init = streaming.container_init(process.pid)
            if init is not None:
                return f"/proc/{init}/ns/net"
        raise streaming.NoTarget(500, f'pod not found ("{pod}_{namespace}"): none of its containers is running')

    def node_of(self, namespace: str, pod: str) -> str:
        worker = self._named(namespace, pod) if pod else None
        return worker.node if worker is not None else self.config.nodes[0].name


BASE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
"""The agent's variables every container gets (the image's env would be here on a real node); nothing else of
the agent's environment (its KUBECONFIG above all) reaches a pod."""


def base_env(environ: Mapping[str, str]) -> dict[str, str]:
    from mljob.local.launch import process_path

    env = {k: environ[k] for k in BASE_ENV_KEYS if k in environ}
    env["PATH"] = process_path(environ)  # this environment's python and torchrun first, as an image's would be
    env.setdefault("HOME", "/root")
    return env


async def run_agent(api: Api, networks: Mapping[str, PodNetwork], config: Config, isolation: tuple[str, ...]) -> None:
    """Run until SIGTERM or SIGINT, then stop every pod's processes and return."""
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(Agent(api, networks, config, isolation).run())
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
