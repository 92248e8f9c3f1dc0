"""OpenAI chat-completions requests: validated into turns, images and sampling, or a RequestError."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..prompt import Turn
from ..runtime.sampling import SamplingParams
from .images import RequestError

DEFAULT_MAX_TOKENS = 512


@dataclass
class UserTurn:
    text: str
    image_urls: list[str] = field(default_factory=list)
    answer: str | None = None


@dataclass
class ChatRequest:
    turns: list[UserTurn]
    system: str | None
    params: SamplingParams
    stop: list[str]
    stream: bool
    include_usage: bool

    def image_urls(self) -> list[str]:
        return [url for t in self.turns for url in t.image_urls]

    def as_turns(self, tiles: list[int]) -> list[Turn]:
        """Prompt turns, given the tile count of each image in request order."""
        it = iter(tiles)
        return [Turn(t.text, tuple(next(it) for _ in t.image_urls), t.answer) for t in self.turns]


def _text_and_images(content: Any, role: str) -> tuple[str, list[str]]:
    if isinstance(content, str):
        return content, []
    if content is None and role == "assistant":
        return "", []
    if not isinstance(content, list):
        raise RequestError(f"{role} message content must be a string or a list of parts", param="messages")
    texts, urls = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and role == "user":
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str):
                raise RequestError("image_url parts need an image_url.url string", param="messages")
            urls.append(url)
        else:
            raise RequestError(f"unsupported content part {kind!r} in a {role} message", param="messages")
    return "\n".join(texts), urls


def _turns(messages: Any) -> tuple[list[UserTurn], str | None]:
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", param="messages")
    turns: list[UserTurn] = []
    system: list[str] = []
    for m in messages:
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("system", "developer", "user", "assistant"):
            raise RequestError(f"message role must be system, user or assistant, got {role!r}", param="messages")
        text, urls = _text_and_images(m.get("content"), role)
        if role in ("system", "developer"):
            system.append(text)
        elif role == "user":
            if turns and turns[-1].answer is None:  # consecutive user messages form one turn
                turns[-1].text += "\n" + text
                turns[-1].image_urls += urls
            else:
                turns.append(UserTurn(text, urls))
        else:
            if not turns or turns[-1].answer is not None:
                raise RequestError("an assistant message must follow a user message", param="messages")
            turns[-1].answer = text
    if turns[-1].answer is not None:
        raise RequestError("the last message must be from the user", param="messages")
    return turns, ("\n".join(system) if system else None)


def _number(body: dict[str, Any], name: str, kind: type, low: float, high: float, default: Any) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise RequestError(f"{name} must be a {'whole ' if kind is int else ''}number", param=name)
    if not low <= value <= high:
        raise RequestError(f"{name} must be between {low:g} and {high:g}, got {value}", param=name)
    return kind(value)


def parse_chat_request(body: Any, *, context_length: int, max_images: int) -> ChatRequest:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    turns, system = _turns(body.get("messages"))
    urls = [u for t in turns for u in t.image_urls]
    if len(urls) > max_images:
        raise RequestError(f"{len(urls)} images in one request; this server takes at most {max_images}",
                           param="messages")  # fmt: skip
    if body.get("n", 1) != 1:
        raise RequestError("only n=1 is supported", param="n")
    tokens_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, tokens_key, int, 1, float("inf"), DEFAULT_MAX_TOKENS)
    if max_tokens > context_length:
        raise RequestError(f"{tokens_key} {max_tokens} is beyond the model's context of {context_length} tokens",
                           param=tokens_key)  # fmt: skip
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise RequestError("stop must be a string or a list of up to 4 non-empty strings", param="stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError("seed must be an integer", param="seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("stream must be true or false", param="stream")
    params = SamplingParams(
        temperature=_number(body, "temperature", float, 0, 2, 1.0),
        top_p=_number(body, "top_p", float, 1e-9, 1, 1.0),
        repetition_penalty=_number(body, "repetition_penalty", float, 0.01, 10, 1.0),
        seed=seed,
        max_tokens=max_tokens,
    )
    options = body.get("stream_options") or {}
    return ChatRequest(turns, system, params, stop, stream, bool(options.get("include_usage")))
