"""The asynchronous API of ``TieredStore`` (futures and asyncio), a mixin split out of
store.py: each call runs the synchronous one on the store's worker threads
(``config.async_workers``), started at the first call."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from .errors import StoreClosedError
from .keys import BlockKey

KeyLike = BlockKey | bytes


class StoreAsync:
    """``put_async``/``get_async`` and ``aput``/``aget`` of ``TieredStore``."""

    def put_async(self, key: KeyLike, value: Any, *, ttl_s: float | None = None,
                  pin: bool = False) -> "Future[bool]":
        """``put`` on a worker thread. ``value`` must stay unchanged until the future is done."""
        return self._submit(self.put, key, value, ttl_s=ttl_s, pin=pin)

    def get_async(self, key: KeyLike) -> "Future[memoryview | None]":
        """``get`` on a worker thread."""
        return self._submit(self.get, key)

    async def aput(self, key: KeyLike, value: Any, *, ttl_s: float | None = None, pin: bool = False) -> bool:
        """asyncio form of ``put_async``."""
        return await asyncio.wrap_future(self.put_async(key, value, ttl_s=ttl_s, pin=pin))

    async def aget(self, key: KeyLike) -> memoryview | None:
        """asyncio form of ``get_async``."""
        return await asyncio.wrap_future(self.get_async(key))

    def _submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        with self._lock:
            self._check_open()
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.config.async_workers,
                                                    thread_name_prefix="kvtier-async")
            try:
                return self._executor.submit(fn, *args, **kwargs)
            except RuntimeError:  # shut down by a concurrent close()
                raise StoreClosedError("this TieredStore is closed; open a new one") from None
