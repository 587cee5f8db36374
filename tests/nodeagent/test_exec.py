"""kubectl exec and port-forward through the API server to the agent's kubelet API, and its authorization.

kubectl 1.37 speaks WebSocket to the API server, which speaks SPDY/3.1 to the kubelet endpoint; the agent relays
that to the kubelet-streaming helper (the kubelet's own streaming code). The 403/404 answers are asked of the
agent's kubelet API directly, with client certificates from the cluster's CA.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import os
import pty
import re
import select
import socket
import ssl
import struct
import subprocess
import termios
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from agentkit import TIMEOUT, AgentProcess, Env, start_agent

from controlplane import ControlPlane
from controlplane.waiting import until
from mljob.nodeagent.network import ClusterNetwork, missing_privileges, node_pod_cidr


def sh(script: str, name: str = "main", **extra):
    return {"name": name, "command": ["sh", "-c", script], **extra}


def kubectl(env: Env, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """kubectl as the admin, its exit status kept (exec's is the command's)."""
    return subprocess.run(
        [str(env.cp.bin / "kubectl"), f"--kubeconfig={env.cp.kubeconfig}", "-n", env.namespace, *args],
        input=stdin, capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip


def running(env: Env, name: str, *containers: dict, **spec) -> None:
    env.pod(name, *containers, **spec)
    env.phase(name, "Running")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_exec_stdout_stderr_and_the_exit_code(env):
    running(env, "box", sh("sleep 1000 & wait"))
    done = kubectl(env, "exec", "box", "--", "sh", "-c", "echo out; echo err >&2")
    assert (done.returncode, done.stdout, done.stderr) == (0, "out\n", "err\n")
    failed = kubectl(env, "exec", "box", "--", "sh", "-c", "echo partial; exit 3")
    assert (failed.returncode, failed.stdout) == (3, "partial\n")
    assert "command terminated with exit code 3" in failed.stderr
    killed = kubectl(env, "exec", "box", "--", "sh", "-c", "kill -9 $$")
    assert killed.returncode == 137  # 128 + SIGKILL, as a shell reports it
    missing = kubectl(env, "exec", "box", "--", "no-such-command")
    assert missing.returncode == 127
    assert "no-such-command" in missing.stderr


def test_exec_runs_in_the_containers_cgroups(env):
    """As runc's exec: what an exec'd command uses counts against the container's limits."""
    limited = sh("sleep 1000 & wait", resources={"limits": {"memory": "96Mi"}})
    running(env, "limited", limited)
    pod = env.read("limited")
    uid = pod["metadata"]["uid"]
    inside = kubectl(env, "exec", "limited", "--", "cat", "/proc/self/cgroup")
    memory = [line for line in inside.stdout.splitlines() if ":memory:" in line or line.startswith("0::")]
    assert memory, inside.stdout
    assert f"pod{uid}/main" in memory[0]
    # and it is held to the limit: allocating past it is an OOM kill of the exec'd command alone
    hog = kubectl(
        env, "exec", "limited", "--", "python", "-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"
    )
    assert hog.returncode == 137
    assert env.read("limited")["status"]["phase"] == "Running"


def test_exec_stdin(env):
    running(env, "box", sh("sleep 1000 & wait"))
    done = kubectl(env, "exec", "-i", "box", "--", "tr", "a-z", "A-Z", stdin="hello\nworld\n")
    assert (done.returncode, done.stdout) == (0, "HELLO\nWORLD\n"), done.stderr
    big = "x" * (4 * 2**20)  # megabytes through the relay both ways, past its flow control
    counted = kubectl(env, "exec", "-i", "box", "--", "wc", "-c", stdin=big)
    assert (counted.returncode, counted.stdout.strip()) == (0, str(len(big))), counted.stderr


def test_exec_is_inside_the_container_with_its_env_volume_and_working_dir(env):
    script = "echo written-by-the-container > /data/file; sleep 1000 & wait"
    running(
        env,
        "inside",
        sh(
            script,
            env=[{"name": "WHO", "value": "the container"}, {"name": "GREETING", "value": "hi from $(WHO)"}],
            volumeMounts=[{"name": "scratch", "mountPath": "/data"}],
            workingDir="/data",
        ),
        volumes=[{"name": "scratch", "emptyDir": {}}],
    )
    env.wait(
        "inside", lambda p: kubectl(env, "exec", "inside", "--", "test", "-s", "/data/file").returncode == 0, "file"
    )
    look = 'echo "$GREETING"; cat file; pwd; grep -q mljob-container /proc/1/cmdline && echo pid-1-is-the-shim'
    done = kubectl(env, "exec", "inside", "--", "sh", "-c", look)
    assert done.returncode == 0, done.stderr
    greeting, content, folder, init = done.stdout.splitlines()
    assert greeting == "hi from the container"  # the container's env, $(VAR) expanded as the agent did for it
    assert content == "written-by-the-container"  # the emptyDir, bound only in the container's mount namespace
    assert folder == "/data"  # its workingDir
    assert init == "pid-1-is-the-shim"  # in the container's PID namespace, whose PID 1 is the agent's shim
    assert not Path("/data/file").exists()  # the host's /data is the empty mount point


def read_until(fd: int, pattern: str, deadline: float) -> str:
    """What a pty's master gives until ``pattern`` is in it (or the deadline, or the other side is gone)."""
    out = b""
    while re.search(pattern, out.decode(errors="replace")) is None and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: kubectl exited
                break
            if not chunk:
                break
            out += chunk
    return out.decode(errors="replace")


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_exec_with_a_tty_follows_the_terminals_size(env):
    running(env, "term", sh("sleep 1000 & wait"))
    master, slave = pty.openpty()
    set_size(slave, 33, 101)
    # The first size comes with the exec; the shell then waits (polling, 20 s at most) for the next one.
    wait = 'for i in $(seq 400); do [ "$(stty size)" = "33 101" ] || break; sleep 0.05; done'
    script = f"tty; stty size; {wait}; stty size; exit 4"
    argv = [str(env.cp.bin / "kubectl"), f"--kubeconfig={env.cp.kubeconfig}", "-n", env.namespace]
    proc = subprocess.Popen(
        [*argv, "exec", "-it", "term", "--", "sh", "-c", script],
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )  # fmt: skip
    os.close(slave)
    try:
        deadline = time.monotonic() + TIMEOUT
        first = read_until(master, r"33 101", deadline)
        assert re.search(r"/dev/pts/\d+", first), first  # a terminal of its own
        set_size(master, 40, 120)  # kubectl gets SIGWINCH and sends the new size
        rest = read_until(master, r"40 120", deadline)
        assert "40 120" in rest, first + rest
        assert proc.wait(TIMEOUT) == 4
    finally:
        proc.kill()
        os.close(master)


@contextlib.contextmanager
def port_forward(env: Env, pod: str, port: int) -> Iterator[int]:
    """``kubectl port-forward pod/<pod> :<port>``; yields the local port it listens on."""
    argv = [str(env.cp.bin / "kubectl"), f"--kubeconfig={env.cp.kubeconfig}", "-n", env.namespace]
    proc = subprocess.Popen(
        [*argv, "port-forward", f"pod/{pod}", f":{port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"127\.0\.0\.1:(\d+) -> (\d+)", line)
        assert found, line + (proc.stderr.read() if proc.poll() is not None else "")
        assert int(found.group(2)) == port
        yield int(found.group(1))
    finally:
        proc.kill()
        proc.wait()


def get(url: str) -> str | None:
    """The body, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except (OSError, http.client.HTTPException):
        return None


def http_server(port: int, folder: Path) -> dict:
    command = ["python", "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    return {"name": "web", "command": command, "workingDir": str(folder)}


def listening(env: Env, pod: str, port: int) -> None:
    """Until the pod's server accepts connections (checked from inside, by exec): a forwarded connection that
    finds no listener ends ``kubectl port-forward`` itself ("lost connection to pod")."""
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5).close()"
    until(lambda: kubectl(env, "exec", pod, "--", "python", "-c", probe).returncode == 0, TIMEOUT, f"{pod} listening")


def test_port_forward_to_a_pods_http_server(env, tmp_path):
    port = free_port()
    (tmp_path / "index.html").write_text("served from the pod\n")
    running(env, "web", http_server(port, tmp_path))
    listening(env, "web", port)
    with port_forward(env, "web", port) as local:
        assert local != port
        for _ in range(2):  # two connections through one forward
            assert get(f"http://127.0.0.1:{local}/index.html") == "served from the pod\n"


# --- the kubelet API's own answers ------------------------------------------------------------------------------


def kubelet(env: Env, agent: AgentProcess, user: str, groups: tuple[str, ...] = ()) -> http.client.HTTPSConnection:
    """A connection to the agent's kubelet API as ``user`` (a client certificate from the cluster's CA)."""
    config = yaml.safe_load(env.cp.user_kubeconfig(user, groups).read_text())
    creds = config["users"][0]["user"]
    context = ssl.create_default_context(cafile=str(env.cp.ca))
    context.load_cert_chain(creds["client-certificate"], creds["client-key"])
    port = env.api.read_node(agent.node).status.daemon_endpoints.kubelet_endpoint.port
    return http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=TIMEOUT)


def ask(conn: http.client.HTTPSConnection, method: str, path: str) -> tuple[int, str]:
    conn.request(method, path)
    response = conn.getresponse()
    return response.status, response.read().decode()


def test_kubelet_api_authorizes_by_subject_access_review(env, agent):
    running(env, "box", sh("sleep 1000 & wait"), {"name": "quick", "command": ["true"]})
    env.wait("box", lambda p: any("terminated" in s["state"] for s in p["status"]["containerStatuses"]), "quick ends")
    exec_path = f"/exec/{env.namespace}/box/main?command=true&output=1"
    nobody = kubelet(env, agent, "nobody-in-particular")
    status, text = ask(nobody, "POST", exec_path)
    assert status == 403
    assert text == "Forbidden (user=nobody-in-particular, verb=create, resource=nodes, subresource(s)=[proxy])\n"
    status, text = ask(nobody, "GET", f"/portForward/{env.namespace}/box")
    assert (status, text) == (403, text.replace("verb=create", "verb=get"))
    status, _ = ask(nobody, "GET", f"/containerLogs/{env.namespace}/box/main")
    assert status == 403  # logs are nodes/proxy too (pkg/kubelet/server/auth.go maps only /logs to nodes/log)
    admin = kubelet(env, agent, "someone-trusted", ("system:masters",))
    assert ask(admin, "POST", f"/exec/{env.namespace}/absent/main?command=true&output=1") == (
        404,
        f'pod does not exist: no pod "absent" in namespace "{env.namespace}" on this node',
    )
    status, text = ask(admin, "POST", f"/exec/{env.namespace}/box/other?command=true&output=1")
    assert (status, text) == (404, 'container "other" is not in pod "box" (its containers: main, quick)')
    assert ask(admin, "POST", f"/exec/{env.namespace}/box/quick?command=true&output=1") == (
        500,
        'container not found ("quick")',  # the kubelet's answer for a container that is not running
    )
    status, text = ask(admin, "POST", exec_path)  # no upgrade asked for: the kubelet's streaming code says so
    assert status == 400
    assert "upgrade" in text.lower(), text
    status, text = ask(admin, "POST", f"/attach/{env.namespace}/box/main?output=1")
    assert status == 501
    assert "attach: not supported" in text
    assert ask(admin, "GET", f"/containerLogs/{env.namespace}/box/main")[0] == 200


def test_kubectl_exec_into_a_container_that_is_not_running(env):
    running(env, "half", sh("sleep 1000 & wait"), {"name": "quick", "command": ["true"]})
    env.wait("half", lambda p: any("terminated" in s["state"] for s in p["status"]["containerStatuses"]), "quick ends")
    done = kubectl(env, "exec", "half", "-c", "quick", "--", "true")
    assert done.returncode == 1
    assert 'container not found ("quick")' in done.stderr


# --- a pod with a network namespace of its own ------------------------------------------------------------------


@pytest.fixture(scope="module")
def netns_agent(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """A second agent whose pods each get a network namespace (a cluster namespace of this module's own)."""
    if missing_privileges() is not None:
        pytest.skip(str(missing_privileges()))
    net = ClusterNetwork(f"mljob-test-exec-{os.getpid()}")
    net.destroy()
    net.create()
    extra = ("--network=namespaced", f"--cluster-netns={net.name}", f"--pod-cidr={node_pod_cidr(7)}")
    process = start_agent(cluster, tmp_path_factory.mktemp("netns-agent"), "agent-exec-netns", *extra)
    yield process
    process.stop()
    net.destroy()


def test_port_forward_and_exec_in_a_pods_own_network_namespace(env, netns_agent, tmp_path):
    port = free_port()  # free on the host; the pod's server listens on its own 127.0.0.1
    (tmp_path / "index.html").write_text("served from the pod's namespace\n")
    env.pod("web", http_server(port, tmp_path), nodeName=netns_agent.node)
    pod = env.phase("web", "Running")
    ip = pod["status"]["podIP"]
    assert ip.startswith("10.244.")
    listening(env, "web", port)
    with port_forward(env, "web", port) as local:
        assert get(f"http://127.0.0.1:{local}/") == "served from the pod's namespace\n"
    assert get(f"http://127.0.0.1:{port}/") is None  # nothing listens there on the host
    done = kubectl(env, "exec", "web", "--", "sh", "-c", "hostname; grep web /etc/hosts")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "web"
    assert done.stdout.splitlines()[1].split()[0] == ip  # the pod's own /etc/hosts, in its mount namespace
