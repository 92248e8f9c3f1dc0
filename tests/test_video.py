"""Video clips read with PyAV: frames counted and decoded exactly, and every bad clip a one-line VideoError.
The clips are written here with PyAV itself."""

import numpy as np
import pytest

av = pytest.importorskip("av", reason="the [video] extra (PyAV) is not installed")

from edgevlm.testing.clips import write_clip  # noqa: E402
from edgevlm.video import VideoError, probe, read_frames  # noqa: E402


def level(img):
    return float(np.asarray(img, dtype=np.float64).mean())


def test_frames_are_counted_and_decoded_by_index(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", frames=12, fps=6)
    info = probe(clip)
    assert (info.frames, info.fps, info.width, info.height) == (12, 6.0, 64, 48) and info.duration == 2.0
    frames = read_frames(clip, [0, 5, 11, 5])
    assert [f.size for f in frames] == [(64, 48)] * 4 and frames[1] is frames[3]
    assert [round(level(f) / 20) for f in frames] == [0, 5, 11, 5]  # each frame is the one asked for
    assert read_frames(clip.read_bytes(), [3])[0].tobytes() == read_frames(clip, [3])[0].tobytes()  # bytes too


def test_frames_reached_by_seeking_equal_the_frames_decoded_in_order(tmp_path):
    """H.264 with B-frames and a keyframe every 10 frames: far frames are reached by seeking, the same pixels."""
    from edgevlm import video

    clip = write_clip(tmp_path / "gop.mp4", frames=120, size=(96, 64), fps=24, codec="libx264", flat=False, gop=10)
    with video._open(clip) as container:
        stamps, keys = video._frame_table(container, container.streams.video[0])
    assert len(stamps) == 120 and 10 <= len(keys) < 20
    every: dict = {}
    with video._open(clip) as container:
        video._decode_in_order(container, container.streams.video[0], list(range(120)), every)
    for indices in ([3, 57, 119], [119, 0, 64, 65, 12], list(range(0, 120, 7)), [40]):
        got = read_frames(clip, indices)
        assert [f.tobytes() for f in got] == [every[i].tobytes() for i in indices], indices


def test_bad_clips_are_one_line_errors(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", frames=30)
    half_mp4 = tmp_path / "half.mp4"  # MP4 keeps its index at the end: cut, it cannot be opened
    half_mp4.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    mkv = write_clip(tmp_path / "clip.mkv", frames=30)  # Matroska opens cut: the later frames are gone
    half = tmp_path / "half.mkv"
    half.write_bytes(mkv.read_bytes()[: mkv.stat().st_size // 2])
    gif = write_clip(tmp_path / "anim.gif", frames=4, codec="gif", container="gif")
    audio = tmp_path / "sound.m4a"
    with av.open(str(audio), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    empty = write_clip(tmp_path / "empty.mkv", frames=0)
    (tmp_path / "text.mp4").write_text("not a video at all")
    cases = [
        (lambda: read_frames(half, [29]), r"truncated \(frame 29 cannot be decoded\)"),
        (lambda: probe(half_mp4), "damaged or truncated"),
        (lambda: probe(gif), "GIF"),
        (lambda: probe(audio), "no video stream"),
        (lambda: probe(empty), "no frames"),
        (lambda: probe(tmp_path / "text.mp4"), "not a video"),
        (lambda: probe(tmp_path / "missing.mp4"), "no such file"),
        (lambda: probe(clip, max_pixels=64 * 47), "over the limit"),
        (lambda: probe(b"\x00" * 100), "not a video"),
    ]
    for call, words in cases:
        with pytest.raises(VideoError, match=words) as e:
            call()
        assert "\n" not in str(e.value)
    assert len(read_frames(half, [0])) == 1  # what is there before the cut still decodes


def test_without_pyav_a_video_is_a_one_line_error_naming_the_extra(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "av", None)  # as if the extra were not installed
    with pytest.raises(VideoError, match=r"pip install 'edgevlm\[video\]'"):
        probe(tmp_path / "clip.mp4")
