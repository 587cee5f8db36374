"""CRUD, server-assigned metadata, and the API's error answers."""

import asyncio

import pytest

WIDGETS = "/apis/example.com/v1/namespaces/default/widgets"

pytestmark = pytest.mark.asyncio


async def test_discovery_serves_kopf_backbone_and_crds(api):
    status, core = await api.get("/api/v1")
    assert status == 200
    names = {r["name"] for r in core["resources"]}
    assert {"namespaces", "pods", "pods/status", "services", "events", "configmaps"} <= names
    _, apis = await api.get("/apis")
    groups = {g["name"]: g for g in apis["groups"]}
    assert groups["apiextensions.k8s.io"]["preferredVersion"]["version"] == "v1"
    assert "example.com" in groups
    assert "coordination.k8s.io" in groups
    _, group = await api.get("/apis/example.com")
    assert group["versions"] == [{"groupVersion": "example.com/v1", "version": "v1"}]
    _, crs = await api.get("/apis/example.com/v1")
    assert {r["name"] for r in crs["resources"]} == {"widgets", "widgets/status"}
    assert crs["resources"][0]["namespaced"] is True
    status, _ = await api.get("/apis/nope.example.com/v1")
    assert status == 404


async def test_crd_posted_over_http_becomes_servable(api):
    from mljob.testing import crd_manifest

    crd = crd_manifest("demo.io", "gadgets", "Gadget", namespaced=False, status=False)
    status, body = await api.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    assert status == 201
    assert {c["type"] for c in body["status"]["conditions"]} == {"Established", "NamesAccepted"}
    _, doc = await api.get("/apis/demo.io/v1")
    assert doc["resources"] == [{**doc["resources"][0], "name": "gadgets", "namespaced": False}]
    status, gadget = await api.post("/apis/demo.io/v1/gadgets", {"metadata": {"name": "g"}})
    assert status == 201
    assert "namespace" not in gadget["metadata"]
    bad = crd_manifest("demo.io", "things", "Thing")
    bad["metadata"]["name"] = "wrong"
    status, body = await api.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", bad)
    assert (status, body["reason"]) == (422, "Invalid")


async def test_create_assigns_metadata_and_returns_201(api, emu, widget):
    status, body = await api.post(WIDGETS, widget)
    assert status == 201
    md = body["metadata"]
    assert md["namespace"] == "default"
    assert md["generation"] == 1
    assert md["uid"]
    assert md["creationTimestamp"].endswith("Z")
    assert int(md["resourceVersion"]) == emu.store.rv
    _, again = await api.get(f"{WIDGETS}/w1")
    assert again == body
    _, other = await api.post(WIDGETS, {**widget, "metadata": {"name": "w2"}})
    assert int(other["metadata"]["resourceVersion"]) > int(md["resourceVersion"])
    assert other["metadata"]["uid"] != md["uid"]


async def test_create_errors(api, widget):
    assert (await api.post(WIDGETS, widget))[0] == 201
    status, body = await api.post(WIDGETS, widget)
    assert (status, body["kind"], body["status"], body["reason"], body["code"]) == (
        409,
        "Status",
        "Failure",
        "AlreadyExists",
        409,
    )
    status, body = await api.post(WIDGETS, {"spec": {}})
    assert (status, body["reason"]) == (422, "Invalid")
    status, body = await api.post(WIDGETS, {"metadata": {"name": "Bad_Name"}})
    assert (status, body["reason"]) == (422, "Invalid")
    status, body = await api.post(WIDGETS, {"metadata": {"name": "x", "labels": {"a": "v" * 64}}})
    assert status == 422
    status, body = await api.get(f"{WIDGETS}/missing")
    assert (status, body["reason"], body["message"]) == (404, "NotFound", 'widgets.example.com "missing" not found')
    status, body = await api.post("/api/v1/namespaces/nowhere/configmaps", {"metadata": {"name": "c"}})
    assert (status, body["reason"]) == (404, "NotFound")
    status, body = await api.post("/api/v1/configmaps", {"metadata": {"name": "c"}})
    assert status == 405
    status, body = await api.post(
        "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "c", "namespace": "other"}}
    )
    assert status == 400
    status, _ = await api.request("PATCH", f"{WIDGETS}/w1", {}, content_type="application/apply-patch+yaml")
    assert status == 415


async def test_generate_name(api):
    status, body = await api.post("/api/v1/namespaces/default/configmaps", {"metadata": {"generateName": "cm-"}})
    assert status == 201
    assert body["metadata"]["name"].startswith("cm-")
    assert len(body["metadata"]["name"]) == 8


async def test_list_namespaced_and_across_namespaces(api, emu):
    emu.store.create_namespace("other")
    for ns, name in [("default", "b"), ("default", "a"), ("other", "c")]:
        assert (await api.post(f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": name}}))[0] == 201
    _, listed = await api.get("/api/v1/namespaces/default/configmaps")
    assert listed["kind"] == "ConfigMapList"
    assert listed["apiVersion"] == "v1"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["a", "b"]
    assert listed["metadata"]["resourceVersion"] == str(emu.store.rv)
    _, everywhere = await api.get("/api/v1/configmaps")
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in everywhere["items"]] == [
        ("default", "a"),
        ("default", "b"),
        ("other", "c"),
    ]
    _, page1 = await api.get("/api/v1/configmaps", limit=2)
    assert len(page1["items"]) == 2
    assert page1["metadata"]["continue"]
    _, page2 = await api.get("/api/v1/configmaps", limit=2, **{"continue": page1["metadata"]["continue"]})
    assert [i["metadata"]["name"] for i in page2["items"]] == ["c"]
    assert "continue" not in page2["metadata"]
    _, namespaces = await api.get("/api/v1/namespaces")
    assert {"default", "kube-system", "other"} <= {n["metadata"]["name"] for n in namespaces["items"]}


async def test_put_replaces_with_optimistic_concurrency(api, widget):
    _, created = await api.post(WIDGETS, widget)
    stale = created["metadata"]["resourceVersion"]
    status, updated = await api.put(f"{WIDGETS}/w1", {**created, "spec": {"size": 2}})
    assert status == 200
    assert updated["metadata"]["generation"] == 2
    assert updated["metadata"]["uid"] == created["metadata"]["uid"]
    status, body = await api.put(f"{WIDGETS}/w1", {**created, "spec": {"size": 3}})
    assert (status, body["reason"]) == (409, "Conflict")
    unconditional = {**created, "metadata": {"name": "w1", "labels": {"app": "b"}}, "spec": {"size": 2}}
    status, body = await api.put(f"{WIDGETS}/w1", unconditional)
    assert status == 200
    assert body["metadata"]["labels"] == {"app": "b"}
    assert body["metadata"]["generation"] == 2  # a metadata-only change keeps the generation
    assert int(body["metadata"]["resourceVersion"]) > int(stale)
    status, _ = await api.put(f"{WIDGETS}/other", {**created, "metadata": {"name": "w1"}})
    assert status == 400
    status, _ = await api.put(f"{WIDGETS}/missing", {"metadata": {"name": "missing"}})
    assert status == 404


async def test_noop_write_keeps_resource_version(api, widget):
    _, created = await api.post(WIDGETS, widget)
    status, same = await api.merge(f"{WIDGETS}/w1", {"spec": {"size": 1}})
    assert status == 200
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


async def test_python_api_matches_http(emu, api):
    created = emu.create("configmaps", {"metadata": {"name": "direct"}, "data": {"k": "v"}})
    _, fetched = await api.get("/api/v1/namespaces/default/configmaps/direct")
    assert fetched == created
    created["data"]["k"] = "mutated"  # callers get copies; the store is not affected
    assert emu.get("configmaps", "direct")["data"] == {"k": "v"}
    assert emu.get("cm", "direct") is not None
    assert emu.get("ConfigMap", "direct") is not None
    assert emu.get("configmaps", "absent") is None
    emu.patch("configmaps", "direct", {"data": {"k": None, "n": "1"}})
    assert emu.get("configmaps", "direct")["data"] == {"n": "1"}
    assert [c["metadata"]["name"] for c in emu.list("configmaps", "default")] == ["direct"]


async def test_wait_for_times_out_and_wakes_on_writes(emu):
    with pytest.raises(TimeoutError):
        await emu.wait_for(lambda: emu.get("configmaps", "never"), timeout=0.05)

    async def later():
        await asyncio.sleep(0.05)
        emu.create("configmaps", {"metadata": {"name": "soon"}})

    task = asyncio.create_task(later())
    found = await emu.wait_for(lambda: emu.get("configmaps", "soon"), timeout=2)
    assert found["metadata"]["name"] == "soon"
    await task
