"""What a pod reads through the agent as through a kubelet: ConfigMap, Secret, downward API and projected volumes
(the ServiceAccount's token among them), envFrom and valueFrom, the Services' variables; updates propagated, and
what is missing waited for with the kubelet's reasons and events."""

from __future__ import annotations

import base64
import json
import uuid

import kubernetes
from agentkit import status_of

from controlplane.waiting import until


def sh(script: str, name: str = "main", **extra):
    return {"name": name, "command": ["sh", "-c", script], **extra}


def configmap(env, name: str, data: dict[str, str]) -> None:
    env.api.create_namespaced_config_map(env.namespace, {"metadata": {"name": name}, "data": data})


def secret(env, name: str, data: dict[str, str]) -> None:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    env.api.create_namespaced_secret(env.namespace, {"metadata": {"name": name}, "data": encoded})


def events(env, pod: str) -> list[tuple[str, str]]:
    found = env.api.list_namespaced_event(env.namespace, field_selector=f"involvedObject.name={pod}").items
    return [(e.reason, e.message) for e in found]


def test_config_map_and_secret_as_files_and_env(env):
    configmap(env, "app", {"app.conf": "debug = true\n", "level": "3"})
    secret(env, "creds", {"user": "ml", "password": "s3cret"})
    volumes = [
        {"name": "cfg", "configMap": {"name": "app"}},
        {"name": "sec", "secret": {"secretName": "creds", "defaultMode": 0o400, "items": [{"key": "password",
                                                                                            "path": "db/pass"}]}},
    ]  # fmt: skip
    mounts = [{"name": "cfg", "mountPath": "/data"}, {"name": "sec", "mountPath": "/shared"}]
    script = (
        'echo "conf=$(cat /data/app.conf) level=$(cat /data/level) pass=$(cat /shared/db/pass)"; '
        "stat -c 'mode=%a' /shared/db/pass; "
        'echo "env level=$CFG_level user=$user PASS=$PASS"; '
        "touch /data/x 2>/dev/null && echo writable || echo read-only"
    )
    env.pod(
        "files",
        sh(
            script,
            volumeMounts=mounts,
            envFrom=[{"configMapRef": {"name": "app"}, "prefix": "CFG_"}, {"secretRef": {"name": "creds"}}],
            env=[{"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}],
        ),
        volumes=volumes,
    )
    env.phase("files", "Succeeded")
    assert env.kubectl("logs", "files").splitlines() == [
        "conf=debug = true level=3 pass=s3cret",
        "mode=400",
        "env level=3 user=ml PASS=s3cret",
        "read-only",
    ]


def test_a_config_map_update_reaches_the_running_container(env):
    configmap(env, "live", {"level": "3"})
    script = 'until [ "$(cat /data/level)" = 4 ]; do sleep 0.1; done; echo "saw $(cat /data/level)"'
    env.pod(
        "watcher",
        sh(script, volumeMounts=[{"name": "cfg", "mountPath": "/data"}]),
        volumes=[{"name": "cfg", "configMap": {"name": "live"}}],
    )
    env.phase("watcher", "Running")
    env.api.patch_namespaced_config_map("live", env.namespace, {"data": {"level": "4"}})
    env.phase("watcher", "Succeeded")  # the loop ends only on the new value: within a sync (1 s here)
    assert env.kubectl("logs", "watcher") == "saw 4\n"


def test_a_missing_config_map_holds_the_pod_until_it_appears(env):
    env.pod(
        "waits",
        sh("cat /data/level", volumeMounts=[{"name": "cfg", "mountPath": "/data"}]),
        volumes=[{"name": "cfg", "configMap": {"name": "later"}}],
    )
    until(lambda: any(r == "FailedMount" for r, _ in events(env, "waits")), 60, "a FailedMount event")
    failed = [m for r, m in events(env, "waits") if r == "FailedMount"]
    assert failed == ['MountVolume.SetUp failed for volume "cfg" : configmap "later" not found']
    pod = env.read("waits")
    assert pod["status"]["phase"] == "Pending"
    assert status_of(pod, "main")["state"]["waiting"]["reason"] == "ContainerCreating"
    configmap(env, "later", {"level": "7"})
    env.phase("waits", "Succeeded")
    assert env.kubectl("logs", "waits") == "7\n"


def test_a_missing_key_is_a_config_error_until_it_is_there(env):
    secret_ref = {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
    env.pod("secret", sh('echo "token=$TOKEN"', env=[secret_ref]))

    def waiting(p):
        return status_of(p, "main").get("state", {}).get("waiting", {})

    pod = env.wait("secret", lambda p: waiting(p).get("reason") == "CreateContainerConfigError", "a config error")
    assert waiting(pod)["message"] == "container 'main' env[0] TOKEN: secret \"s\" not found"
    assert pod["status"]["phase"] == "Pending"
    assert any(r == "Failed" and 'secret "s" not found' in m for r, m in events(env, "secret"))
    secret(env, "s", {"other": "x"})
    env.wait(
        "secret",
        lambda p: "couldn't find key k in Secret" in waiting(p).get("message", ""),
        "the message to follow the Secret",
    )
    env.api.patch_namespaced_secret("s", env.namespace, {"stringData": {"k": "v1"}})
    env.phase("secret", "Succeeded")
    assert env.kubectl("logs", "secret") == "token=v1\n"


def test_downward_api_volume_follows_label_changes(env):
    items = [
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
        {"path": "mem", "resourceFieldRef": {"containerName": "main", "resource": "limits.memory", "divisor": "1Mi"}},
    ]
    script = "cat /data/mem; echo; until grep -q 'stage=\"two\"' /data/labels; do sleep 0.1; done; cat /data/labels"
    body = sh(script, volumeMounts=[{"name": "info", "mountPath": "/data"}])
    body["resources"] = {"limits": {"memory": "96Mi"}}
    env.pod("downward", body, volumes=[{"name": "info", "downwardAPI": {"items": items}}])
    env.phase("downward", "Running")
    env.api.patch_namespaced_pod("downward", env.namespace, {"metadata": {"labels": {"stage": "two"}}})
    env.phase("downward", "Succeeded")
    assert env.kubectl("logs", "downward") == '96\nstage="two"\n'


def test_the_service_account_token_volume_works_against_the_api_server(env):
    """The volume ServiceAccount admission adds, as it writes it: a bound token the API server accepts."""
    env.cp.kubectl(
        "-n", env.namespace, "create", "role", "read-pods", "--verb=get", "--resource=pods"
    )  # fmt: skip
    env.cp.kubectl(
        "-n", env.namespace, "create", "rolebinding", "read-pods", "--role=read-pods",
        f"--serviceaccount={env.namespace}:default",
    )  # fmt: skip
    until(lambda: _has_sa(env), 60, "the default ServiceAccount")
    folder = "/var/run/secrets/kubernetes.io/serviceaccount"
    access = {
        "name": "kube-api-access-test",
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
            ],
        },
    }
    code = (
        "import json, os, ssl, urllib.request as u\n"
        f"d = '{folder}'\n"
        "ns = open(d + '/namespace').read()\n"
        "ctx = ssl.create_default_context(cafile=d + '/ca.crt')\n"
        "req = u.Request(os.environ['API'] + f'/api/v1/namespaces/{ns}/pods/' + os.environ['HOSTNAME'],\n"
        "                headers={'Authorization': 'Bearer ' + open(d + '/token').read()})\n"
        "print(json.load(u.urlopen(req, context=ctx))['metadata']['uid'])\n"
    )
    # On this agent (host network) the API server is the host's 127.0.0.1; the local cluster's pods reach it
    # at kubernetes.default.svc (test_services.py).
    container = {
        "name": "main",
        "command": ["python", "-c", code],
        "env": [{"name": "API", "value": env.cp.server}],
        "volumeMounts": [{"name": access["name"], "mountPath": folder, "readOnly": True}],
    }
    # Without ServiceAccount admission (this control plane's; the local cluster's has it) the name is set here.
    created = env.pod("insider", container, volumes=[access], serviceAccountName="default")
    env.phase("insider", "Succeeded")
    assert env.kubectl("logs", "insider").strip() == created["metadata"]["uid"]


def test_two_volumes_under_one_missing_folder_are_both_seen(env):
    """Kubeflow Trainer's progress token at /var/run/secrets/kubeflow/trainer beside the ServiceAccount's at
    /var/run/secrets/kubernetes.io/serviceaccount: each missing folder is made in an overlay, and the second overlay
    (of /var/run/secrets, made by the first) keeps the first volume on top (found by /run's resolved path)."""
    configmap(env, "two-a", {"a": "first"})
    configmap(env, "two-b", {"b": "second"})
    volumes = [{"name": "one", "configMap": {"name": "two-a"}}, {"name": "two", "configMap": {"name": "two-b"}}]
    mounts = [
        {"name": "one", "mountPath": "/var/run/secrets/kubeflow/trainer", "readOnly": True},
        {"name": "two", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True},
    ]
    script = "cat /var/run/secrets/kubeflow/trainer/a; echo; cat /var/run/secrets/kubernetes.io/serviceaccount/b"
    env.pod("nested", sh(script, volumeMounts=mounts), volumes=volumes)
    env.phase("nested", "Succeeded")
    assert env.kubectl("logs", "nested") == "first\nsecond\n"


def _has_sa(env) -> bool:
    try:
        env.api.read_namespaced_service_account("default", env.namespace)
        env.api.read_namespaced_config_map("kube-root-ca.crt", env.namespace)
    except Exception:
        return False
    return True


def test_the_token_is_bound_to_the_pod(env):
    until(lambda: _has_sa(env), 60, "the default ServiceAccount")
    token = {"name": "tok", "projected": {"sources": [{"serviceAccountToken": {"path": "t", "audience": "vault"}}]}}
    container = sh("cat /data/t; echo; sleep 1000 & wait", volumeMounts=[{"name": "tok", "mountPath": "/data"}])
    env.pod("holder", container, volumes=[token], serviceAccountName="default")
    env.phase("holder", "Running")
    jwt = until(lambda: env.kubectl("logs", "holder").strip(), 60, "the token in the log")
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
              "spec": {"token": jwt, "audiences": ["vault"]}}  # fmt: skip
    client = kubernetes.config.new_client_from_config(str(env.cp.kubeconfig))
    answer = kubernetes.client.AuthenticationV1Api(client).create_token_review(review, _preload_content=False)
    status = json.loads(answer.data)["status"]
    assert status["authenticated"] is True
    assert status["audiences"] == ["vault"]
    assert status["user"]["username"] == f"system:serviceaccount:{env.namespace}:default"
    assert status["user"]["extra"]["authentication.kubernetes.io/pod-name"] == ["holder"]


def test_service_variables_name_the_api_server(env):
    name = f"svc-{uuid.uuid4().hex[:6]}"
    service = {"metadata": {"name": name}, "spec": {"ports": [{"port": 8080, "name": "http"}]}}
    made = env.api.create_namespaced_service(env.namespace, service)
    prefix = name.upper().replace("-", "_")
    script = (
        f'echo "$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT ${prefix}_SERVICE_HOST:${prefix}_SERVICE_PORT_HTTP"'
    )
    env.pod("vars", sh(script))
    env.phase("vars", "Succeeded")
    assert env.kubectl("logs", "vars") == f"10.0.0.1:443 {made.spec.cluster_ip}:8080\n"
