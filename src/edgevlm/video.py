"""Video clips: opened and decoded with PyAV (FFmpeg ships in its wheels; the `video` extra), imported on
first use. `probe` reads what a clip holds without decoding it; `read_frames` decodes the frames asked for.

Every way a clip can be bad is one VideoError naming it: not a video FFmpeg can read, audio only, no
frames, frames over the pixel limit, too long, a GIF (an image: pass it as one), damaged or truncated.

Which frames a model sees is its family's choice (its reference's sampler, in edgevlm.models); `FrameSampling`
is what a user bounds it with.
"""

from __future__ import annotations

import bisect
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .image import DEFAULT_MAX_PIXELS

MAX_FRAMES_IN_CLIP = 1_000_000  # frames a clip may hold (~9 h at 30 fps): beyond, counting them is the attack
MAX_SAMPLED_FRAMES = 4096  # frames a user may ask for from one clip (more than any context here holds)
VideoSource = str | Path | bytes


class VideoError(ValueError):
    """A clip that cannot be used, or no video decoder installed."""


@dataclass(frozen=True)
class FrameSampling:
    """A user's bounds on a clip's frames: at most `frames` of them, taken at `fps` per second (None: the
    family's own default for each)."""

    frames: int | None = None
    fps: float | None = None

    def __post_init__(self) -> None:
        if self.frames is not None and not 1 <= self.frames <= MAX_SAMPLED_FRAMES:
            raise ValueError(f"frames must be between 1 and {MAX_SAMPLED_FRAMES}, got {self.frames}")
        if self.fps is not None and not 0 < self.fps <= 1000:  # NaN fails too
            raise ValueError(f"fps must be above 0 and at most 1000, got {self.fps}")


NO_BOUNDS = FrameSampling()  # each family's own frame count and rate


def even_indices(start: float, stop: float, step: float) -> list[int]:
    """Frame indices start, start + step, ... below stop, as the references' samplers compute them with
    torch.arange(...).int(): the count is ceil((stop - start) / step) in float64 (one more than meant when
    the division rounds up), each value float32 and truncated."""
    count = math.ceil((stop - start) / step)
    return [int(np.float32(start + k * step)) for k in range(count)]


@dataclass(frozen=True)
class VideoInfo:
    frames: int  # counted from the stream's packets, not taken from the header
    fps: float
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.frames / self.fps if self.fps else 0.0


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise VideoError("videos need PyAV: pip install 'edgevlm[video]'") from None
    return av


def _name(source: VideoSource) -> str:
    return "the video" if isinstance(source, bytes) else str(source)


def _open(source: VideoSource) -> Any:
    av, name = _av(), _name(source)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise VideoError(f"{name}: no such file")
    try:
        container = av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source))
    except av.error.EOFError:  # a header, then nothing: FFmpeg's probe reached the end
        raise VideoError(f"{name}: has no frames") from None
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"{name}: not a video FFmpeg can read, or damaged or truncated ({type(e).__name__})") from None
    if container.format.name == "gif" or "gif" in container.format.name.split(","):
        container.close()
        raise VideoError(f"{name}: a GIF is an image; pass it as one")
    if not container.streams.video:
        container.close()
        raise VideoError(f"{name}: has no video stream (audio only?)")
    return container


def probe(source: VideoSource, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_seconds: float | None = None) -> VideoInfo:
    """What the clip holds: its frames (counted), frame rate and size; refused past the limits."""
    av, name = _av(), _name(source)
    with _open(source) as container:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > max_pixels:
            raise VideoError(f"{name}: frames of {width}x{height} are over the limit of {max_pixels} pixels")
        frames = 0
        try:
            for packet in container.demux(stream):
                frames += packet.size > 0
                if frames > MAX_FRAMES_IN_CLIP:
                    raise VideoError(f"{name}: more than {MAX_FRAMES_IN_CLIP} frames; cut the clip")
        except av.error.FFmpegError:
            raise VideoError(f"{name}: damaged or truncated (its packets cannot be read)") from None
        rate = float(stream.average_rate or stream.guessed_rate or 0)
    if frames == 0:
        raise VideoError(f"{name}: has no frames")
    info = VideoInfo(frames, rate, width, height)
    if max_seconds is not None and info.duration > max_seconds:
        raise VideoError(f"{name}: {info.duration:.0f} s long, more than the limit of {max_seconds:g} s")
    return info


def read_frames(source: VideoSource, indices: Sequence[int], *, max_pixels: int = DEFAULT_MAX_PIXELS
                ) -> list[Image.Image]:  # fmt: skip
    """The frames at `indices` (0-based, in presentation order) as RGB images. A frame far from the last
    one decoded is reached by seeking to the keyframe before it, so a few frames of a long clip cost a few
    groups of pictures, not the whole clip."""
    av, name, wanted = _av(), _name(source), sorted(set(indices))
    probe(source, max_pixels=max_pixels)
    found: dict[int, Image.Image] = {}
    with _open(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame and slice threads: decoding is most of a clip's cost
        try:
            table = _frame_table(container, stream)
            container.seek(0)
            if table is None:
                _decode_in_order(container, stream, wanted, found)
            else:
                _decode_by_seeking(container, stream, wanted, *table, found)
        except av.error.FFmpegError:
            pass  # judged below: the frames asked for are there or not
    missing = [i for i in wanted if i not in found]
    if missing:
        raise VideoError(f"{name}: damaged or truncated (frame {missing[0]} cannot be decoded)")
    return [found[i] for i in indices]


def _frame_table(container: Any, stream: Any) -> tuple[list[int], list[int]] | None:
    """Every frame's timestamp in presentation order and the keyframes' (None: packets without them)."""
    stamps, keys = [], []
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        if packet.pts is None:
            return None
        stamps.append(packet.pts)
        if packet.is_keyframe:
            keys.append(packet.pts)
    return sorted(stamps), sorted(keys)


def _rgb(frame: Any) -> Image.Image:
    return frame.to_image().convert("RGB")


def _decode_in_order(container: Any, stream: Any, wanted: list[int], found: dict[int, Image.Image]) -> None:
    for i, frame in enumerate(container.decode(stream)):
        if i in wanted:
            found[i] = _rgb(frame)
        if i >= wanted[-1]:
            return


def _decode_by_seeking(container: Any, stream: Any, wanted: list[int], stamps: list[int], keys: list[int],
                       found: dict[int, Image.Image]) -> None:  # fmt: skip
    index = {stamps[i]: i for i in wanted if i < len(stamps)}
    frames, last = None, None  # the decoder's frames, and the timestamp of the last one it gave
    for i in (i for i in wanted if i < len(stamps)):
        target = stamps[i]
        if i in found:
            continue
        key = keys[max(bisect.bisect_right(keys, target) - 1, 0)] if keys else stamps[0]
        if frames is None or last is None or last >= target or key > last:  # behind, or a keyframe nearer
            container.seek(key, stream=stream, backward=True)
            frames, last = container.decode(stream), None
        for frame in frames:
            last = frame.pts
            if last in index and index[last] not in found:
                found[index[last]] = _rgb(frame)
            if last is None or last >= target:
                break
