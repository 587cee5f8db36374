"""The emulator in a background thread, for sync tests and for tests whose loop is busy.

The store is single-threaded, so every call from the test's thread is marshalled onto the
emulator's own loop; nothing touches the state from two threads at once.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from mljob.testing.emulator import KubeEmulator
from mljob.testing.watch import Body

T = TypeVar("T")


class EmulatorThread:
    """Run a ``KubeEmulator`` on its own loop in a daemon thread: ``with EmulatorThread() as emu:``.

    Takes the same keyword arguments as ``KubeEmulator``. Its methods block the calling thread;
    from another event loop use ``await emu.acall(...)`` / ``await emu.await_for(...)``.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._emulator: KubeEmulator | None = None
        self._stopped: asyncio.Event | None = None

    def start(self) -> EmulatorThread:
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, args=(ready,), name="kube-emulator", daemon=True)
        self._thread.start()
        ready.result(timeout=30)
        return self

    def _main(self, ready: concurrent.futures.Future[None]) -> None:
        async def serve() -> None:
            try:
                self._loop = asyncio.get_running_loop()
                self._stopped = asyncio.Event()
                self._emulator = await KubeEmulator(**self._kwargs).start()
            except BaseException as e:
                ready.set_exception(e)
                raise
            ready.set_result(None)
            try:
                await self._stopped.wait()
            finally:
                await self._emulator.stop()

        asyncio.run(serve())

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(timeout=30)
            self._thread = None

    def __enter__(self) -> EmulatorThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def emulator(self) -> KubeEmulator:
        """The emulator itself: touch it only through ``call()``, or from its own loop."""
        if self._emulator is None:
            raise RuntimeError("the emulator thread is not started")
        return self._emulator

    @property
    def url(self) -> str:
        return self.emulator.url

    def kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        return self.emulator.kubeconfig(path, namespace)

    def _submit(self, coro_fn: Callable[[], Awaitable[T]]) -> concurrent.futures.Future[T]:
        if self._loop is None:
            raise RuntimeError("the emulator thread is not started")

        async def run() -> T:
            return await coro_fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a plain function on the emulator's loop, e.g. ``emu.call(lambda e: e.faults.clear())``."""

        async def run() -> T:
            return fn(*args, **kwargs)

        return self._submit(run).result()

    async def acall(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``call()`` for a test running its own event loop."""

        async def run() -> T:
            return fn(*args, **kwargs)

        return await asyncio.wrap_future(self._submit(run))

    def get(self, resource: str, name: str, namespace: str | None = "default") -> Body | None:
        return self.call(self.emulator.get, resource, name, namespace)

    def list(self, resource: str, namespace: str | None = None, **selectors: str | None) -> builtins.list[Body]:
        return self.call(self.emulator.list, resource, namespace, **selectors)

    def create(self, resource: str, body: Body, namespace: str | None = None) -> Body:
        return self.call(self.emulator.create, resource, body, namespace)

    def patch(self, resource: str, name: str, patch: Any, namespace: str | None = "default", **kwargs: Any) -> Body:
        return self.call(self.emulator.patch, resource, name, patch, namespace, **kwargs)

    def delete(self, resource: str, name: str, namespace: str | None = "default", **kwargs: Any) -> Body:
        return self.call(self.emulator.delete, resource, name, namespace, **kwargs)

    def wait_for(self, predicate: Callable[[KubeEmulator], Any], timeout: float = 5.0) -> Any:
        """Block until ``predicate(emulator)`` is truthy; it runs on the emulator's loop."""
        emulator = self.emulator
        return self._submit(lambda: emulator.wait_for(lambda: predicate(emulator), timeout)).result()

    async def await_for(self, predicate: Callable[[KubeEmulator], Any], timeout: float = 5.0) -> Any:
        emulator = self.emulator
        return await asyncio.wrap_future(self._submit(lambda: emulator.wait_for(lambda: predicate(emulator), timeout)))
