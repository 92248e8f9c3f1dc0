"""The CPU engine: a loaded bundle on ONNX Runtime (vision encoder, language model, tokenizer, prompt).

`VLM.stream` answers a Conversation (engine.py). It keeps the keys (token ids, and image identities
for image rows) whose KV rows are in the language model's cache, and prefills only what differs from
them: a follow-up question, or a request whose history is a prefix of the cached one, costs only its
new tokens, and an image already seen is not encoded again. Answers it generated are re-used as the
exact token ids it produced, so a conversation continues its cache even where re-tokenising the
answer's text would give other ids.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import models
from .bundle import Manifest, open_bundle
from .embedding import EmbeddingTable
from .engine import (
    BundleEngine,
    Conversation,
    EncodedImage,
    EncodedVideo,
    TurnStats,
    common_prefix,
    load_part,
    load_prompt,
    without_lead,
)
from .runtime.decoder import OrtLanguageModel
from .runtime.generate import StreamChunk, stream_generate
from .runtime.rope import mrope_positions
from .runtime.sampling import SamplingParams
from .runtime.vision import OrtVisionEncoder

KNOWN_ANSWERS = 256  # generated answers whose exact ids are remembered for later turns



class VLM(BundleEngine):
    """A bundle ready to answer on the CPU (ONNX Runtime)."""

    json_answers = True

    def __init__(self, folder: str | Path, *, threads: int | None = None, verify: bool = False) -> None:
        self.folder = Path(folder)
        self.manifest: Manifest = open_bundle(self.folder, hashes=verify)
        m = self.manifest
        self.config = m.model
        self._family = models.family(m.model.family)
        part = self.folder.joinpath
        self.prompt = load_prompt(self.folder, m)
        self.tokenizer = self.prompt.tokenizer
        # The LLM first: its load peak (packed and unpacked weights at once) then comes before the vision
        # weights are resident, which measured 130 MB lower than the other order.
        start = time.perf_counter()
        self.lm = load_part("llm", lambda: OrtLanguageModel(part(m.parts["llm"].file), EmbeddingTable(self.folder),
                                                            m.model.text, max_context=m.context_length,
                                                            threads=threads))  # fmt: skip
        self.load_times = {"llm": time.perf_counter() - start, "vision": 0.0}
        self._threads = threads
        self._vision: OrtVisionEncoder | None = None  # loaded on the first image: a text chat never pays for it
        self._vision_lock = threading.Lock()  # the server's requests may bring their first images together
        self._cached: list[object] = []  # one key per KV row: a token id, or (image digest, row) for image rows
        self._ends: set[int] = set()  # lengths of _cached where the last request's prompt and answer end
        self._public = self.prompt.encode([], None)  # the template's opening, with the default system message
        self._answers: OrderedDict[str, tuple[int, ...]] = OrderedDict()  # answer text -> the ids generated
        self._rendered: tuple[object, list[int]] | None = None  # the last conversation encoded, and its ids

    @property
    def vision(self) -> OrtVisionEncoder:
        """The vision encoder, loaded on first use (its load time then goes to `load_times["vision"]`)."""
        with self._vision_lock:
            if self._vision is None:
                start, file = time.perf_counter(), self.folder / self.manifest.parts["vision"].file
                self._vision = load_part("vision", lambda: OrtVisionEncoder(file, threads=self._threads))
                self.load_times["vision"] = time.perf_counter() - start
            return self._vision

    def load_vision(self) -> None:
        self.vision  # noqa: B018 (the property loads it)

    @property
    def decode_bytes(self) -> int:
        """Bytes of the language model's weights (the manifest's record of its data file): what one
        decode step reads."""
        entry = self.manifest.files.get(f"{self.manifest.parts['llm'].file}.data")
        return int(entry["size"]) if entry else 0

    def prompt_ids(self, conversation: Conversation) -> list[int]:
        """The conversation's token ids, with the exact ids of answers this engine generated."""
        key = (tuple(conversation.turns), conversation.system)
        memo = self._rendered  # read once: the server counts requests in other threads
        if memo is None or memo[0] != key:
            memo = self._rendered = (key, self.prompt.encode(conversation.turns, conversation.system,
                                                             known=self._answers))  # fmt: skip
        return memo[1]

    def count_tokens(self, conversation: Conversation) -> int:
        return len(self.prompt_ids(conversation))

    def stream(self, conversation: Conversation, params: SamplingParams, stats: TurnStats, *,
               shared: bool = False) -> Iterator[StreamChunk]:  # fmt: skip
        """Stream the answer to a conversation. With `shared` (the server: requests of several clients share
        the cache) re-use never reveals how much of another client's prompt a request matched."""
        ids = self.prompt_ids(conversation)
        chunks = self._generate(ids, conversation, params, stats, shared=shared)
        return without_lead(chunks, self.prompt.template.answer_prefix)

    def _features(self, image: EncodedImage, stats: TurnStats) -> np.ndarray:
        if image.features is None:
            start = time.perf_counter()
            runs = [self.vision.run(feeds) for feeds in self._family.vision_inputs(self.config, image.tiles)]
            image.features = np.concatenate(runs).reshape(-1, self.config.text.hidden_size)
            spent = (time.perf_counter() - start) * 1000
            stats.vision_ms += spent
            if image.frames:
                stats.frames_ms, stats.frames_encoded = stats.frames_ms + spent, stats.frames_encoded + image.frames
            self.image_cache.put(image.digest, image.features)
        return image.features

    def _keys(self, ids: Sequence[int], units: Sequence[EncodedImage]) -> list[object]:
        slots = [i for i, t in enumerate(ids) if t in self.prompt.visual_ids]
        rows = [(img.digest, r) for img in units for r in range(self.rows(img.tiles))]
        if len(slots) != len(rows):
            raise ValueError(f"the prompt has {len(slots)} image tokens but its images give {len(rows)} features")
        keys: list[object] = list(ids)
        for pos, row in zip(slots, rows, strict=True):
            keys[pos] = row
        return keys

    def _rope(self, ids: Sequence[int], conversation: Conversation, start: int) -> np.ndarray | None:
        """M-RoPE positions of the prompt from `start` on (None: plain positions, counting on)."""
        if not self.config.text.mrope_section:
            return None
        blocks = [(m.layout.groups, *m.layout.grid) if isinstance(m, EncodedVideo) else (1, *m.tiles.grid)
                  for m in conversation.media()]  # fmt: skip
        return mrope_positions(ids, self.prompt.visual_ids, blocks)[start:]

    def _embeddings(self, ids: Sequence[int], keys: list[object], start: int, images: Sequence[EncodedImage],
                    stats: TurnStats) -> np.ndarray:  # fmt: skip
        embeds = self.lm.embed(list(ids[start:]))
        by_digest = {img.digest: img for img in images}
        for pos in range(start, len(keys)):
            key = keys[pos]
            if isinstance(key, tuple):
                embeds[pos - start] = self._features(by_digest[key[0]], stats)[key[1]]
        return embeds

    def _generate(self, ids: list[int], conversation: Conversation, params: SamplingParams,
                  stats: TurnStats, *, shared: bool) -> Iterator[StreamChunk]:  # fmt: skip
        """Stream the answer to a fully rendered prompt, re-using the cached prefix (see `_reuse`)."""
        begin = time.perf_counter()
        units = conversation.units()
        keys = self._keys(ids, units)
        reuse = self._reuse(keys, shared)
        stats.images = len(conversation.images)
        stats.tiles = sum(img.tiles.count for img in conversation.images)
        stats.frames = sum(v.layout.frames for v in conversation.videos)
        stats.prompt_tokens, stats.cached_tokens = len(ids), reuse
        embeds = self._embeddings(ids, keys, reuse, units, stats)
        self._cached = keys[:reuse]
        generated: list[int] = []
        params = params if params.stop_ids else replace(params, stop_ids=self.prompt.stop_ids)
        try:
            rope = self._rope(ids, conversation, reuse)
            for chunk in stream_generate(self.lm, self.tokenizer, embeds, params, seen=ids, position=reuse, rope=rope):
                if not generated:
                    stats.ttft_ms = (time.perf_counter() - begin) * 1000
                generated.append(chunk.token)
                stats.generation = chunk.stats
                yield chunk
        finally:
            self._remember(generated, params.stop_ids)
            fed = keys + generated[:-1]  # the last token was sampled but never fed back
            self._cached = fed if self.lm.position == len(fed) else fed[: min(len(fed), self.lm.position)]
            self._ends = {n for n in (len(keys), len(self._cached)) if n <= len(self._cached)}

    def _reuse(self, keys: list[object], shared: bool) -> int:
        """How many cached rows the prompt `keys` re-uses. The last prompt token is always fed: it gives the
        logits. With `shared`, only whole earlier requests (prompt, or prompt and answer) or the public
        opening of the template count, so the figure says nothing about a partial match."""
        common = min(common_prefix(self._cached, keys), len(keys) - 1)
        if not shared:
            return common
        public = len(self._public) if keys[: len(self._public)] == self._public else 0
        return max((n for n in (*self._ends, public) if n <= common), default=0)

    def _remember(self, generated: list[int], stop_ids: Sequence[int]) -> None:
        """Keep the ids of an answer under its text, as a session will send it back in the next turn."""
        answer = generated[:-1] if generated and generated[-1] in stop_ids else generated
        if answer:
            text = self.tokenizer.decode(answer, skip_special_tokens=True)
            self._answers[text.removeprefix(self.prompt.template.answer_prefix)] = tuple(answer)
            while len(self._answers) > KNOWN_ANSWERS:
                self._answers.popitem(last=False)


def load(path: str | Path, *, threads: int | None = None, verify: bool = False) -> VLM:
    """Open a bundle made by `edgevlm convert` on the CPU."""
    return VLM(path, threads=threads, verify=verify)
