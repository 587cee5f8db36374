"""The object store: the emulator's whole state, its write rules, and its change feed.

Everything the HTTP layer does goes through here, and tests may call it directly, so the API
semantics (resourceVersions, generations, status isolation, finalizers, garbage collection,
namespace termination) live in one place. It is single-threaded by design: all calls must come
from the event loop that runs the emulator (``EmulatorThread`` marshals calls onto it).
Stored objects are never mutated once stored, so watch events and history can share them.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime
import logging
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from mljob.testing import resources as res
from mljob.testing.errors import ApiError, already_exists, bad_request, conflict, invalid, not_found
from mljob.testing.patching import PatchError, deep_copy, json_patch, merge_patch
from mljob.testing.selectors import Matcher, compile_selectors
from mljob.testing.validation import validate_metadata
from mljob.testing.watch import Body, Bucket, Change, Watcher

logger = logging.getLogger(__name__)

FOREGROUND = "foregroundDeletion"
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"
# Fields the server owns: a client write cannot change them.
_SERVER_FIELDS = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation")


def now_rfc3339(offset: float = 0.0) -> str:
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class Store:
    """Kubernetes objects keyed by (resource, namespace, name), with the API server's write rules."""

    def __init__(
        self,
        *,
        history_limit: int = 10_000,
        namespaces: tuple[str, ...] = ("default", "kube-system"),
        auto_create_namespaces: bool = False,
    ) -> None:
        self.history_limit = history_limit
        self.auto_create_namespaces = auto_create_namespaces
        self.graceful_pods = False  # a kubelet that finishes pod termination turns this on
        self.rv = 0
        self._resources: dict[tuple[str, str, str], res.ResourceInfo] = {}
        self._aliases: dict[str, res.ResourceInfo] = {}
        self._buckets: dict[tuple[str, str], Bucket] = {}
        self._uids: dict[str, tuple[res.ResourceInfo, str, str]] = {}
        self._dependents: dict[str, set[str]] = {}
        self._ns_counts: Counter[str] = Counter()
        self._listeners: list[Callable[[Change], None]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self.discovery_generation = 0  # bumped when the set of served resources changes
        for info in res.BUILTIN_RESOURCES:
            self.register(info)
        for ns in namespaces:
            self.create("namespaces", {"metadata": {"name": ns}})

    # --- resource registry -------------------------------------------------------------------------

    def register(self, info: res.ResourceInfo) -> None:
        """Serve a resource kind (tests may add built-ins the emulator lacks, e.g. apps/v1)."""
        bucket = self._buckets.get(info.key)
        if bucket is None:
            self._buckets[info.key] = Bucket(info, self.history_limit)
        else:
            bucket.info = info
        for key in [k for k, v in self._resources.items() if v.key == info.key]:
            del self._resources[key]
        for version in info.versions:
            self._resources[(info.group, version, info.plural)] = info
        for alias in (
            info.plural,
            info.label,
            info.kind,
            info.singular,
            *info.short_names,
            *(f"{info.api_version_for(v)}/{info.plural}" for v in info.versions),
        ):
            if alias and (alias not in self._aliases or self._aliases[alias].key == info.key or not info.builtin):
                self._aliases[alias] = info
        self.discovery_generation += 1

    def unregister(self, info: res.ResourceInfo) -> None:
        bucket = self._buckets.get(info.key)
        if bucket is not None:
            for objs in list(bucket.by_ns.values()):
                for obj in list(objs.values()):
                    self._remove(info, obj)
            for watcher in list(bucket.watchers):
                watcher.close()
            del self._buckets[info.key]
        for key in [k for k, v in self._resources.items() if v.key == info.key]:
            del self._resources[key]
        for alias in [a for a, v in self._aliases.items() if v.key == info.key]:
            del self._aliases[alias]
        self.discovery_generation += 1

    def served(self) -> list[tuple[str, str, res.ResourceInfo]]:
        """(group, version, info) for every served group-version-resource, for discovery."""
        return [(g, v, info) for (g, v, _), info in self._resources.items()]

    def lookup(self, group: str, version: str, plural: str) -> res.ResourceInfo | None:
        return self._resources.get((group, version, plural))

    def resolve(self, resource: str | res.ResourceInfo) -> res.ResourceInfo:
        """Accept ``pods``, ``Pod``, ``po``, ``mljobs.example.com`` or ``example.com/v1/mljobs``."""
        if isinstance(resource, res.ResourceInfo):
            return resource
        info = self._aliases.get(resource)
        if info is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({resource})")
        return info

    def _bucket(self, info: res.ResourceInfo) -> Bucket:
        bucket = self._buckets.get(info.key)
        if bucket is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({info.label})")
        return bucket

    # --- reading -----------------------------------------------------------------------------------

    def _ns(self, info: res.ResourceInfo, namespace: str | None) -> str:
        return (namespace or "default") if info.namespaced else ""

    def read(self, resource: str | res.ResourceInfo, name: str, namespace: str | None = "default") -> Body:
        """The stored object itself (do not mutate it); raises 404 NotFound."""
        info = self.resolve(resource)
        obj = self._bucket(info).by_ns.get(self._ns(info, namespace), {}).get(name)
        if obj is None:
            raise not_found(info.label, name, info.group)
        return obj

    def get(self, resource: str | res.ResourceInfo, name: str, namespace: str | None = "default") -> Body | None:
        """A private copy of the object, or None if absent."""
        try:
            return deep_copy(self.read(resource, name, namespace))  # type: ignore[no-any-return]
        except ApiError as e:
            if e.code == 404:
                return None
            raise

    def iter_objects(
        self, info: res.ResourceInfo, namespace: str | None, matcher: Matcher | None = None
    ) -> Iterator[Body]:
        """Stored objects sorted by (namespace, name) as the real API lists them; no copies."""
        bucket = self._bucket(info)
        spaces = [namespace] if namespace is not None and info.namespaced else sorted(bucket.by_ns)
        for ns in spaces:
            objs = bucket.by_ns.get(ns, {})
            for name in sorted(objs):
                obj = objs[name]
                if matcher is None or matcher(obj):
                    yield obj

    def list(
        self,
        resource: str | res.ResourceInfo,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> builtins.list[Body]:
        """Private copies of the matching objects; ``namespace=None`` means all namespaces."""
        info = self.resolve(resource)
        matcher = compile_selectors(label_selector, field_selector)
        return [deep_copy(obj) for obj in self.iter_objects(info, namespace, matcher)]

    def count(self, resource: str | res.ResourceInfo) -> int:
        return self._bucket(self.resolve(resource)).count()

    def events_for(
        self, name: str | None = None, *, reason: str | None = None, namespace: str | None = None
    ) -> builtins.list[Body]:
        """v1 Events, optionally about one object name and/or with one reason, oldest first."""
        found = [
            e
            for e in self.iter_objects(self.resolve("events"), namespace)
            if (name is None or e.get("involvedObject", {}).get("name") == name)
            and (reason is None or e.get("reason") == reason)
        ]
        found.sort(key=lambda e: int(e["metadata"]["resourceVersion"]))
        return [deep_copy(e) for e in found]

    # --- change feed -------------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[Change], None]) -> Callable[[], None]:
        """Call ``listener`` after every write; it must not write back synchronously (schedule it)."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def watch(
        self,
        info: res.ResourceInfo,
        namespace: str | None,
        matcher: Matcher | None,
        *,
        since: int | None,
        initial: bool,
    ) -> Watcher:
        """Open a watcher; replay history after ``since`` or snapshot the current state as ADDED.

        Raises 410 Gone if ``since`` is older than the retained history, as the real API does.
        """
        bucket = self._bucket(info)
        watcher = Watcher(info, namespace if info.namespaced else None, matcher)
        if since is not None:
            if since < bucket.dropped_rv:
                raise ApiError(410, "Expired", f"too old resource version: {since} ({bucket.dropped_rv + 1})")
            for change in bucket.since(since):
                watcher.offer(change)
        if initial:
            for obj in self.iter_objects(info, namespace, matcher):
                watcher.queue.put_nowait(("ADDED", Change("ADDED", info, self.rv, obj, None)))
        bucket.watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        bucket = self._buckets.get(watcher.info.key)
        if bucket is not None:
            bucket.watchers.discard(watcher)

    def all_watchers(self) -> builtins.list[Watcher]:
        return [w for bucket in self._buckets.values() for w in bucket.watchers]

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Return the first truthy ``predicate()``, re-checked after every write (no polling)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout}s: {predicate!r}")
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.append(future)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(future), remaining)

    def _emit(self, change: Change) -> None:
        bucket = self._buckets.get(change.resource.key)
        if bucket is not None:
            bucket.record(change)
            for watcher in bucket.watchers:
                watcher.offer(change)
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                logger.exception("store listener failed on %s %s", change.type, change.name)
        self.notify()

    def notify(self) -> None:
        """Wake ``wait_for`` callers; also for state outside the store (e.g. open watch streams)."""
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for future in waiters:
                if not future.done():
                    future.set_result(None)

    # --- writing -----------------------------------------------------------------------------------

    def _next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def _store(self, info: res.ResourceInfo, obj: Body, old: Body | None) -> Body:
        metadata = obj["metadata"]
        rv = self._next_rv()
        metadata["resourceVersion"] = str(rv)
        ns = metadata.get("namespace", "")
        self._bucket(info).by_ns.setdefault(ns, {})[metadata["name"]] = obj
        uid = metadata["uid"]
        self._uids[uid] = (info, ns, metadata["name"])
        old_owners = {r["uid"] for r in (old or {}).get("metadata", {}).get("ownerReferences") or []}
        new_owners = {r["uid"] for r in metadata.get("ownerReferences") or []}
        for owner in old_owners - new_owners:
            self._dependents.get(owner, set()).discard(uid)
        for owner in new_owners - old_owners:
            self._dependents.setdefault(owner, set()).add(uid)
        if old is None and ns:
            self._ns_counts[ns] += 1
        self._emit(Change("ADDED" if old is None else "MODIFIED", info, rv, obj, old))
        if info.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self.register(res.resource_from_crd(obj))
        return obj

    def create(
        self, resource: str | res.ResourceInfo, body: Body, namespace: str | None = None, *, keep_status: bool = True
    ) -> Body:
        """Create an object with server-assigned metadata; ``keep_status=False`` is the HTTP rule."""
        info = self.resolve(resource)
        obj = deep_copy(body) if keep_status else dict(body)
        if not isinstance(obj.get("metadata", {}), dict):
            raise bad_request("metadata must be an object")
        metadata = obj["metadata"] = dict(obj.get("metadata") or {})
        if info.namespaced:
            body_ns = metadata.get("namespace")
            if namespace and body_ns and body_ns != namespace:
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            metadata["namespace"] = ns = namespace or body_ns or "default"
            self._check_namespace_open(ns)
        else:
            metadata.pop("namespace", None)
            ns = ""
        obj = {"apiVersion": obj.get("apiVersion") or info.api_version, "kind": obj.get("kind") or info.kind, **obj}
        if obj["kind"] != info.kind:
            raise bad_request(f"kind {obj['kind']!r} does not match the resource {info.label} ({info.kind})")
        objs = self._bucket(info).by_ns.get(ns, {})
        if not metadata.get("name"):
            prefix = metadata.get("generateName")
            if not prefix:
                raise invalid(info.kind, "", "metadata.name", "Required value: name or generateName is required")
            while True:
                metadata["name"] = prefix + "".join(random.choices(_NAME_CHARS, k=5))
                if metadata["name"] not in objs:
                    break
        name = metadata["name"]
        if name in objs:
            raise already_exists(info.label, name, info.group)
        validate_metadata(info.kind, obj)
        if not keep_status and info.has_status:
            obj.pop("status", None)
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            metadata.pop(field, None)
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = now_rfc3339()
        metadata["generation"] = 1
        if info.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self._check_crd(obj)
        if info.key == ("", "namespaces"):
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj["status"] = {"phase": "Active"}
        return self._store(info, obj, None)

    def create_namespace(self, name: str) -> Body:
        """Create a namespace unless it exists; a convenience for tests."""
        existing = self.get("namespaces", name)
        return existing if existing is not None else self.create("namespaces", {"metadata": {"name": name}})

    def _check_namespace_open(self, ns: str) -> None:
        namespace = self._bucket(self.resolve("namespaces")).by_ns.get("", {}).get(ns)
        if namespace is None:
            if not self.auto_create_namespaces:
                raise not_found("namespaces", ns)
            self.create("namespaces", {"metadata": {"name": ns}})
        elif "deletionTimestamp" in namespace["metadata"]:
            raise ApiError(
                403, "Forbidden", f"unable to create new content in namespace {ns} because it is being terminated"
            )

    def _check_crd(self, crd: Body) -> None:
        try:
            info = res.resource_from_crd(crd)
        except ValueError as e:
            raise invalid("CustomResourceDefinition", crd["metadata"].get("name", ""), "spec", str(e)) from None
        existing = self._buckets.get(info.key)
        if existing is not None and existing.info.builtin:
            raise invalid(
                "CustomResourceDefinition",
                crd["metadata"]["name"],
                "spec.names.plural",
                "conflicts with a built-in resource",
            )
        crd["status"] = res.crd_status(crd)

    def replace(
        self,
        resource: str | res.ResourceInfo,
        name: str,
        body: Body,
        namespace: str | None = "default",
        *,
        subresource: str | None = None,
    ) -> Body:
        """PUT: replace the object (or only its status), with optimistic concurrency if rv is given."""
        info = self.resolve(resource)
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise bad_request("the body must be an object")
        body_name = (body.get("metadata") or {}).get("name")
        if body_name and body_name != name:
            raise bad_request(f"the name of the object ({body_name}) does not match the name on the URL ({name})")
        old = self.read(info, name, namespace)
        new = deep_copy(body)
        new.setdefault("metadata", {})
        return self._update(info, old, new, subresource)

    def patch(
        self,
        resource: str | res.ResourceInfo,
        name: str,
        patch: Any,
        namespace: str | None = "default",
        *,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> Body:
        """PATCH with ``merge``, ``strategic`` (treated as merge) or ``json``; rv in the patch is a precondition."""
        info = self.resolve(resource)
        old = self.read(info, name, namespace)
        try:
            if patch_type in ("merge", "strategic"):
                if not isinstance(patch, dict):
                    raise PatchError("a merge patch must be an object")
                new = merge_patch(old, patch)
            elif patch_type == "json":
                new = json_patch(old, patch)
            else:
                raise ApiError(415, "UnsupportedMediaType", f"the patch type {patch_type!r} is not supported")
        except PatchError as e:
            raise ApiError(422, "Invalid", str(e)) from None
        if not isinstance(new, dict) or not isinstance(new.get("metadata"), dict):
            raise ApiError(422, "Invalid", "the patched object must keep its metadata")
        return self._update(info, old, new, subresource)

    def bind_pod(self, name: str, namespace: str, node_name: str) -> Body:
        """Set ``spec.nodeName`` as the scheduler's binding does: no generation bump, no checks."""
        info = self.resolve("pods")
        old = self.read(info, name, namespace)
        new = {**old, "spec": {**(old.get("spec") or {}), "nodeName": node_name}, "metadata": dict(old["metadata"])}
        return self._store(info, new, old)

    def update_status(
        self, resource: str | res.ResourceInfo, name: str, status: Body, namespace: str | None = "default"
    ) -> Body:
        """Replace only ``.status`` unconditionally: how controllers such as the kubelet report."""
        info = self.resolve(resource)
        old = self.read(info, name, namespace)
        return self._update(info, old, {**old, "status": deep_copy(status)}, "status")

    def _update(self, info: res.ResourceInfo, old: Body, new: Body, subresource: str | None) -> Body:
        old_md = old["metadata"]
        new_md = new["metadata"] = dict(new.get("metadata") or {})
        wanted_rv = new_md.get("resourceVersion")
        if wanted_rv and wanted_rv != old_md["resourceVersion"]:
            raise conflict(info.label, old_md["name"], info.group)
        if subresource == "status":
            result = {k: v for k, v in old.items() if k != "status"}
            if "status" in new:
                result["status"] = new["status"]
            result["metadata"] = dict(old_md)
        elif subresource is None:
            result = dict(new)
            if info.has_status:
                result.pop("status", None)
                if "status" in old:
                    result["status"] = old["status"]
            result["apiVersion"], result["kind"] = old["apiVersion"], old["kind"]
            result["metadata"] = md = new_md
            md["name"] = old_md["name"]
            if info.namespaced:
                md["namespace"] = old_md["namespace"]
            else:
                md.pop("namespace", None)
            for field in _SERVER_FIELDS:
                md.pop(field, None)
                if field in old_md:
                    md[field] = old_md[field]
            validate_metadata(info.kind, result)
            if "deletionTimestamp" in old_md and set(md.get("finalizers") or ()) - set(old_md.get("finalizers") or ()):
                raise invalid(
                    info.kind,
                    old_md["name"],
                    "metadata.finalizers",
                    "Forbidden: no new finalizers can be added if the object is being deleted",
                )
            if not md.get("finalizers"):
                md.pop("finalizers", None)
            if _spec_of(result) != _spec_of(old):
                md["generation"] = old_md.get("generation", 1) + 1
            if info.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
                self._check_crd(result)
        else:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({info.label}/{subresource})"
            )
        result["metadata"]["resourceVersion"] = old_md["resourceVersion"]
        if result == old:
            return old  # a no-op write changes nothing: no new resourceVersion, no watch event
        self._store(info, result, old)
        if self._removable(result):
            return self._remove(info, result)
        return result

    # --- deletion ----------------------------------------------------------------------------------

    def delete(
        self,
        resource: str | res.ResourceInfo,
        name: str,
        namespace: str | None = "default",
        *,
        propagation_policy: str | None = None,
        grace_period_seconds: int | None = None,
        preconditions: dict[str, Any] | None = None,
    ) -> tuple[Body, bool]:
        """DELETE: returns the object and whether it is gone (False: it waits for finalizers/grace)."""
        info = self.resolve(resource)
        obj = self.read(info, name, namespace)
        md = obj["metadata"]
        for field in ("uid", "resourceVersion"):
            wanted = (preconditions or {}).get(field)
            if wanted and wanted != md[field]:
                raise conflict(info.label, name, info.group)
        policy = propagation_policy or "Background"
        if policy not in ("Background", "Foreground", "Orphan"):
            raise bad_request(f"invalid propagationPolicy {policy!r}")
        if policy == "Orphan":
            self._orphan_dependents(md["uid"])
        if "deletionTimestamp" in md:
            if grace_period_seconds == 0 and md.get("deletionGracePeriodSeconds"):
                new = {**obj, "metadata": {**md, "deletionGracePeriodSeconds": 0}}
                self._store(info, new, obj)
                if self._removable(new):
                    return self._remove(info, new), True
                return new, False
            return obj, False
        grace = 0
        if info.key == ("", "pods") and self.graceful_pods and (obj.get("spec") or {}).get("nodeName"):
            grace = (
                grace_period_seconds
                if grace_period_seconds is not None
                else int((obj.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
            )
        foreground = policy == "Foreground" and bool(self._dependents.get(md["uid"]))
        finalizers = list(md.get("finalizers") or [])
        if foreground and FOREGROUND not in finalizers:
            finalizers.append(FOREGROUND)
        if not finalizers and not grace and info.key != ("", "namespaces"):
            return self._remove(info, obj), True
        new_md = {**md, "deletionTimestamp": now_rfc3339(grace), "deletionGracePeriodSeconds": grace}
        if finalizers:
            new_md["finalizers"] = finalizers
        new = {**obj, "metadata": new_md}
        if info.key == ("", "namespaces"):
            new["status"] = {**(obj.get("status") or {}), "phase": "Terminating"}
        self._store(info, new, obj)
        if foreground:
            self._collect(md["uid"], policy="Background")
            self._release_foreground(md["uid"])
        if info.key == ("", "namespaces"):
            self._empty_namespace(name)
        current = self._current(info, new)
        return (current, False) if current is not None else (new, True)

    def _current(self, info: res.ResourceInfo, obj: Body) -> Body | None:
        md = obj["metadata"]
        return self._buckets[info.key].by_ns.get(md.get("namespace", ""), {}).get(md["name"])

    @staticmethod
    def _removable(obj: Body) -> bool:
        md = obj["metadata"]
        return "deletionTimestamp" in md and not md.get("finalizers") and not md.get("deletionGracePeriodSeconds")

    def _remove(self, info: res.ResourceInfo, obj: Body) -> Body:
        md = obj["metadata"]
        ns, name, uid = md.get("namespace", ""), md["name"], md["uid"]
        bucket = self._buckets.get(info.key)
        if bucket is None or bucket.by_ns.get(ns, {}).get(name) is not obj:
            return obj  # already gone (e.g. removed by a cascade while we were deciding)
        del bucket.by_ns[ns][name]
        if not bucket.by_ns[ns]:
            del bucket.by_ns[ns]
        self._uids.pop(uid, None)
        owners = [r["uid"] for r in md.get("ownerReferences") or []]
        for owner in owners:
            self._dependents.get(owner, set()).discard(uid)
        if ns:
            self._ns_counts[ns] -= 1
        final = {**obj, "metadata": {**md, "resourceVersion": str(self._next_rv())}}
        self._emit(Change("DELETED", info, self.rv, final, obj))
        if info.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            with _suppress_404():
                self.unregister(res.resource_from_crd(obj))
        self._collect(uid, policy="Background")
        self._dependents.pop(uid, None)
        for owner in owners:
            self._release_foreground(owner)
        if ns and self._ns_counts[ns] <= 0:
            self._finish_namespace(ns)
        return final

    def _collect(self, owner_uid: str, *, policy: str) -> None:
        """Garbage-collect the dependents of a gone (or foreground-deleting) owner, as the GC does."""
        for dep_uid in list(self._dependents.get(owner_uid, ())):
            where = self._uids.get(dep_uid)
            if where is None:
                continue
            info, ns, name = where
            dep = self._buckets[info.key].by_ns[ns][name]
            refs = dep["metadata"].get("ownerReferences") or []
            alive = [r for r in refs if r["uid"] != owner_uid and r["uid"] in self._uids]
            if alive:
                # Other owners keep it: only the reference to this owner (and dangling ones) goes.
                self._store(info, {**dep, "metadata": {**dep["metadata"], "ownerReferences": alive}}, dep)
            else:
                with _suppress_404():
                    self.delete(info, name, ns or None, propagation_policy=policy)

    def _orphan_dependents(self, owner_uid: str) -> None:
        for dep_uid in list(self._dependents.get(owner_uid, ())):
            where = self._uids.get(dep_uid)
            if where is not None:
                info, ns, name = where
                dep = self._buckets[info.key].by_ns[ns][name]
                refs = [r for r in dep["metadata"].get("ownerReferences") or [] if r["uid"] != owner_uid]
                md = {**dep["metadata"], "ownerReferences": refs}
                if not refs:
                    del md["ownerReferences"]
                self._store(info, {**dep, "metadata": md}, dep)

    def _release_foreground(self, owner_uid: str) -> None:
        """Drop the foregroundDeletion finalizer once the last dependent is gone."""
        where = self._uids.get(owner_uid)
        if where is None or self._dependents.get(owner_uid):
            return
        info, ns, name = where
        owner = self._buckets[info.key].by_ns[ns][name]
        finalizers = owner["metadata"].get("finalizers") or []
        if "deletionTimestamp" in owner["metadata"] and FOREGROUND in finalizers:
            rest = [f for f in finalizers if f != FOREGROUND]
            self.patch(info, name, {"metadata": {"finalizers": rest or None}}, ns or None)

    def _empty_namespace(self, ns: str) -> None:
        for bucket in list(self._buckets.values()):
            if bucket.info.namespaced:
                for obj in list(bucket.by_ns.get(ns, {}).values()):
                    with _suppress_404():
                        self.delete(bucket.info, obj["metadata"]["name"], ns)
        if self._ns_counts[ns] <= 0:
            self._finish_namespace(ns)

    def _finish_namespace(self, ns: str) -> None:
        info = self.resolve("namespaces")
        namespace = self._buckets[info.key].by_ns.get("", {}).get(ns)
        if (
            namespace is not None
            and "deletionTimestamp" in namespace["metadata"]
            and not namespace["metadata"].get("finalizers")
        ):
            self._remove(info, namespace)


def _spec_of(obj: Body) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


@contextlib.contextmanager
def _suppress_404() -> Iterator[None]:
    """Ignore NotFound during cascades: a dependent may vanish between the check and the delete."""
    try:
        yield
    except ApiError as e:
        if e.code != 404:
            raise
