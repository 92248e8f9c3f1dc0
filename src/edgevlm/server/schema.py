"""OpenAI chat-completions requests: validated into turns, images and sampling, or a RequestError.

Everything here is cheap (no tokenising, no image decoding), so a request is judged before it takes a
place in the queue: text is limited in characters per message and per request, and every number is
checked against its bounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..prompt import ImageLayout, Turn, VideoLayout, is_text
from ..runtime.sampling import DEFAULT_MAX_TOKENS, SamplingParams
from ..structured import ANY_OBJECT, ResponseFormat, SchemaError, check
from .images import RequestError

MAX_STOPS, MAX_STOP_CHARS = 4, 256
SEED_RANGE = (0, 2**63 - 1)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (from the server's settings and the model)."""

    context_length: int
    max_images: int
    max_message_chars: int
    max_request_chars: int
    max_videos: int = 0


@dataclass
class UserTurn:
    text: str
    image_urls: list[str] = field(default_factory=list)
    answer: str | None = None
    video_urls: list[str] = field(default_factory=list)


@dataclass
class ChatRequest:
    turns: list[UserTurn]
    system: str | None
    params: SamplingParams  # max_tokens is DEFAULT_MAX_TOKENS when `max_tokens_given` is False
    stop: list[str]
    stream: bool
    include_usage: bool
    max_tokens_given: bool = True

    def image_urls(self) -> list[str]:
        return [url for t in self.turns for url in t.image_urls]

    def video_urls(self) -> list[str]:
        return [url for t in self.turns for url in t.video_urls]

    def as_turns(self, layouts: list[ImageLayout], videos: Sequence[VideoLayout] = ()) -> list[Turn]:
        """Prompt turns, given the layout of each image and each video in request order."""
        it, vt = iter(layouts), iter(videos)
        return [Turn(t.text, tuple(next(it) for _ in t.image_urls), t.answer, tuple(next(vt) for _ in t.video_urls))
                for t in self.turns]  # fmt: skip


def _checked_text(text: str, where: str, limits: Limits) -> str:
    if len(text) > limits.max_message_chars:
        raise RequestError(f"{where} has {len(text)} characters; this server takes at most "
                           f"{limits.max_message_chars} per message", param="messages")  # fmt: skip
    if not is_text(text):
        raise RequestError(f"{where} contains an unpaired surrogate (not valid Unicode text)", param="messages")
    return text


def _content(content: Any, role: str, where: str, limits: Limits) -> tuple[str, dict[str, list[str]]]:
    """A message's text, and the URLs of its image_url and video_url parts."""
    urls: dict[str, list[str]] = {"image_url": [], "video_url": []}
    if isinstance(content, str):
        return _checked_text(content, where, limits), urls
    if content is None and role == "assistant":
        return "", urls
    if not isinstance(content, list):
        raise RequestError(f"{where}: content must be a string or a list of parts", param="messages")
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in urls and role == "user":
            ref = part.get(kind)
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str) or not url:
                raise RequestError(f"{where}: {kind} parts need a {kind}.url string", param="messages")
            urls[kind].append(url)
        else:
            shown = kind if isinstance(kind, str) and len(kind) <= 40 else type(part).__name__
            raise RequestError(f"{where}: unsupported content part {shown!r} in a {role} message", param="messages")
    return _checked_text("\n".join(texts), where, limits), urls


def _turns(messages: Any, limits: Limits) -> tuple[list[UserTurn], str | None]:
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", param="messages")
    if len(messages) > limits.context_length:
        raise RequestError(f"{len(messages)} messages cannot fit a context of {limits.context_length} tokens",
                           param="messages")  # fmt: skip
    turns: list[UserTurn] = []
    system: list[str] = []
    total = 0
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("system", "developer", "user", "assistant"):
            shown = role if isinstance(role, str) and len(role) <= 40 else type(role).__name__
            raise RequestError(f"message role must be system, user or assistant, got {shown!r}", param="messages")
        text, urls = _content(m.get("content"), role, f"message {i + 1}", limits)
        total += len(text)
        if total > limits.max_request_chars:
            limit = limits.max_request_chars
            raise RequestError(f"the messages have more than {limit} characters of text; this server takes at most "
                               f"{limit} per request", param="messages")  # fmt: skip
        if role in ("system", "developer"):
            system.append(text)
        elif role == "user":
            if turns and turns[-1].answer is None:  # consecutive user messages form one turn
                turns[-1].text += "\n" + text
                turns[-1].image_urls += urls["image_url"]
                turns[-1].video_urls += urls["video_url"]
            else:
                turns.append(UserTurn(text, urls["image_url"], video_urls=urls["video_url"]))
        else:
            if not turns or turns[-1].answer is not None:
                raise RequestError("an assistant message must follow a user message", param="messages")
            turns[-1].answer = text
    if not turns:
        raise RequestError("the messages have no user message", param="messages")
    if turns[-1].answer is not None:
        raise RequestError("the last message must be from the user", param="messages")
    return turns, ("\n".join(system) if system else None)


def _number(body: dict[str, Any], name: str, kind: type, low: float, high: float, default: Any) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise RequestError(f"{name} must be a {'whole ' if kind is int else ''}number", param=name)
    if not low <= value <= high:
        raise RequestError(f"{name} must be between {low:g} and {high:g}, got {str(value)[:24]}", param=name)
    return kind(value)


def _stop(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if (not isinstance(stop, list) or len(stop) > MAX_STOPS
            or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stop)):  # fmt: skip
        raise RequestError(f"stop must be a string or a list of up to {MAX_STOPS} non-empty strings of at most "
                           f"{MAX_STOP_CHARS} characters", param="stop")  # fmt: skip
    return stop


def _flag(body: dict[str, Any], name: str, where: str | None = None) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(f"{where or name} must be true or false", param=where or name)
    return value


def _include_usage(body: dict[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise RequestError("stream_options must be an object", param="stream_options")
    if not stream:
        raise RequestError("stream_options is only allowed when stream is true", param="stream_options")
    return _flag(options, "include_usage", "stream_options.include_usage")


def _response_format(value: Any) -> ResponseFormat | None:
    """OpenAI's response_format: text (the default), json_object, or json_schema with its schema."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise RequestError("response_format must be an object whose type is text, json_object or json_schema",
                           param="response_format")  # fmt: skip
    if kind == "text":
        return None
    spec = value.get("json_schema") if kind == "json_schema" else {"schema": dict(ANY_OBJECT)}
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise RequestError("response_format.json_schema.schema must be a JSON schema object", param="response_format")
    fmt = ResponseFormat(spec["schema"])
    try:
        check(fmt)
    except SchemaError as e:
        raise RequestError(str(e), param="response_format") from None
    return fmt


def parse_chat_request(body: Any, limits: Limits) -> ChatRequest:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    turns, system = _turns(body.get("messages"), limits)
    for kind, most in (("image", limits.max_images), ("video", limits.max_videos)):
        count = sum(len(getattr(t, f"{kind}_urls")) for t in turns)
        if count > most:
            raise RequestError(f"{count} {kind}s in one request; this server takes at most {most}",
                               param="messages")  # fmt: skip
    if _number(body, "n", int, 1, 1, 1) != 1:
        raise RequestError("only n=1 is supported", param="n")
    tokens_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, tokens_key, int, 1, float("inf"), None)
    if max_tokens is not None and max_tokens > limits.context_length:
        raise RequestError(f"{tokens_key} {str(max_tokens)[:24]} is beyond the model's context of "
                           f"{limits.context_length} tokens", param=tokens_key)  # fmt: skip
    for name in ("frequency_penalty", "presence_penalty"):  # accepted within OpenAI's bounds, not applied
        _number(body, name, float, -2, 2, 0.0)
    stream = _flag(body, "stream")
    params = SamplingParams(
        temperature=_number(body, "temperature", float, 0, 2, 1.0),
        top_p=_number(body, "top_p", float, 1e-9, 1, 1.0),
        top_k=_number(body, "top_k", int, 0, 1_000_000, 0),
        repetition_penalty=_number(body, "repetition_penalty", float, 0.01, 10, 1.0),
        seed=_number(body, "seed", int, *SEED_RANGE, None),
        max_tokens=max_tokens or DEFAULT_MAX_TOKENS,
        response_format=_response_format(body.get("response_format")),
    )
    return ChatRequest(turns, system, params, _stop(body), stream, _include_usage(body, stream),
                       max_tokens_given=max_tokens is not None)  # fmt: skip
