"""The ASGI app: `create_app(settings)` serves one model, one generation at a time.

Requests are validated and their images decoded before they queue; at most `max_queue` wait for
the model (more get 429). A generation runs in a worker thread and streams through an asyncio
queue; when the client goes away, the worker stops after the current token and the slot is freed.
Multi-turn requests whose history is a prefix of what the model has cached re-use its KV cache.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..image import ImageError
from ..model import VLM, Prepared, TurnStats
from ..runtime.generate import StreamChunk
from ..runtime.memory import pin_mmap_threshold
from .images import RequestError, fetch_image
from .schema import ChatRequest, parse_chat_request
from .settings import ServerSettings

_DONE = object()


def error(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = {401: "authentication_error", 413: "invalid_request_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error"
    )
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status)


class StopMatcher:
    """Cuts the text at the first stop string, holding back a tail that could still become one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops, self.buffer, self.stopped = stops, "", False

    def feed(self, text: str) -> str:
        if self.stopped or not self.stops:
            return "" if self.stopped else text
        self.buffer += text
        hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self.buffer = self.buffer[: min(hits)], ""
            return out
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.buffer.endswith(s[:k])), default=0)
        out, self.buffer = self.buffer[: len(self.buffer) - keep], self.buffer[len(self.buffer) - keep :]
        return out

    def flush(self) -> str:
        out, self.buffer = ("" if self.stopped else self.buffer), ""
        return out


class Server:
    def __init__(self, model: VLM, settings: ServerSettings) -> None:
        self.model, self.settings = model, settings
        self.name = settings.model_name or settings.model.name
        self.lock = asyncio.Lock()
        self.waiting = 0

    # -- request handling --------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        key = self.settings.api_key
        return key is None or request.headers.get("authorization", "") == f"Bearer {key}"

    async def _body(self, request: Request) -> Any:
        limit = int(self.settings.max_body_mb * 2**20)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise RequestError(f"request body larger than {self.settings.max_body_mb:g} MB", status=413)
        raw = bytearray()
        async for piece in request.stream():
            raw += piece
            if len(raw) > limit:
                raise RequestError(f"request body larger than {self.settings.max_body_mb:g} MB", status=413)
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(f"the request body is not valid JSON ({e})") from None

    def _prepare(self, req: ChatRequest) -> Prepared:
        """Fetch and tile the images and render the prompt (worker thread: CPU and I/O)."""
        images = []
        for url in req.image_urls():
            try:
                data = fetch_image(url, self.settings)
                images.append(self.model.encode_image(data, max_tiles=self.settings.max_tiles,
                                                      max_pixels=self.settings.max_image_pixels))  # fmt: skip
            except ImageError as e:
                raise RequestError(f"bad image: {e}", param="messages") from None
        turns = req.as_turns([img.tiles.count for img in images])
        ids = self.model.prompt.encode(turns, req.system)
        room = self.model.context_length - len(ids)
        if req.params.max_tokens > room:
            raise RequestError(f"the prompt has {len(ids)} tokens, so max_tokens {req.params.max_tokens} is beyond "
                               f"the context of {self.model.context_length}", param="max_tokens")  # fmt: skip
        return Prepared(turns, req.system, ids, images)

    async def chat(self, request: Request) -> Response:
        if not self._authorized(request):
            return error(401, "missing or wrong API key (Authorization: Bearer ...)")
        try:
            body = await self._body(request)
            req = parse_chat_request(body, context_length=self.model.context_length,
                                     max_images=self.settings.max_images)  # fmt: skip
            prepared = await asyncio.to_thread(self._prepare, req)
        except RequestError as e:
            return error(e.status, str(e), e.param)
        if self.waiting >= self.settings.max_queue and self.lock.locked():
            return error(429, f"the server is busy ({self.waiting} requests waiting); try again shortly")
        stats = TurnStats()
        chunks = self._generate(req, prepared, stats)
        if req.stream:
            return StreamingResponse(self._sse(req, chunks, stats), media_type="text/event-stream")
        return await self._complete(req, chunks, stats, request)

    # -- generation --------------------------------------------------------------------------

    async def _generate(self, req: ChatRequest, prepared: Prepared, stats: TurnStats
                        ) -> AsyncIterator[StreamChunk]:  # fmt: skip
        """Wait for the model, then stream its chunks from a worker thread; stop on disconnect."""
        self.waiting += 1
        try:
            await self.lock.acquire()
        finally:
            self.waiting -= 1
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, self._produce, req, prepared, stats, queue, loop, cancel)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            # No await here: after a disconnect the task's cancel scope would cancel it at once. The
            # worker stops at its next token and releases the lock itself.
            cancel.set()

    def _produce(self, req: ChatRequest, prepared: Prepared, stats: TurnStats, queue: asyncio.Queue[Any],
                 loop: asyncio.AbstractEventLoop, cancel: threading.Event) -> None:  # fmt: skip
        gen: Iterator[StreamChunk] = self.model.answer(prepared, req.params, stats)
        try:
            for chunk in gen:
                loop.call_soon_threadsafe(queue.put_nowait, chunk)
                if cancel.is_set():
                    break
        except Exception as e:  # reported to the request, not the server log alone
            loop.call_soon_threadsafe(queue.put_nowait, e)
        finally:
            gen.close()  # records what the cache holds
            prepared.images.clear()  # an abandoned stream may keep this frame alive until the GC runs
            loop.call_soon_threadsafe(queue.put_nowait, _DONE)
            loop.call_soon_threadsafe(self.lock.release)

    @staticmethod
    def _finish(chunk: StreamChunk | None, stopped: bool) -> str:
        return "stop" if stopped or (chunk and chunk.finish_reason == "stop") else "length"

    @staticmethod
    def _usage(stats: TurnStats) -> dict[str, Any]:
        g = stats.generation
        completion = g.generated_tokens - (g.finish_reason == "stop")
        return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": completion,
                "total_tokens": stats.prompt_tokens + completion,
                "prompt_tokens_details": {"cached_tokens": stats.cached_tokens}}  # fmt: skip

    async def _complete(self, req: ChatRequest, chunks: AsyncIterator[StreamChunk], stats: TurnStats,
                        request: Request) -> Response:  # fmt: skip
        matcher, text, last = StopMatcher(req.stop), "", None
        try:
            async for chunk in chunks:
                last = chunk
                text += matcher.feed(chunk.text)
                if matcher.stopped or await request.is_disconnected():
                    break
        finally:
            await chunks.aclose()
        text += matcher.flush()
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": self.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": self._finish(last, matcher.stopped), "logprobs": None}],
            "usage": self._usage(stats),
        })  # fmt: skip

    async def _sse(self, req: ChatRequest, chunks: AsyncIterator[StreamChunk], stats: TurnStats
                   ) -> AsyncIterator[str]:  # fmt: skip
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def event(delta: dict[str, Any], finish: str | None = None, usage: dict[str, Any] | None = None) -> str:
            data: dict[str, Any] = {"id": ident, "object": "chat.completion.chunk", "created": created,
                                    "model": self.name, "choices": []}  # fmt: skip
            if usage is None:
                data["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
            else:
                data["usage"] = usage
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        matcher, last = StopMatcher(req.stop), None
        yield event({"role": "assistant", "content": ""})
        try:
            async for chunk in chunks:
                last = chunk
                piece = matcher.feed(chunk.text)
                if piece:
                    yield event({"content": piece})
                if matcher.stopped:
                    break
        except Exception as e:  # mid-stream: the status line is sent, so report in the stream
            yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error'}})}\n\n"
            return
        finally:
            await chunks.aclose()
        tail = matcher.flush()
        if tail:
            yield event({"content": tail})
        yield event({}, self._finish(last, matcher.stopped))
        if req.include_usage:
            yield event({}, usage=self._usage(stats))
        yield "data: [DONE]\n\n"

    # -- other endpoints ---------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        if not self._authorized(request):
            return error(401, "missing or wrong API key (Authorization: Bearer ...)")
        entry = {"id": self.name, "object": "model", "created": int(self.settings.model.stat().st_mtime),
                 "owned_by": "edgevlm"}  # fmt: skip
        return JSONResponse({"object": "list", "data": [entry]})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.name, "busy": self.lock.locked(), "waiting": self.waiting})


def create_app(settings: ServerSettings, model: VLM | None = None) -> Starlette:
    """The server's ASGI app for `settings` (loading the bundle unless a model is given)."""
    pin_mmap_threshold()
    if model is None:
        from .. import load

        model = load(settings.model, threads=settings.threads, backend=settings.backend)
    server = Server(model, settings)
    routes = [
        Route("/health", server.health, methods=["GET"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/chat/completions", server.chat, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.server = server
    return app


def serve(settings: ServerSettings) -> None:
    import logging

    import uvicorn

    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        logging.getLogger("uvicorn.error").warning(
            "listening on %s without --api-key: anyone who can reach this address can use the model", settings.host
        )
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
