"""Merge, strategic and JSON patches, optimistic concurrency, and /status isolation."""

import pytest

from mljob.testing.patching import PatchError, json_patch, merge_patch

WIDGETS = "/apis/example.com/v1/namespaces/default/widgets"


def test_merge_patch_semantics():
    target = {"a": {"b": 1, "c": 2}, "l": [1, 2], "keep": True}
    patched = merge_patch(target, {"a": {"b": None, "d": 3}, "l": [3], "new": {"x": None}})
    assert patched == {"a": {"c": 2, "d": 3}, "l": [3], "keep": True, "new": {}}
    assert target == {"a": {"b": 1, "c": 2}, "l": [1, 2], "keep": True}  # never mutated


def test_json_patch_ops():
    doc = {"a": {"b": [1, 2]}, "c": 1}
    ops = [
        {"op": "add", "path": "/a/b/-", "value": 3},
        {"op": "add", "path": "/a/b/0", "value": 0},
        {"op": "replace", "path": "/c", "value": 2},
        {"op": "copy", "from": "/c", "path": "/d"},
        {"op": "move", "from": "/d", "path": "/e~1f"},
        {"op": "remove", "path": "/a/b/1"},
        {"op": "test", "path": "/e~1f", "value": 2},
    ]
    assert json_patch(doc, ops) == {"a": {"b": [0, 2, 3]}, "c": 2, "e/f": 2}
    assert doc == {"a": {"b": [1, 2]}, "c": 1}
    with pytest.raises(PatchError, match="test failed"):
        json_patch(doc, [{"op": "test", "path": "/c", "value": 5}])
    with pytest.raises(PatchError, match="path not found"):
        json_patch(doc, [{"op": "remove", "path": "/zzz"}])


@pytest.mark.asyncio
async def test_merge_and_strategic_patches(api, widget):
    await api.post(WIDGETS, widget)
    status, body = await api.merge(
        f"{WIDGETS}/w1", {"metadata": {"labels": {"app": None, "x": "y"}}, "spec": {"extra": [1]}}
    )
    assert status == 200
    assert body["metadata"]["labels"] == {"x": "y"}
    assert body["spec"] == {"size": 1, "extra": [1]}
    assert body["metadata"]["generation"] == 2
    status, body = await api.request(
        "PATCH", f"{WIDGETS}/w1", {"spec": {"size": 5}}, content_type="application/strategic-merge-patch+json"
    )
    assert status == 200
    assert body["spec"]["size"] == 5
    status, body = await api.merge(f"{WIDGETS}/missing", {"spec": {}})
    assert status == 404


@pytest.mark.asyncio
async def test_stale_resource_version_in_patch_conflicts(api, widget):
    _, created = await api.post(WIDGETS, widget)
    rv = created["metadata"]["resourceVersion"]
    status, _ = await api.merge(f"{WIDGETS}/w1", {"metadata": {"resourceVersion": rv}, "spec": {"size": 2}})
    assert status == 200
    status, body = await api.merge(f"{WIDGETS}/w1", {"metadata": {"resourceVersion": rv}, "spec": {"size": 3}})
    assert (status, body["reason"]) == (409, "Conflict")


@pytest.mark.asyncio
async def test_json_patch_with_test_op_as_kopf_uses_it(api, widget):
    _, created = await api.post(WIDGETS, widget)
    rv = created["metadata"]["resourceVersion"]
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "add", "path": "/metadata/finalizers", "value": ["kopf.zalando.org/KopfFinalizerMarker"]},
    ]
    status, body = await api.jsonpatch(f"{WIDGETS}/w1", ops)
    assert status == 200
    assert body["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
    status, body = await api.jsonpatch(f"{WIDGETS}/w1", ops)  # the rv is stale now
    assert (status, body["kind"], body["code"]) == (422, "Status", 422)
    status, _ = await api.jsonpatch(f"{WIDGETS}/w1", [{"op": "remove", "path": "/spec/nope"}])
    assert status == 422


@pytest.mark.asyncio
async def test_status_subresource_isolation(api, emu, widget):
    status, created = await api.post(WIDGETS, {**widget, "status": {"phase": "Ignored"}})
    assert "status" not in created  # create ignores .status when there is a status subresource
    _, body = await api.merge(f"{WIDGETS}/w1", {"spec": {"size": 2}, "status": {"phase": "Nope"}})
    assert "status" not in body
    _, body = await api.merge(
        f"{WIDGETS}/w1/status",
        {"spec": {"size": 9}, "status": {"phase": "Running"}, "metadata": {"labels": {"sneaky": "yes"}}},
    )
    assert body["status"] == {"phase": "Running"}
    assert body["spec"] == {"size": 2}
    assert "sneaky" not in body["metadata"]["labels"]
    assert body["metadata"]["generation"] == 2  # status writes never bump the generation
    status, body = await api.put(f"{WIDGETS}/w1/status", {**body, "status": {"phase": "Done"}})
    assert (status, body["status"]) == (200, {"phase": "Done"})
    status, body = await api.put(f"{WIDGETS}/w1", {**body, "status": {"phase": "Lost"}})
    assert body["status"] == {"phase": "Done"}
    status, body = await api.get(f"{WIDGETS}/w1/status")
    assert (status, body["status"]) == (200, {"phase": "Done"})
    # Without a status subresource, .status is an ordinary field.
    await api.post("/api/v1/namespaces/default/configmaps", {"metadata": {"name": "c"}})
    status, _ = await api.merge("/api/v1/namespaces/default/configmaps/c/status", {"status": {}})
    assert status == 404
    emu.store.register(emu.store.resolve("widgets"))  # re-registering changes nothing
    _, body = await api.get(f"{WIDGETS}/w1")
    assert body["status"] == {"phase": "Done"}
