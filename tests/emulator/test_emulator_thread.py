"""The emulator in a background thread, driven by the official (synchronous) kubernetes client."""

import kubernetes
import pytest

from mljob.testing import EmulatorThread, crd_manifest


@pytest.fixture
def threaded():
    with EmulatorThread() as emu:
        yield emu


@pytest.fixture
def client(threaded, tmp_path):
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(str(threaded.kubeconfig(tmp_path / "kubeconfig")), client_configuration=config)
    with kubernetes.client.ApiClient(config) as api_client:
        yield api_client


def test_official_client_crud_watch_and_errors(threaded, client):
    core = kubernetes.client.CoreV1Api(client)
    created = core.create_namespaced_config_map(
        "default", {"metadata": {"name": "c", "labels": {"a": "b"}}, "data": {"k": "v"}}
    )
    assert created.metadata.uid
    assert threaded.get("configmaps", "c")["data"] == {"k": "v"}
    listed = core.list_namespaced_config_map("default", label_selector="a=b")
    assert [c.metadata.name for c in listed.items] == ["c"]
    with pytest.raises(kubernetes.client.ApiException) as err:
        core.create_namespaced_config_map("default", {"metadata": {"name": "c"}})
    assert err.value.status == 409
    core.patch_namespaced_config_map("c", "default", {"data": {"k": "w"}})
    threaded.patch("configmaps", "c", {"data": {"z": "1"}})
    events = kubernetes.watch.Watch().stream(
        core.list_namespaced_config_map, "default", resource_version=listed.metadata.resource_version, timeout_seconds=1
    )
    seen = [(e["type"], e["object"].data) for e in events]
    assert seen == [("MODIFIED", {"k": "w"}), ("MODIFIED", {"k": "w", "z": "1"})]
    core.delete_namespaced_config_map("c", "default")
    assert threaded.get("configmaps", "c") is None


def test_custom_objects_and_status_through_the_client(threaded, client):
    threaded.create("customresourcedefinitions", crd_manifest("example.com", "widgets", "Widget"))
    custom = kubernetes.client.CustomObjectsApi(client)
    custom.create_namespaced_custom_object(
        "example.com",
        "v1",
        "default",
        "widgets",
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"n": 1}},
    )
    custom.patch_namespaced_custom_object_status(
        "example.com", "v1", "default", "widgets", "w", {"status": {"phase": "Ready"}}
    )
    got = custom.get_namespaced_custom_object("example.com", "v1", "default", "widgets", "w")
    assert got["status"] == {"phase": "Ready"}
    assert threaded.wait_for(lambda e: e.get("widgets", "w")["status"]["phase"] == "Ready", timeout=1)
    threaded.call(lambda: threaded.emulator.faults.fail_next("get", code=500))
    with pytest.raises(kubernetes.client.ApiException) as err:
        custom.get_namespaced_custom_object("example.com", "v1", "default", "widgets", "w")
    assert err.value.status == 500
