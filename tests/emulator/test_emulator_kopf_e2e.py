"""End to end: a real kopf operator, in a subprocess, against the emulator over HTTP."""

import asyncio
import contextlib
import os
import sys
import textwrap
import time

import pytest

from mljob.testing import KubeEmulator, crd_manifest

OPERATOR = textwrap.dedent("""
    import kopf
    import kubernetes

    @kopf.on.startup()
    def startup(settings: kopf.OperatorSettings, **_):
        kubernetes.config.load_kube_config()
        settings.networking.error_backoffs = [0.1, 0.2, 0.5, 1.0]

    @kopf.on.create("example.com", "v1", "widgets")
    def create_fn(body, name, namespace, patch, **_):
        child = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-child"},
                 "data": {"size": str(body["spec"]["size"])}}
        kopf.adopt(child)
        kubernetes.client.CoreV1Api().create_namespaced_config_map(namespace, child)
        patch.status["phase"] = "Ready"
        kopf.info(body, reason="ChildCreated", message=f"created {name}-child")

    @kopf.on.delete("example.com", "v1", "widgets")
    def delete_fn(**_):
        pass
""")


@pytest.mark.asyncio
async def test_kopf_operator_subprocess_against_the_emulator(tmp_path):
    (tmp_path / "operator.py").write_text(OPERATOR)
    log_path = tmp_path / "operator.log"
    async with KubeEmulator() as emu:
        emu.create("customresourcedefinitions", crd_manifest("example.com", "widgets", "Widget"))
        env = {**os.environ, "KUBECONFIG": str(emu.kubeconfig(tmp_path / "kubeconfig"))}
        # The operator must ride out a failing status patch (kopf retries server errors).
        emu.faults.fail_next("patch", resource="widgets.example.com/status", code=500)
        with open(log_path, "w") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "kopf",
                "run",
                "--standalone",
                "--namespace",
                "default",
                "--verbose",
                str(tmp_path / "operator.py"),
                env=env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        try:
            parent = emu.create("widgets", {"metadata": {"name": "w1"}, "spec": {"size": 3}})
            child = await emu.wait_for(lambda: emu.get("configmaps", "w1-child"), timeout=30)
            assert child["data"] == {"size": "3"}
            assert child["metadata"]["ownerReferences"][0]["uid"] == parent["metadata"]["uid"]
            await emu.wait_for(lambda: emu.get("widgets", "w1").get("status", {}).get("phase") == "Ready")
            await emu.wait_for(lambda: emu.events_for("w1", reason="ChildCreated"))
            assert emu.get("widgets", "w1")["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
            assert emu.stats.injected == 1

            # Once done, the operator must be quiet: no requests apart from its open watch streams.
            await asyncio.sleep(0.5)
            moment = time.monotonic()
            await asyncio.sleep(1.0)
            assert [r for r in emu.stats.since(moment) if r.verb not in ("watch", "discovery")] == []
            assert emu.open_watches >= 2  # the widgets and the backbone (CRDs, namespaces)

            # Cut streams (as a flaky network would): kopf reconnects from its last resourceVersion.
            assert emu.cut_watches() >= 2
            emu.create("widgets", {"metadata": {"name": "w2"}, "spec": {"size": 1}})
            await emu.wait_for(lambda: emu.get("configmaps", "w2-child"), timeout=10)

            emu.delete("widgets", "w1")
            await emu.wait_for(lambda: emu.get("widgets", "w1") is None, timeout=10)
            assert emu.get("configmaps", "w1-child") is None  # garbage-collected
        except BaseException:
            print(log_path.read_text())
            raise
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)
