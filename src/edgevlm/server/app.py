"""The ASGI app: `create_app(settings)` serves one model, one generation at a time.

A request is checked in this order, each step cheap before the next costly one: key and origin,
body size, JSON and schema (numbers in bounds, text within its character limits), then a place in the
queue (`max_queue` waiting besides the one generating; more get 429). Only with a place are its images
fetched and decoded and its prompt tokenised, in a worker thread. It then waits for the model; a client
that goes away while waiting gives its place back at once. A generation runs in a worker thread and
streams through an asyncio queue; when the client goes away, the worker stops after the current token.
Every error is OpenAI's JSON (`error.message/type/param/code`), in a stream too.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..accuracy import accuracy_record
from ..engine import Conversation, Engine, TurnStats
from ..image import ImageError
from ..runtime.decoder import ContextOverflow
from ..runtime.generate import StreamChunk
from ..runtime.memory import pin_mmap_threshold
from ..runtime.sampling import SamplingParams
from ..session import video_budget
from ..video import FrameSampling, VideoError
from .gate import check_browser_origin
from .images import RequestError, fetch_media
from .schema import DEFAULT_MAX_TOKENS, ChatRequest, Limits, parse_chat_request
from .settings import ServerSettings

_DONE = object()
_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def error(status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param), status, headers=headers)


def parse_json(raw: bytes) -> Any:
    """Strict JSON: no NaN or Infinity (not JSON, and not numbers any field can take)."""

    def refuse(token: str) -> None:
        raise ValueError(f"{token} is not a JSON number")

    def number(text: str) -> float:
        value = float(text)
        if value in (float("inf"), float("-inf")):
            raise ValueError(f"{text[:24]} is out of range")
        return value

    try:
        return json.loads(raw, parse_constant=refuse, parse_float=number)
    except RecursionError:
        raise RequestError("the request body is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RequestError(f"the request body is not valid JSON ({str(e)[:200]})") from None


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


class Run:
    """One generation in a worker thread, its chunks handed to the event loop through a queue.
    `stop()` asks the worker to end after its current token; the worker then frees the model."""

    def __init__(self, produce: Callable[[Run], None]) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.cancel = threading.Event()
        self.loop.run_in_executor(None, produce, self)

    def put(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def stop(self) -> None:
        self.cancel.set()

    async def chunks(self) -> AsyncIterator[StreamChunk]:
        try:
            while (item := await self.queue.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.stop()


class _Stream(StreamingResponse):
    """A streaming response that stops its run however it ends, even before its body is first read."""

    def __init__(self, body: AsyncIterator[str], run: Run) -> None:
        super().__init__(body, media_type="text/event-stream")
        self.run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.run.stop()


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone away (the body is already read, so nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class Server:
    def __init__(self, model: Engine, settings: ServerSettings) -> None:
        self.model, self.settings = model, settings
        self.name = settings.model_name or settings.model.name
        self.lock = asyncio.Lock()  # the model: one generation at a time
        self.places = 0  # requests admitted: generating, waiting for the model, or being prepared
        self.limits = Limits(model.context_length, settings.max_images, settings.max_message_chars,
                             settings.max_request_chars, settings.max_videos)  # fmt: skip

    # -- admission ---------------------------------------------------------------------------

    def _refusal(self, request: Request) -> JSONResponse | None:
        key = self.settings.api_key
        if key is not None and request.headers.get("authorization", "") != f"Bearer {key}":
            return error(401, "missing or wrong API key (Authorization: Bearer ...)")
        problem = check_browser_origin(request, self.settings)
        return error(problem[0], problem[1]) if problem else None

    async def _body(self, request: Request) -> Any:
        limit = int(self.settings.max_body_mb * 2**20)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise RequestError(f"request body larger than {self.settings.max_body_mb:g} MB", status=413)
        raw = bytearray()
        async for piece in request.stream():
            raw += piece
            if len(raw) > limit:
                raise RequestError(f"request body larger than {self.settings.max_body_mb:g} MB", status=413)
        return await asyncio.to_thread(parse_json, bytes(raw))

    def _admit(self) -> bool:
        if self.places > self.settings.max_queue:  # one generating plus max_queue waiting
            return False
        self.places += 1
        return True

    def _leave(self) -> None:
        self.places -= 1

    async def _wait_for_model(self, request: Request) -> bool:
        """Take the model's lock; False (lock not taken) if the client leaves first."""
        acquire = asyncio.ensure_future(self.lock.acquire())
        gone = asyncio.ensure_future(_disconnected(request))
        await asyncio.wait({acquire, gone}, return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if acquire.done() and not acquire.cancelled():
            return True
        acquire.cancel()
        try:
            await acquire
        except asyncio.CancelledError:
            return False
        self.lock.release()  # it was granted as the client left
        return False

    # -- the request -------------------------------------------------------------------------

    def _prepare(self, req: ChatRequest) -> tuple[Conversation, SamplingParams]:
        """Fetch and tile the images and videos and render the prompt (worker thread: CPU and I/O)."""
        s, images, videos = self.settings, [], []
        for url in req.image_urls():
            try:
                data = fetch_media(url, s)
                images.append(self.model.encode_image(data, max_tiles=s.max_tiles, max_pixels=s.max_pixels,
                                                      decode_limit=s.max_image_pixels))  # fmt: skip
            except (ImageError, ValueError) as e:
                raise RequestError(f"bad image: {e}", param="messages") from None
        urls = req.video_urls()
        budget = video_budget(self.model.context_length, req.params.max_tokens) // max(1, len(urls))
        for url in urls:
            try:
                videos.append(self.model.encode_video(fetch_media(url, s, "video"), max_pixels=s.max_pixels,
                                                      frames=FrameSampling(s.max_video_frames, s.video_fps),
                                                      decode_limit=s.max_image_pixels,
                                                      max_seconds=s.max_video_seconds, budget=budget))  # fmt: skip
            except (VideoError, ImageError, ValueError) as e:
                raise RequestError(f"bad video: {e}", param="messages") from None
        turns = req.as_turns([img.tiles.layout for img in images], [v.layout for v in videos])
        conversation = Conversation(turns, images, req.system, videos)
        n = self.model.count_tokens(conversation)
        room = self.model.context_length - n
        if room < 1:
            raise RequestError(f"the prompt has {n} tokens, more than the context of "
                               f"{self.model.context_length} holds", param="messages")  # fmt: skip
        params = req.params
        if params.response_format is not None and not self.model.json_answers:
            raise RequestError("this server's backend cannot constrain answers to JSON (RKLLM samples inside its "
                               "library); run it with --backend cpu", param="response_format")  # fmt: skip
        if not req.max_tokens_given:  # the default answer length, capped to the room left
            params = SamplingParams(**{**vars(params), "max_tokens": min(DEFAULT_MAX_TOKENS, room)})
        elif params.max_tokens > room:
            raise RequestError(f"the prompt has {n} tokens, so max_tokens {params.max_tokens} is beyond "
                               f"the context of {self.model.context_length}", param="max_tokens")  # fmt: skip
        return conversation, params

    async def chat(self, request: Request) -> Response:
        refusal = self._refusal(request)
        if refusal:
            return refusal
        try:
            req = parse_chat_request(await self._body(request), self.limits)
        except RequestError as e:
            return error(e.status, str(e), e.param)
        if not self._admit():
            return error(429, f"the server is busy ({self.places - 1} requests waiting); try again shortly")
        try:
            conversation, params = await asyncio.to_thread(self._prepare, req)
            if not await self._wait_for_model(request):
                self._leave()
                return Response(status_code=499)  # nobody is listening any more
        except RequestError as e:
            self._leave()
            return error(e.status, str(e), e.param)
        except BaseException:
            self._leave()
            raise
        stats = TurnStats()
        run = Run(lambda r: self._produce(r, conversation, params, stats))
        if req.stream:
            return _Stream(self._sse(req, run, stats), run)
        try:
            return await self._complete(req, run, stats, request)
        finally:
            run.stop()

    # -- generation --------------------------------------------------------------------------

    def _produce(self, run: Run, conversation: Conversation, params: SamplingParams, stats: TurnStats) -> None:
        """The worker: stream the model's chunks into the run's queue; free the model and the place."""
        gen: Iterator[StreamChunk] | None = None
        try:
            gen = self.model.stream(conversation, params, stats, shared=True)
            for chunk in gen:
                run.put(chunk)
                if run.cancel.is_set():
                    break
        except Exception as e:  # reported to the request, not the server log alone
            run.put(e)
        finally:
            if gen is not None:
                gen.close()  # records what the cache holds
            conversation.images.clear()  # an abandoned stream may keep this frame alive until the GC runs
            conversation.videos.clear()
            run.put(_DONE)
            run.loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        self.lock.release()
        self._leave()

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

    @staticmethod
    def _failure(e: BaseException) -> tuple[int, str]:
        if isinstance(e, (ContextOverflow, ValueError)):
            return 400, str(e)
        return 500, f"the model failed: {type(e).__name__}: {e}"

    async def _complete(self, req: ChatRequest, run: Run, stats: TurnStats, request: Request) -> Response:
        matcher, text, last = StopMatcher(req.stop), "", None
        chunks = run.chunks()
        try:
            async for chunk in chunks:
                last = chunk
                text += matcher.feed(chunk.text)
                if matcher.stopped or await request.is_disconnected():
                    break
        except Exception as e:
            return error(*self._failure(e))
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

    async def _sse(self, req: ChatRequest, run: Run, stats: TurnStats) -> AsyncIterator[str]:
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
        chunks = run.chunks()
        yield event({"role": "assistant", "content": ""})
        try:
            async for chunk in chunks:
                last = chunk
                piece = matcher.feed(chunk.text)
                if piece:
                    yield event({"content": piece})
                if matcher.stopped:
                    break
        except Exception as e:  # mid-stream: the status line is sent, so the error goes in the stream
            yield f"data: {json.dumps(error_body(*self._failure(e)), ensure_ascii=False)}\n\ndata: [DONE]\n\n"
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
        refusal = self._refusal(request)
        if refusal:
            return refusal
        entry = {"id": self.name, "object": "model", "created": int(self.settings.model.stat().st_mtime),
                 "owned_by": "edgevlm", "accuracy": accuracy_record(self.model.manifest)}  # fmt: skip
        return JSONResponse({"object": "list", "data": [entry]})

    async def health(self, request: Request) -> Response:
        busy = self.lock.locked()
        return JSONResponse({"status": "ok", "model": self.name, "busy": busy, "waiting": self.places - busy})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"no route {request.url.path[:200]}", 405: f"{request.method} is not allowed on "
               f"{request.url.path[:200]}"}.get(exc.status_code, str(exc.detail))  # fmt: skip
    return error(exc.status_code, message, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    return error(500, f"internal error ({type(exc).__name__}); the server log has the details")


def create_app(settings: ServerSettings, model: Engine | None = None) -> Starlette:
    """The server's ASGI app for `settings` (loading the bundle unless a model is given)."""
    pin_mmap_threshold()
    if model is None:
        from .. import load

        model = load(settings.model, threads=settings.threads, backend=settings.backend)
    model.image_cache.resize(settings.image_cache_mb)
    server = Server(model, settings)
    routes = [
        Route("/health", server.health, methods=["GET"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/chat/completions", server.chat, methods=["POST"]),
    ]
    handlers = {HTTPException: _http_error, Exception: _server_error}
    app = Starlette(routes=routes, exception_handlers=handlers)  # type: ignore[arg-type]
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
