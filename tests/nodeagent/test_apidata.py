"""What a pod reads from the API through its kubelet, as files and env: the kubelet's rules, without a server."""

import base64
import os

import pytest

from mljob.nodeagent import atomicwriter
from mljob.nodeagent.apidata import (
    File,
    References,
    SourceError,
    Sources,
    TokenKey,
    format_map,
    references,
    resource_value,
    service_env,
    volume_files,
)
from mljob.nodeagent.podspec import ConfigError, PodContext, launch


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


CONFIG = {"data": {"app.conf": "debug = true\n", "level": "3"}, "binaryData": {"blob": b64("\x00\x01")}}
SECRET = {"data": {"password": b64("s3cret"), "user": b64("ml")}}
SOURCES = Sources(
    config_maps={"app": CONFIG, "gone": None},
    secrets={"creds": SECRET},
    tokens={TokenKey("trainer", "", 3607): "tok-default", TokenKey("trainer", "vault", 600): "tok-vault"},
    allocatable={"cpu": "8", "memory": "16Gi"},
)


def pod(volumes=(), containers=None, **spec):
    return {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "u-1",
            "labels": {"app": "train", "tier": 'a"b'},
            "annotations": {"note": "x\ny"},
        },
        "spec": {
            "serviceAccountName": "trainer",
            "containers": containers or [{"name": "main", "command": ["true"]}],
            "volumes": list(volumes),
            **spec,
        },
    }


def test_references_name_what_volumes_and_env_read():
    p = pod(
        volumes=[
            {"name": "a", "configMap": {"name": "app"}},
            {"name": "b", "secret": {"secretName": "creds"}},
            {
                "name": "kube-api-access-x",
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt"}},
                        {"secret": {"name": "tls"}},
                    ]
                },
            },
        ],
        containers=[
            {
                "name": "main",
                "envFrom": [{"configMapRef": {"name": "env-a"}}, {"secretRef": {"name": "env-b"}}],
                "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "env-c", "key": "k"}}}],
            }
        ],
    )
    volumes, env = references(p)
    assert volumes == References(
        frozenset({"app", "kube-root-ca.crt"}), frozenset({"creds", "tls"}), frozenset({TokenKey("trainer", "", 3607)})
    )
    assert env == References(frozenset({"env-a"}), frozenset({"env-b", "env-c"}))


def test_config_map_and_secret_volumes_every_key_or_the_items():
    every = volume_files(pod(), {"name": "v", "configMap": {"name": "app"}}, SOURCES)
    assert every == {
        "app.conf": File(b"debug = true\n", 0o644),
        "level": File(b"3", 0o644),
        "blob": File(b"\x00\x01", 0o644),
    }
    items = {
        "name": "v",
        "secret": {
            "secretName": "creds",
            "defaultMode": 0o400,
            "items": [{"key": "password", "path": "db/pass"}, {"key": "user", "path": "user", "mode": 0o440}],
        },
    }
    assert volume_files(pod(), items, SOURCES) == {"db/pass": File(b"s3cret", 0o400), "user": File(b"ml", 0o440)}


@pytest.mark.parametrize(
    ("volume", "message"),
    [
        ({"configMap": {"name": "gone"}}, 'configmap "gone" not found'),
        ({"configMap": {"name": "never-fetched"}}, 'configmap "never-fetched" not found'),
        ({"secret": {"secretName": "nope"}}, 'secret "nope" not found'),
        ({"configMap": {"name": "app", "items": [{"key": "nokey", "path": "x"}]}}, "non-existent config key: nokey"),
        ({"configMap": {"name": "app", "items": [{"key": "level", "path": "../x"}]}}, "relative path inside"),
    ],
)
def test_what_a_volume_cannot_have(volume, message):
    with pytest.raises(SourceError, match=message):
        volume_files(pod(), {"name": "v", **volume}, SOURCES)


def test_optional_missing_objects_and_keys_are_no_files():
    assert volume_files(pod(), {"name": "v", "configMap": {"name": "gone", "optional": True}}, SOURCES) == {}
    optional_key = {
        "name": "app",
        "optional": True,
        "items": [{"key": "nokey", "path": "x"}, {"key": "level", "path": "l"}],
    }
    assert volume_files(pod(), {"name": "v", "configMap": optional_key}, SOURCES) == {"l": File(b"3", 0o644)}


def test_the_service_account_volume_as_admission_writes_it():
    volume = {
        "name": "kube-api-access-x",
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "app", "items": [{"key": "level", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
            ],
        },
    }
    assert volume_files(pod(), volume, SOURCES) == {
        "token": File(b"tok-default", 0o644),
        "ca.crt": File(b"3", 0o644),
        "namespace": File(b"ns", 0o644),
    }
    audience = {
        "name": "v",
        "projected": {
            "sources": [{"serviceAccountToken": {"audience": "vault", "expirationSeconds": 600, "path": "vault/token"}}]
        },
    }
    assert volume_files(pod(), audience, SOURCES) == {"vault/token": File(b"tok-vault", 0o644)}


def test_downward_api_volume_formats_maps_and_resources():
    containers = [{"name": "main", "resources": {"limits": {"memory": "1Gi"}, "requests": {"cpu": "250m"}}}]
    volume = {
        "name": "info",
        "downwardAPI": {
            "items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
                {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                {
                    "path": "mem_mi",
                    "resourceFieldRef": {"containerName": "main", "resource": "limits.memory", "divisor": "1Mi"},
                },
                {
                    "path": "cpu_m",
                    "resourceFieldRef": {"containerName": "main", "resource": "requests.cpu", "divisor": "1m"},
                },
                {"path": "cpu_limit", "resourceFieldRef": {"containerName": "main", "resource": "limits.cpu"}},
            ]
        },
    }
    files = volume_files(pod(containers=containers), volume, SOURCES)
    assert files["labels"].data == b'app="train"\ntier="a\\"b"'
    assert files["annotations"].data == b'note="x\\ny"'
    assert files["name"].data == b"p"
    assert files["mem_mi"].data == b"1024"
    assert files["cpu_m"].data == b"250"
    assert files["cpu_limit"].data == b"8"  # no limit: the Node's allocatable


@pytest.mark.parametrize(
    ("resources", "field", "divisor", "want"),
    [
        ({"limits": {"cpu": "250m"}}, "limits.cpu", None, "1"),  # ceil: a quarter CPU reads as 1
        ({"limits": {"cpu": "1500m"}}, "limits.cpu", "1m", "1500"),
        ({"requests": {"memory": "100M"}}, "requests.memory", "1Mi", "96"),
        ({}, "requests.cpu", None, "0"),
        ({}, "limits.memory", "1Gi", "16"),
    ],
)
def test_resource_fields_are_ceil_of_value_over_divisor(resources, field, divisor, want):
    assert resource_value({"resources": resources}, field, divisor, SOURCES.allocatable) == want


def test_format_map_is_sorted_and_go_quoted():
    assert format_map({"b": "2", "a": 'q"\\'}) == 'a="q\\"\\\\"\nb="2"'


SERVICES = [
    {
        "metadata": {"name": "kubernetes", "namespace": "default"},
        "spec": {"clusterIP": "10.0.0.1", "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]},
    },
    {
        "metadata": {"name": "redis-primary", "namespace": "ns"},
        "spec": {"clusterIP": "10.0.0.11", "ports": [{"port": 6379}]},
    },
    {"metadata": {"name": "headless", "namespace": "ns"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}},
    {"metadata": {"name": "other", "namespace": "elsewhere"}, "spec": {"clusterIP": "10.0.0.12"}},
]


def test_service_env_as_the_kubelet_sets_it():
    env = service_env(pod(), SERVICES)
    assert env == {
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "KUBERNETES_SERVICE_PORT_HTTPS": "443",
        "KUBERNETES_PORT": "tcp://10.0.0.1:443",
        "KUBERNETES_PORT_443_TCP": "tcp://10.0.0.1:443",
        "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
        "KUBERNETES_PORT_443_TCP_PORT": "443",
        "KUBERNETES_PORT_443_TCP_ADDR": "10.0.0.1",
        "REDIS_PRIMARY_SERVICE_HOST": "10.0.0.11",
        "REDIS_PRIMARY_SERVICE_PORT": "6379",
        "REDIS_PRIMARY_PORT": "tcp://10.0.0.11:6379",
        "REDIS_PRIMARY_PORT_6379_TCP": "tcp://10.0.0.11:6379",
        "REDIS_PRIMARY_PORT_6379_TCP_PROTO": "tcp",
        "REDIS_PRIMARY_PORT_6379_TCP_PORT": "6379",
        "REDIS_PRIMARY_PORT_6379_TCP_ADDR": "10.0.0.11",
    }
    without_links = service_env(pod(enableServiceLinks=False), SERVICES)
    assert set(without_links) == {k for k in env if k.startswith("KUBERNETES_")}


CTX = PodContext("10.244.0.7", "10.0.0.2", "node-a", "/v", {"PATH": "/bin"})


def test_container_env_in_kubelet_order():
    container = {
        "name": "main",
        "command": ["echo", "$(GREETING)", "$(REDIS_PRIMARY_SERVICE_HOST)"],
        "envFrom": [{"configMapRef": {"name": "app"}, "prefix": "CFG_"}, {"secretRef": {"name": "creds"}}],
        "env": [
            {"name": "user", "value": "overridden"},
            {"name": "GREETING", "value": "hi $(user) at $(KUBERNETES_SERVICE_HOST)"},
            {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            {"name": "MAYBE", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "x", "optional": True}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "KUBERNETES_SERVICE_HOST", "value": "mine"},
        ],
        "resources": {"limits": {"memory": "64Mi"}},
    }
    ctx = PodContext(**{**CTX.__dict__, "sources": Sources(**{**SOURCES.__dict__, "services": SERVICES})})
    got = launch(pod(containers=[container]), container, ctx)
    assert got.argv == ("echo", "hi overridden at 10.0.0.1", "10.0.0.11")
    assert got.env["CFG_level"] == "3"
    assert got.env["CFG_app.conf"] == "debug = true\n"
    assert got.env["password"] == "s3cret"
    assert got.env["PASS"] == "s3cret"
    assert got.env["user"] == "overridden"
    assert "MAYBE" not in got.env
    assert got.env["MEM"] == "64"
    assert got.env["KUBERNETES_SERVICE_HOST"] == "mine"  # the container's own env wins over the Services'
    assert got.env["KUBERNETES_SERVICE_PORT"] == "443"


def test_a_missing_key_names_the_variable():
    container = {
        "name": "main",
        "command": ["true"],
        "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "app", "key": "nope"}}}],
    }
    with pytest.raises(ConfigError, match=r"container 'main' env\[0\] X: couldn't find key nope in ConfigMap ns/app"):
        launch(pod(containers=[container]), container, PodContext(**{**CTX.__dict__, "sources": SOURCES}))


def test_atomic_writer_swaps_versions_and_drops_removed_keys(tmp_path):
    folder = tmp_path / "vol"
    assert atomicwriter.write(folder, {"a": File(b"1", 0o644), "dir/b": File(b"2", 0o600)})
    assert (folder / "a").read_bytes() == b"1"
    assert (folder / "dir" / "b").read_bytes() == b"2"
    assert os.readlink(folder / "a") == "..data/a"
    assert (folder / "dir" / "b").stat().st_mode & 0o777 == 0o600
    first = os.readlink(folder / "..data")
    assert not atomicwriter.write(folder, {"a": File(b"1", 0o644), "dir/b": File(b"2", 0o600)})  # unchanged
    assert atomicwriter.write(folder, {"a": File(b"one", 0o644)})
    assert (folder / "a").read_bytes() == b"one"
    assert not (folder / "dir").exists()
    assert not (folder / first).exists()  # the old version is gone
    assert sorted(p.name for p in folder.iterdir()) == sorted(["..data", os.readlink(folder / "..data"), "a"])
