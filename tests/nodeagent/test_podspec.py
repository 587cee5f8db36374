"""A container as a host process: argv, env with the downward API, volume binds, and what cannot run."""

import re

import pytest

from mljob.nodeagent.podspec import ConfigError, Mount, NoCommand, PodContext, launch, unsupported

CTX = PodContext("10.244.0.7", "10.0.0.2", "node-a", "/state/pods/x/volumes", {"PATH": "/venv/bin:/usr/bin"})


def pod(container, volumes=()):
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "a"}},
        "spec": {"containers": [container], "volumes": list(volumes), "hostname": "h"},
    }


def test_argv_env_and_downward_api():
    c = {
        "name": "main",
        "command": ["python", "-c", "$(CODE)"],
        "args": ["$(POD)", "$$(POD)", "$(MISSING)"],
        "env": [
            {"name": "CODE", "value": "print(1)"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "WHERE", "value": "$(POD)@$(IP) on $(PATH)"},
        ],
        "workingDir": "/work",
    }
    got = launch(pod(c), c, CTX)
    assert got.argv == ("python", "-c", "print(1)", "p", "$(POD)", "$(MISSING)")
    assert got.env == {
        "PATH": "/venv/bin:/usr/bin",
        "HOSTNAME": "h",
        "CODE": "print(1)",
        "POD": "p",
        "IP": "10.244.0.7",
        "APP": "a",
        "WHERE": "p@10.244.0.7 on /venv/bin:/usr/bin",
    }
    assert got.working_dir == "/work"


def test_volumes_are_binds():
    c = {
        "name": "main",
        "command": ["true"],
        "volumeMounts": [
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "data", "mountPath": "/data", "readOnly": True, "subPath": "set1"},
            {"name": "kube-api-access-abcde", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
            {"name": "cfg", "mountPath": "/etc/app/app.conf", "subPath": "app.conf", "readOnly": False},
        ],
    }
    volumes = [
        {"name": "scratch", "emptyDir": {}},
        {"name": "data", "hostPath": {"path": "/srv/data"}},
        {"name": "kube-api-access-abcde", "projected": {"sources": []}},
        {"name": "cfg", "configMap": {"name": "app"}},
    ]
    got = launch(pod(c, volumes), c, CTX)
    assert got.mounts == (
        Mount("/state/pods/x/volumes/scratch", "/scratch"),
        Mount("/srv/data/set1", "/data", read_only=True),
        # API volumes: the worker's folder, read-only whatever the mount says, as the kubelet mounts them
        Mount("/state/pods/x/volumes/kube-api-access-abcde", "/var/run/secrets/kubernetes.io/serviceaccount", True),
        Mount("/state/pods/x/volumes/cfg/app.conf", "/etc/app/app.conf", read_only=True),
    )
    assert unsupported(pod(c, volumes)) == []


@pytest.mark.parametrize(
    ("container", "volumes", "message"),
    [
        ({"name": "c", "image": "busybox"}, [], "runs no images"),
        (
            {"name": "c", "command": ["x"], "envFrom": [{"secretRef": {"name": "s"}}]},
            [],
            'envFrom: secret "s" not found',
        ),
        (
            {"name": "c", "command": ["x"], "env": [{"name": "K", "valueFrom": {"configMapKeyRef": {"name": "m"}}}]},
            [],
            'env[0] K: configmap "m" not found',
        ),
        (
            {"name": "c", "command": ["x"], "env": [{"name": "K", "valueFrom": {"fieldRef": {"fieldPath": "spec.x"}}}]},
            [],
            "'spec.x' is not supported",
        ),
        (
            {"name": "c", "command": ["x"], "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]},
            [{"name": "cfg", "iscsi": {}}],
            "volume 'cfg' (iscsi) is not supported",
        ),
        (
            {"name": "c", "command": ["x"], "volumeMounts": [{"name": "v", "mountPath": "/v", "subPath": "../up"}]},
            [{"name": "v", "emptyDir": {}}],
            "must be a relative path inside the volume",
        ),
    ],
)
def test_what_cannot_run_says_why(container, volumes, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        launch(pod(container, volumes), container, CTX)


def test_no_command_is_a_start_error_not_a_config_wait():
    c = {"name": "c", "image": "busybox"}
    with pytest.raises(NoCommand):
        launch(pod(c), c, CTX)


def test_the_image_stand_in_stays_visible_under_a_volume_that_covers_it():
    """An emptyDir at /tmp must not hide the agent's environment when the checkout is under /tmp."""
    c = {"name": "c", "command": ["mljob"], "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
         "env": [{"name": "PATH", "value": "/tmp/co/.venv-mxnet/bin:/usr/bin"}]}  # fmt: skip
    ctx = PodContext(**{**CTX.__dict__, "image_roots": ("/tmp/co/.venv", "/opt/python", "/tmp/co")})
    got = launch(pod(c, [{"name": "tmp", "emptyDir": {}}]), c, ctx)
    assert got.mounts == (
        Mount("/state/pods/x/volumes/tmp", "/tmp"),
        Mount("/tmp/co/.venv", "/tmp/co/.venv", read_only=True),
        Mount("/tmp/co", "/tmp/co", read_only=True),
        Mount("/tmp/co/.venv-mxnet", "/tmp/co/.venv-mxnet", read_only=True),
    )
    uncovered = PodContext(**{**CTX.__dict__, "image_roots": ("/opt/python",)})
    assert launch(pod(c, [{"name": "tmp", "emptyDir": {}}]), c, uncovered).mounts == (
        Mount("/state/pods/x/volumes/tmp", "/tmp"),
        Mount("/tmp/co/.venv-mxnet", "/tmp/co/.venv-mxnet", read_only=True),
    )
