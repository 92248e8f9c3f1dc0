"""Video clips written at test time with PyAV, and transformers' own frame sampling and video processors
set up for a model as its published files state them (the video parity references)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def frame_pixels(i: int, size: tuple[int, int], *, flat: bool = False) -> np.ndarray:
    """Frame i of a test clip as RGB [H, W, 3]: a flat grey of level 20 * i (a decoded frame tells its
    index), or a picture whose pattern moves with i (something to see, and to resize)."""
    w, h = size
    if flat:
        return np.full((h, w, 3), 20 * i % 256, dtype=np.uint8)
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 // max(w - 1, 1) + 9 * i) % 256
    g = (y * 255 // max(h - 1, 1) + 5 * i) % 256
    b = ((x // 8 + y // 8 + i) % 2) * 200
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def write_clip(path: Path, frames: int = 12, size: tuple[int, int] = (64, 48), fps: float = 6, codec: str = "mpeg4",
               container: str | None = None, *, flat: bool = True, gop: int | None = None) -> Path:  # fmt: skip
    """A clip of `frames` frames (see frame_pixels), written with PyAV; `gop`: frames between keyframes."""
    import av

    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p" if codec != "gif" else "rgb8"
        if codec == "mpeg4":
            stream.options = {"qscale": "1"}  # near-lossless: frames keep their pattern
        if gop:
            stream.codec_context.gop_size = gop
        out.start_encoding()  # the header, even for a clip of no frames
        for i in range(frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame_pixels(i, size, flat=flat), format="rgb24")))
        out.mux(stream.encode(None))
    return path


def metadata(frames: int, fps: float, size: tuple[int, int]) -> Any:
    """transformers' VideoMetadata of a clip, as its PyAV reader fills it."""
    from transformers.video_utils import VideoMetadata

    return VideoMetadata(total_num_frames=frames, fps=float(fps), width=size[0], height=size[1],
                         duration=frames / fps, video_backend="pyav")  # fmt: skip


def internvl_video_processor(tile: int, mean: Any, std: Any, num_frames: int | None = None) -> Any:
    """InternVLVideoProcessor with the model's tile and normalisation (InternVL3-hf's video settings)."""
    from transformers import InternVLVideoProcessor

    return InternVLVideoProcessor(size={"height": tile, "width": tile}, image_mean=list(mean), image_std=list(std),
                                  num_frames=num_frames)  # fmt: skip


def smolvlm_video_processor(tile: int, *, fps: float = 1, max_frames: int = 64, video_edge: int | None = None) -> Any:
    """SmolVLMVideoProcessor as the SmolVLM2 checkpoints' video_sampling configures it."""
    from transformers import SmolVLMVideoProcessor

    return SmolVLMVideoProcessor(max_image_size={"longest_edge": tile}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                 video_sampling={"fps": fps, "max_frames": max_frames,
                                                 "video_size": {"longest_edge": video_edge or tile}})  # fmt: skip


def qwen2vl_video_processor(min_pixels: int = 128 * 28 * 28, max_pixels: int = 768 * 28 * 28, fps: float = 2) -> Any:
    """Qwen2VLVideoProcessor with its published defaults (Qwen2-VL-2B-Instruct ships no video settings) and
    qwen-vl-utils' 2 frames per second."""
    from transformers import Qwen2VLVideoProcessor

    return Qwen2VLVideoProcessor(size={"shortest_edge": min_pixels, "longest_edge": max_pixels}, fps=fps,
                                 cap_pixels_per_frame=False)  # fmt: skip
