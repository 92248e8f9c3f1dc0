"""`edgevlm convert`: a checkpoint of a supported family (a folder, or a hub id) -> an edge bundle.

No torch: weights are read memory-mapped and written tensor by tensor into the graphs' data files.
The bundle is built in a temporary folder beside OUT and renamed into place when whole.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from . import measure
from .accuracy import warnings
from .atomic import atomic_dir
from .bundle import Manifest, Part, is_bundle, write_manifest
from .checkpoint import Checkpoint, open_checkpoint
from .config import ConfigError
from .convert_options import ConvertError, ConvertOptions
from .embedding import write_embedding
from .graphs.decoder import DecoderGraphSpec, build_decoder_graph
from .graphs.vision import VisionGraphSpec
from .prompt import PromptEncoder
from .runtime.ort import Halt
from .tokenizer import control_ids, load_tokenizer, save_tokenizer

if TYPE_CHECKING:
    from tokenizers import Tokenizer

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DEFAULTS = ConvertOptions()


def resolve_source(src: str | Path) -> Path:
    """A local checkpoint folder, or a hub id downloaded with huggingface_hub (online only)."""
    path = Path(src)
    if path.exists():
        return path
    if not HUB_ID.match(str(src)):
        raise ConvertError(f"{src}: no such checkpoint folder")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConvertError(f"{src} looks like a hub id, but huggingface_hub is not installed "
                           "(pip install huggingface_hub), or pass a local folder") from None  # fmt: skip
    try:
        patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
        return Path(snapshot_download(str(src), allow_patterns=patterns))
    except Exception as e:  # the hub client raises many types (offline, not found, auth)
        raise ConvertError(f"cannot download {src} from the hub ({type(e).__name__}: {e})") from None


def _step(log: Callable[[str], None], n: int, total: int, what: str) -> Callable[[], None]:
    log(f"[{n}/{total}] {what} ...")
    start = time.perf_counter()
    return lambda: log(f"[{n}/{total}] {what}: {time.perf_counter() - start:.1f} s")


def convert(src: str | Path, out: str | Path, options: ConvertOptions = DEFAULTS,
            log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> Manifest:  # fmt: skip
    """Convert a checkpoint into a bundle at `out`; returns the manifest written."""
    out = Path(out)
    check_target(out, Path(src), force=options.force)
    ck = open_checkpoint(resolve_source(src))
    if out.exists():
        log(f"replacing the bundle at {out} (kept until the new one is whole)")
    cfg = ck.config
    if "convert" in ck.family.NOT_YET:
        raise ConvertError(ck.family.NOT_YET["convert"])
    if options.max_context > cfg.text.max_position_embeddings:
        raise ConvertError(f"--max-context {options.max_context} exceeds the model's "
                           f"{cfg.text.max_position_embeddings} positions")  # fmt: skip
    if options.max_tiles is not None and options.max_tiles > cfg.max_tiles:
        raise ConvertError(f"--max-tiles {options.max_tiles} is above the model's own limit of "
                           f"{cfg.max_tiles} tiles")  # fmt: skip
    tokenizer = load_tokenizer(ck.path, ck.family.ADDED_TOKENS)
    fmt = ck.family.prompt_format(cfg)
    tokens = control_ids(tokenizer, fmt.all_controls)
    found = tokens[fmt.image_token]
    if cfg.image_token_id is not None and cfg.image_token_id != found:  # where the config names one
        raise ConfigError(f"config.json: image_token_id {cfg.image_token_id} is not the tokenizer's "
                          f"{fmt.image_token} ({found})")  # fmt: skip
    try:
        manifest = _write_bundle(ck, tokenizer, tokens, src, out, options, log)
    except OSError as e:  # a full disk, a read-only folder: the partial bundle is already removed
        raise ConvertError(f"cannot write {out}: {e.strerror or e}") from None
    log(f"wrote {out} ({sum(f['size'] for f in manifest.files.values()) / 2**20:.0f} MB)")
    return manifest


def _write_bundle(ck: Checkpoint, tokenizer: Tokenizer, tokens: dict[str, int], src: str | Path, out: Path,
                  options: ConvertOptions, log: Callable[[str], None]) -> Manifest:  # fmt: skip
    cfg = ck.config
    steps = 5 if options.accuracy else 4
    precisions = {"vision": options.vision, "llm": options.llm}
    measured = measure.parts_to_measure(ck, precisions, log) if options.accuracy else []
    prompt = PromptEncoder(tokenizer, ck.family.prompt_format(cfg), tokens)
    probes = measure.probe_inputs(ck, prompt) if measured else None
    with atomic_dir(out, replace=options.force) as tmp, ThreadPoolExecutor(1) as spare, Halt() as halt:
        # The steps below keep one core busy: the fp32 references, which need only the checkpoint, run on
        # the other meanwhile.
        references = spare.submit(measure.references, ck, probes, measured, 1, halt) if measured else None
        done = _step(log, 1, steps, f"vision encoder ({options.vision})")
        ck.family.build_vision_graph(ck.get, cfg, tmp / "vision.onnx", VisionGraphSpec(options.vision))
        done()
        done = _step(log, 2, steps, f"language model ({options.llm})")
        spec = DecoderGraphSpec(options.llm)
        build_decoder_graph(ck.get, cfg.text, tmp / "llm.onnx", spec)
        done()
        done = _step(log, 3, steps, "embedding table")
        embed_quant = options.llm != "fp32"
        embed_files = write_embedding(ck.get("llm.embed.weight"), tmp, quantize=embed_quant)
        save_tokenizer(tokenizer, tmp / "tokenizer.json")
        done()
        figures: dict[str, dict] = {}
        if options.accuracy:
            done = _step(log, 4, steps, "accuracy of the quantised parts against fp32")
            if references:  # the quantised parts run as the references finish, if they have not yet
                quantised = measure.quantised_outputs(ck, probes, tmp, measured)
                figures = measure.figures(probes, references.result(), quantised)
            for warning in warnings(figures, precisions):
                log(warning)
            done()
        done = _step(log, steps, steps, "manifest (sha256 of every file)")
        max_tiles = options.max_tiles or cfg.max_tiles
        manifest = Manifest(
            model=cfg,
            parts={
                "vision": Part("vision.onnx", options.vision, accuracy=figures.get("vision", {})),
                "llm": Part("llm.onnx", options.llm, {"block_size": spec.block_size}, figures.get("llm", {})),
                "embedding": Part(embed_files[0], "int8" if embed_quant else "fp32", {"files": embed_files}),
                "tokenizer": Part("tokenizer.json", "-"),
            },
            context_length=options.max_context,
            max_tiles=max_tiles,
            min_tiles=min(cfg.min_tiles, max_tiles),
            tokens=tokens,
            source={"path": str(src), "model": cfg.label},
        )
        manifest = write_manifest(tmp, manifest)
        done()
    return manifest


def check_target(out: Path, source: Path, *, force: bool) -> None:
    """Refuse an OUT that would destroy anything but an edgevlm bundle (checked before any work)."""
    if not (out.exists() or out.is_symlink()):
        return
    if not force:
        raise ConvertError(f"{out} already exists (use --force to replace the bundle there)")
    here, where = Path.cwd().resolve(), out.resolve()
    if out.is_symlink() or not out.is_dir():
        raise ConvertError(f"{out} is not a bundle folder; --force replaces only an edgevlm bundle")
    if source.resolve().is_relative_to(where) or here.is_relative_to(where):
        raise ConvertError(f"{out} holds the source checkpoint or the current folder; refusing to replace it")
    if not is_bundle(out):
        raise ConvertError(f"{out} is not an edgevlm bundle (no edgevlm manifest.json); --force replaces only "
                           "a bundle, so move or delete it yourself")  # fmt: skip
