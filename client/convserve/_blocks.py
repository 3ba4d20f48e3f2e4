"""The caller's block iterator of one ``convolve_stream`` call, shared by its attempts.

A refused stream may be started again only if no block of the caller's ever went to gRPC: a block
handed to gRPC may have reached the server, and sending it again would compute it twice. So the
blocks are taken from the caller's iterator here, one at a time, and handed to whichever attempt
is current. A block taken while its attempt was failing is kept for the next attempt, never dropped,
and every attempt reads the same iterator (a list is not restarted from its first element).
gRPC pulls requests from a thread (sync) or a task (asyncio) of its own, so an attempt that failed
may still be waiting inside the caller's iterator when the next one starts: pulls are serialized,
and in asyncio a pull runs in a task of its own, so cancelling gRPC's task never cancels the
caller's async generator.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any, Callable

_NOTHING: Any = object()  # no block taken and not yet handed
_END: Any = object()  # the caller's iterator is exhausted


class _Raised:
    """An exception raised by the caller's iterator, kept for the attempt that takes it."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Attempt:
    """One attempt of a stream call: stale once the client has given up on it."""

    def __init__(self) -> None:
        self.stale = False
        self.call: Any = None  # the gRPC call object, once started

    def done(self) -> bool:
        """Whether a block handed now could be lost (the attempt failed or its call ended)."""
        return self.stale or (self.call is not None and self.call.done())


class _Shared:
    """What the sync and asyncio variants share: the pending block and whether one was handed."""

    def __init__(self) -> None:
        self._pending: Any = _NOTHING
        self.handed = False
        self._state = threading.Lock()

    def give_up(self, attempt: Attempt) -> bool:
        """Mark ``attempt`` stale; return whether a fresh attempt may resend the stream (no block handed)."""
        with self._state:
            attempt.stale = True
            return not self.handed

    def _hand(self, attempt: Attempt) -> Any:
        """The pending item for ``attempt`` (``_NOTHING`` if the attempt is stale; the block stays pending)."""
        with self._state:
            if attempt.done():
                return _NOTHING
            item = self._pending
            if item is _END or isinstance(item, _Raised):
                return item
            self._pending = _NOTHING
            self.handed = True
            return item


class Blocks(_Shared):
    """A caller's iterable of blocks for the blocking client."""

    def __init__(self, blocks: Iterable[Any]) -> None:
        super().__init__()
        self._iterator = iter(blocks)
        self._pull = threading.Lock()

    def requests(self, first: Any, attempt: Attempt, encode: Callable[[Any], Any]) -> Iterator[Any]:
        """The request messages of ``attempt``: ``first``, then the blocks, encoded."""
        yield first
        while True:
            with self._pull:
                if self._pending is _NOTHING:
                    try:
                        item: Any = next(self._iterator)
                    except StopIteration:
                        item = _END
                    except Exception as error:  # the caller's own failure: it cancels the attempt that takes it
                        item = _Raised(error)
                    self._pending = item
                item = self._hand(attempt)
            if item is _NOTHING or item is _END:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield encode(item)


class AsyncBlocks(_Shared):
    """A caller's iterable or async iterable of blocks for the asyncio client."""

    def __init__(self, blocks: AsyncIterable[Any] | Iterable[Any]) -> None:
        super().__init__()
        self._async: AsyncIterator[Any] | None = None
        self._iterator: Iterator[Any] | None = None
        if isinstance(blocks, AsyncIterable):
            self._async = aiter(blocks)
        else:
            self._iterator = iter(blocks)
        self._pull = asyncio.Lock()
        self._task: asyncio.Future[Any] | None = None

    async def _next(self) -> Any:
        if self._iterator is not None:
            try:
                return next(self._iterator)
            except StopIteration:
                return _END
        assert self._async is not None
        if self._task is None:  # its own task: a cancelled gRPC poller must not cancel the caller's generator
            self._task = asyncio.ensure_future(anext(self._async))
        task = self._task
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                raise  # this poller was cancelled; the pull goes on for the next attempt
        except BaseException:  # noqa: B036 - the task's own outcome, read below
            pass
        self._task = None
        try:
            return task.result()
        except StopAsyncIteration:
            return _END

    async def requests(self, first: Any, attempt: Attempt, encode: Callable[[Any], Any]) -> AsyncIterator[Any]:
        """The request messages of ``attempt``: ``first``, then the blocks, encoded."""
        yield first
        while True:
            async with self._pull:
                if self._pending is _NOTHING:
                    try:
                        item: Any = await self._next()
                    except Exception as error:  # the caller's own failure: it cancels the attempt that takes it
                        item = _Raised(error)
                    self._pending = item
                item = self._hand(attempt)
            if item is _NOTHING or item is _END:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield encode(item)
