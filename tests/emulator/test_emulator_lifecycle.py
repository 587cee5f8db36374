"""Deletion: finalizers, deletionTimestamp, garbage collection, namespaces, CRDs, and events."""

import pytest

from mljob.testing import ApiError, KubeEmulator, crd_manifest

WIDGETS = "/apis/example.com/v1/namespaces/default/widgets"


def owned(name, owner, kind="ConfigMap"):
    ref = {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    return {"kind": kind, "metadata": {"name": name, "ownerReferences": [ref]}}


@pytest.mark.asyncio
async def test_finalizers_hold_deletion_until_removed(api, emu, widget):
    widget["metadata"]["finalizers"] = ["a/one", "b/two"]
    _, created = await api.post(WIDGETS, widget)
    status, body = await api.delete(f"{WIDGETS}/w1")
    assert status == 200
    assert body["metadata"]["deletionTimestamp"]
    assert body["metadata"]["deletionGracePeriodSeconds"] == 0
    assert int(body["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    status, again = await api.delete(f"{WIDGETS}/w1")  # deleting again changes nothing
    assert (status, again) == (200, body)
    status, err = await api.merge(f"{WIDGETS}/w1", {"metadata": {"finalizers": ["a/one", "b/two", "c/new"]}})
    assert (status, err["reason"]) == (422, "Invalid")
    await api.merge(f"{WIDGETS}/w1", {"metadata": {"finalizers": ["b/two"]}})
    assert emu.get("widgets", "w1") is not None
    ops = [
        {
            "op": "test",
            "path": "/metadata/resourceVersion",
            "value": emu.get("widgets", "w1")["metadata"]["resourceVersion"],
        },
        {"op": "remove", "path": "/metadata/finalizers"},
    ]
    status, last = await api.jsonpatch(f"{WIDGETS}/w1", ops)
    assert status == 200
    assert "finalizers" not in last["metadata"]
    assert emu.get("widgets", "w1") is None
    assert (await api.get(f"{WIDGETS}/w1"))[0] == 404


@pytest.mark.asyncio
async def test_delete_without_finalizers_is_immediate(api, emu, widget):
    _, created = await api.post(WIDGETS, widget)
    status, body = await api.delete(f"{WIDGETS}/w1")
    assert (status, body["kind"], body["status"]) == (200, "Status", "Success")
    assert body["details"]["uid"] == created["metadata"]["uid"]
    assert (await api.delete(f"{WIDGETS}/w1"))[0] == 404


@pytest.mark.asyncio
async def test_delete_preconditions(api, widget):
    await api.post(WIDGETS, widget)
    status, body = await api.delete(
        f"{WIDGETS}/w1", {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": "not-the-uid"}}
    )
    assert (status, body["reason"]) == (409, "Conflict")


@pytest.mark.asyncio
async def test_gc_cascades_through_owner_references(api, emu, widget):
    _, parent = await api.post(WIDGETS, widget)
    child = emu.create("configmaps", owned("child", parent))
    emu.create("configmaps", owned("grandchild", child))
    emu.create("services", {**owned("svc", parent, "Service"), "spec": {"clusterIP": "None"}})
    emu.create("configmaps", {"metadata": {"name": "bystander"}})
    await api.delete(f"{WIDGETS}/w1")
    assert [c["metadata"]["name"] for c in emu.list("configmaps")] == ["bystander"]
    assert emu.list("services") == []


@pytest.mark.asyncio
async def test_gc_waits_for_the_owners_finalizers_and_spares_co_owned(emu):
    parent = emu.create("widgets", {"metadata": {"name": "p", "finalizers": ["x/y"]}})
    other = emu.create("widgets", {"metadata": {"name": "o"}})
    emu.create("configmaps", owned("solo", parent))
    shared = owned("shared", parent)
    shared["metadata"]["ownerReferences"].append(owned("", other)["metadata"]["ownerReferences"][0])
    emu.create("configmaps", shared)
    emu.delete("widgets", "p")
    assert emu.get("configmaps", "solo") is not None  # the owner still exists (terminating)
    emu.patch("widgets", "p", {"metadata": {"finalizers": None}})
    assert emu.get("configmaps", "solo") is None
    refs = emu.get("configmaps", "shared")["metadata"]["ownerReferences"]
    assert [r["name"] for r in refs] == ["o"]
    emu.delete("widgets", "o")
    assert emu.get("configmaps", "shared") is None


@pytest.mark.asyncio
async def test_orphan_and_foreground_propagation(api, emu):
    parent = emu.create("widgets", {"metadata": {"name": "p"}})
    emu.create("configmaps", owned("kept", parent))
    status, _ = await api.delete(f"{WIDGETS}/p", propagationPolicy="Orphan")
    assert status == 200
    assert "ownerReferences" not in emu.get("configmaps", "kept")["metadata"]

    parent = emu.create("widgets", {"metadata": {"name": "f"}})
    blocker = owned("blocker", parent)
    blocker["metadata"]["finalizers"] = ["x/hold"]
    emu.create("configmaps", blocker)
    status, body = await api.delete(f"{WIDGETS}/f", {"propagationPolicy": "Foreground"})
    assert status == 200
    assert body["metadata"]["finalizers"] == ["foregroundDeletion"]
    assert emu.get("configmaps", "blocker")["metadata"]["deletionTimestamp"]
    assert emu.get("widgets", "f") is not None  # waits for its dependents to go
    emu.patch("configmaps", "blocker", {"metadata": {"finalizers": None}})
    assert emu.get("configmaps", "blocker") is None
    assert emu.get("widgets", "f") is None


@pytest.mark.asyncio
async def test_namespace_deletion_empties_and_removes_it(emu):
    emu.store.create_namespace("team")
    emu.create("configmaps", {"metadata": {"name": "a", "namespace": "team"}})
    emu.create("widgets", {"metadata": {"name": "w", "namespace": "team", "finalizers": ["x/y"]}})
    emu.delete("namespaces", "team", None)
    assert emu.get("namespaces", "team")["status"]["phase"] == "Terminating"
    assert emu.get("configmaps", "a", "team") is None
    with pytest.raises(ApiError, match="being terminated"):
        emu.create("configmaps", {"metadata": {"name": "late"}}, "team")
    emu.patch("widgets", "w", {"metadata": {"finalizers": None}}, "team")
    assert emu.get("namespaces", "team") is None


@pytest.mark.asyncio
async def test_crd_deletion_removes_its_resource(api, emu):
    emu.create("widgets", {"metadata": {"name": "w"}})
    emu.delete("customresourcedefinitions", "widgets.example.com", None)
    assert (await api.get("/apis/example.com/v1"))[0] == 404
    assert (await api.get(f"{WIDGETS}/w"))[0] == 404
    emu.create("customresourcedefinitions", crd_manifest("example.com", "widgets", "Widget"))
    assert emu.list("widgets") == []


@pytest.mark.asyncio
async def test_events_are_stored_and_queryable(api, emu):
    event = {
        "metadata": {"generateName": "kopf-event-", "namespace": "default"},
        "type": "Normal",
        "reason": "Created",
        "message": "made it",
        "involvedObject": {"kind": "Widget", "name": "w1"},
    }
    status, body = await api.post("/api/v1/namespaces/default/events", event)
    assert status == 201
    assert body["metadata"]["name"].startswith("kopf-event-")
    await api.post("/api/v1/namespaces/default/events", {**event, "reason": "Other"})
    assert [e["reason"] for e in emu.events_for("w1")] == ["Created", "Other"]
    assert [e["message"] for e in emu.events_for(reason="Created")] == ["made it"]


@pytest.mark.asyncio
async def test_auto_created_namespaces():
    async with KubeEmulator(auto_create_namespaces=True) as emu:
        emu.create("configmaps", {"metadata": {"name": "c", "namespace": "fresh"}})
        assert emu.get("namespaces", "fresh")["status"]["phase"] == "Active"
