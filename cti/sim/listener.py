"""A loopback TCP server whose connections are tracked, so ``close()`` ends every one of them."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

import structlog

__all__ = ["TcpListener"]

log = structlog.get_logger(__name__)

_CLOSE_GRACE_S = 2.0


class TcpListener:
    """Subclasses implement :meth:`serve`; ``async with`` starts and closes the listener."""

    def __init__(self, *, host: str, port: int) -> None:
        self.host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._writers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        if self._server is None:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self._port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        # Aborting a socket ends its handler (read sees EOF); cancelling it instead makes
        # asyncio's stream callback log the CancelledError, so that is only the fallback.
        handlers = list(self._writers)
        self.abort_connections()
        if handlers:
            _, pending = await asyncio.wait(handlers, timeout=_CLOSE_GRACE_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def abort_connections(self) -> int:
        """Cut every client socket at once, as a network failure would."""
        writers = list(self._writers.values())
        for writer in writers:
            writer.transport.abort()
        return len(writers)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._writers[task] = writer
        try:
            await self.serve(reader, writer)
        except (ConnectionError, OSError):
            pass
        except Exception:
            log.exception("sim.connection_failed", listener=type(self).__name__,
                          peer=writer.get_extra_info("peername"))
        finally:
            self._writers.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
