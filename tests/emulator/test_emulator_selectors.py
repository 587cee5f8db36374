"""Label and field selectors, in isolation and through list requests."""

import pytest

from mljob.testing.selectors import SelectorError, parse_field_selector, parse_label_selector


def obj(labels, name="n", namespace="default", phase=None):
    body = {"metadata": {"name": name, "namespace": namespace, "labels": labels}}
    if phase:
        body["status"] = {"phase": phase}
    return body


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("a=b", {"a": "b"}, True),
        ("a==b", {"a": "c"}, False),
        ("a!=b", {}, True),
        ("a!=b", {"a": "b"}, False),
        ("a in (x, y)", {"a": "y"}, True),
        ("a in (x,y)", {"a": "z"}, False),
        ("a notin (x,y)", {}, True),
        ("a notin (x,y)", {"a": "x"}, False),
        ("a", {"a": ""}, True),
        ("a", {}, False),
        ("!a", {}, True),
        ("!a", {"a": "1"}, False),
        ("app=web,tier in (fe,be),!legacy", {"app": "web", "tier": "be"}, True),
        ("app=web,tier in (fe,be),!legacy", {"app": "web", "tier": "be", "legacy": "1"}, False),
        ("example.com/role=worker", {"example.com/role": "worker"}, True),
        ("n>3", {"n": "4"}, True),
        ("n<3", {"n": "x"}, False),
        ("", {"anything": "x"}, True),
    ],
)
def test_label_selector(selector, labels, expected):
    assert parse_label_selector(selector)(obj(labels)) is expected


def test_field_selector():
    match = parse_field_selector("metadata.name=a,metadata.namespace!=kube-system")
    assert match(obj({}, "a"))
    assert not match(obj({}, "b"))
    assert not match(obj({}, "a", "kube-system"))
    assert parse_field_selector("status.phase=Running")(obj({}, phase="Running"))
    with pytest.raises(SelectorError):
        parse_field_selector("metadata.name")
    with pytest.raises(SelectorError):
        parse_label_selector("a in b")


@pytest.mark.asyncio
async def test_list_with_selectors(api, emu):
    emu.store.create_namespace("other")
    for ns, name, labels in [
        ("default", "a", {"role": "worker", "idx": "0"}),
        ("default", "b", {"role": "master"}),
        ("other", "c", {"role": "worker"}),
    ]:
        emu.create("configmaps", {"metadata": {"name": name, "namespace": ns, "labels": labels}})

    async def names(path, **params):
        status, body = await api.get(path, **params)
        assert status == 200
        return [i["metadata"]["name"] for i in body["items"]]

    assert await names("/api/v1/configmaps", labelSelector="role=worker") == ["a", "c"]
    assert await names("/api/v1/namespaces/default/configmaps", labelSelector="role=worker") == ["a"]
    assert await names("/api/v1/configmaps", labelSelector="role in (master,ps)") == ["b"]
    assert await names("/api/v1/configmaps", labelSelector="!idx") == ["b", "c"]
    assert await names("/api/v1/configmaps", labelSelector="role!=worker") == ["b"]
    assert await names("/api/v1/configmaps", fieldSelector="metadata.namespace=other") == ["c"]
    assert await names("/api/v1/configmaps", fieldSelector="metadata.name=b", labelSelector="role") == ["b"]
    status, body = await api.get("/api/v1/configmaps", labelSelector="role in oops")
    assert (status, body["reason"]) == (400, "BadRequest")
    assert [c["metadata"]["name"] for c in emu.list("configmaps", label_selector="role=worker")] == ["a", "c"]
