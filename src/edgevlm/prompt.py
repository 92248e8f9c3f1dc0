"""Chat templates and prompt encoding, safe against control-token injection.

A prompt is rendered as parts: template text (trusted; may contain control tokens such as
`<|im_start|>` or `<IMG_CONTEXT>`) and user text (never trusted). Control tokens are taken from
template text only; all text between them, user text included, is encoded with a tokenizer that
knows no added tokens. Typing `<IMG_CONTEXT>` or `<|im_end|>` therefore yields ordinary text
tokens and can neither forge an image slot nor end a turn, while a benign conversation encodes
exactly as the reference (transformers' tokenizer on the rendered string) does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from tokenizers import Tokenizer


def is_text(s: str) -> bool:
    """Whether `s` is valid Unicode text: bytes that were not UTF-8 arrive as lone surrogates (from a
    command line, a terminal or JSON escapes), and no tokenizer can encode those."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class Template:
    """A chat template as data; `{k}` in `multi_image` is the 1-based image number."""

    system: tuple[str, str]  # before and after the system message
    user: tuple[str, str]  # before and after the user's content
    assistant: tuple[str, str]  # before and after the assistant's answer
    default_system: str | None  # None: no system block unless one is given
    single_image: str  # prefix of a question with one image; {image} is the image block
    multi_image: str  # one line per image when there are several
    stop: tuple[str, ...]
    begin: str = ""  # once, at the very start of a conversation
    no_image: str = ""  # before a question that has no image (a video may follow it)
    answer_prefix: str = ""  # before an answer given as text (not as the ids the model generated)
    video: str = "{video}"  # one per video, after the images and before the question


@dataclass(frozen=True)
class ImageLayout:
    """What a prompt needs of an image: its tile count (a whole-image tile included) and the grid
    (columns, rows) the other tiles form."""

    tiles: int
    grid: tuple[int, int] = (1, 1)


@dataclass(frozen=True)
class VideoLayout:
    """What a prompt needs of a video: its sampled frames (with their times in the clip and the clip's
    length, in seconds), the vision runs they form (`groups`: one per frame, or per pair of frames where
    the encoder takes two at once) and the grid (columns, rows) of each run's image tokens."""

    frames: int
    groups: int
    grid: tuple[int, int] = (1, 1)
    times: tuple[float, ...] = ()
    duration: float = 0.0


@dataclass(frozen=True)
class PromptFormat:
    """A family's prompt: its template, how an image's feature rows appear in the text, and the control
    tokens (by name) that template text may contain; their ids come from the tokenizer, never from here."""

    template: Template
    image_start: str  # before the rows of an image sent whole (one tile), e.g. "<img>"
    image_token: str  # one per feature row, e.g. "<IMG_CONTEXT>"
    image_end: str  # after them, e.g. "</img>"
    controls: tuple[str, ...]  # every control token the template and image text use
    image_text: Callable[[ImageLayout], str]  # the family's text for one image's feature rows
    video_text: Callable[[VideoLayout], str] | None = None  # the family's text for one video (None: no videos)
    video_token: str | None = None  # one per feature row of a video, where it is not `image_token`

    @property
    def all_controls(self) -> tuple[str, ...]:
        """Every control token a bundle records an id for (a video token is optional at load, so that a
        bundle converted before videos still loads)."""
        extra = self.video_token if self.video_token and self.video_token not in self.controls else None
        return (*self.controls, extra) if extra else self.controls


@dataclass(frozen=True)
class Turn:
    """One user turn: its question, the layout of each attached image, and the answer once known."""

    question: str
    images: tuple[ImageLayout, ...] = ()
    answer: str | None = None
    videos: tuple[VideoLayout, ...] = ()  # after the images, in the prompt as in the conversation


TEMPLATE, USER, IDS = "template", "user", "ids"


@dataclass
class Parts:
    """A rendered prompt: a list of (kind, piece): template text (trusted), user text, or token ids
    already known (an answer the model generated, as it generated it)."""

    items: list[tuple[str, str | Sequence[int]]] = field(default_factory=list)

    def template(self, text: str) -> None:
        self.items.append((TEMPLATE, text))

    def user(self, text: str) -> None:
        self.items.append((USER, text))

    def ids(self, ids: Sequence[int]) -> None:
        self.items.append((IDS, ids))


class PromptEncoder:
    """Turns conversations into token ids with a family's prompt format and a tokenizer.

    `control` maps each control token of the format to its id (a bundle's manifest records them);
    only those strings, and only in template text, become control tokens."""

    def __init__(self, tokenizer: Tokenizer, fmt: PromptFormat, control: Mapping[str, int]) -> None:
        missing = [c for c in fmt.controls if c not in control]
        if missing:
            raise ValueError(f"no id for the control token(s) {', '.join(missing)}")
        self.tokenizer, self.format, self.template = tokenizer, fmt, fmt.template
        self._plain = _without_added_tokens(tokenizer)
        self._control = {c: control[c] for c in fmt.all_controls if c in control}
        self._control_re = re.compile("(" + "|".join(re.escape(c) for c in sorted(self._control, key=len,
                                                                                  reverse=True)) + ")")  # fmt: skip
        self.image_token_id = self._control[fmt.image_token]
        self.video_token_id = self._control.get(fmt.video_token or fmt.image_token)  # None: this bundle has none
        self.visual_ids = frozenset(i for i in (self.image_token_id, self.video_token_id) if i is not None)
        self.stop_ids = tuple(self._control[s] for s in self.template.stop)

    # -- rendering ---------------------------------------------------------------------------

    def _render_turn(self, parts: Parts, turn: Turn) -> None:
        t, image = self.template, self.format.image_text
        parts.template(t.user[0])
        if not turn.images:
            parts.template(t.no_image)
        elif len(turn.images) == 1:
            parts.template(t.single_image.format(image=image(turn.images[0])))
        for k, layout in enumerate(turn.images if len(turn.images) > 1 else (), 1):
            parts.template(t.multi_image.format(k=k, image=image(layout)))
        for video in turn.videos:
            parts.template(t.video.format(video=self.video_text(video)))
        parts.user(turn.question)
        parts.template(t.user[1] + t.assistant[0])

    @property
    def no_videos(self) -> str | None:
        """Why this model, or this bundle, takes no videos (None: it takes them)."""
        if self.format.video_text is None:
            return "this model takes no videos"
        if self.video_token_id is None:
            return "this bundle was converted before edgevlm took videos: convert it again"
        return None

    def video_text(self, video: VideoLayout) -> str:
        """The family's text for a video's frames."""
        if self.no_videos or self.format.video_text is None:
            raise ValueError(self.no_videos)
        return self.format.video_text(video)

    def _render_answer(self, parts: Parts, answer: str, known: Mapping[str, Sequence[int]]) -> None:
        if answer in known:
            parts.ids(known[answer])
        else:
            parts.template(self.template.answer_prefix)
            parts.user(answer)
        parts.template(self.template.assistant[1])

    def render(self, turns: Sequence[Turn], system: str | None = None,
               known: Mapping[str, Sequence[int]] | None = None) -> Parts:  # fmt: skip
        """The whole conversation, ending with the assistant header of the last turn. An answer found in
        `known` is put in as those ids (what the model generated) instead of re-tokenised."""
        t, parts = self.template, Parts()
        parts.template(t.begin)
        if (text := t.default_system if system is None else system) is not None:
            parts.template(t.system[0])
            parts.user(text)
            parts.template(t.system[1])
        for i, turn in enumerate(turns):
            if turn.answer is None and i != len(turns) - 1:
                raise ValueError(f"turn {i + 1} of {len(turns)} has no answer; only the last may be open")
            self._render_turn(parts, turn)
            if turn.answer is not None:
                self._render_answer(parts, turn.answer, known or {})
        return parts

    # -- encoding ----------------------------------------------------------------------------

    def encode_parts(self, parts: Parts) -> list[int]:
        """Control tokens from trusted text only; each run of text between them encoded as one string."""
        ids: list[int] = []
        pending: list[str] = []

        def flush() -> None:
            if pending:
                ids.extend(self.encode_text("".join(pending)))
                pending.clear()

        for kind, item in parts.items:
            if kind == IDS:
                flush()
                ids.extend(item)  # type: ignore[arg-type]
                continue
            pieces = self._control_re.split(item) if kind == TEMPLATE else [item]  # type: ignore[arg-type]
            for j, piece in enumerate(pieces):
                if j % 2:  # re.split puts the captured control tokens at odd indexes
                    flush()
                    ids.append(self._control[piece])
                elif piece:
                    pending.append(piece)
        flush()
        return ids

    def encode_text(self, text: str) -> list[int]:
        """Plain text to ids: control-token strings in it stay ordinary text."""
        return self._plain.encode(text, add_special_tokens=False).ids

    def encode(self, turns: Sequence[Turn], system: str | None = None,
               known: Mapping[str, Sequence[int]] | None = None) -> list[int]:  # fmt: skip
        return self.encode_parts(self.render(turns, system, known))


def _without_added_tokens(tokenizer: Tokenizer) -> Tokenizer:
    """A tokenizer sharing the same BPE model and pre-processing, but knowing no added tokens, so
    every string is plain text. (Sharing, not copying: a JSON round trip of the 151k vocabulary
    measured 0.6 s of load time.)"""
    plain = Tokenizer(tokenizer.model)
    plain.normalizer = tokenizer.normalizer
    plain.pre_tokenizer = tokenizer.pre_tokenizer
    plain.decoder = tokenizer.decoder
    return plain
