"""Strict, torch-free reading of InternVL3 safetensors checkpoints into one canonical naming.

A checkpoint is a folder with config.json and either `model.safetensors` or shards listed in
`model.safetensors.index.json`. Tensors are memory-mapped: opening reads only the headers, and
`get()` touches only the bytes of the tensor asked for. bf16 (numpy has no such type) is widened
to float32 on `get()`.

Both namings (OpenGVLab original and transformers `-hf`) map to canonical names through TABLE.
Reading is strict: a missing tensor, an unused one, or a wrong shape is an error naming it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import ModelConfig, load_config


class CheckpointError(ValueError):
    """The checkpoint's files do not match what its config.json describes."""


# --------------------------------------------------------------------------------------------
# safetensors, memory-mapped (the safetensors package's numpy API cannot return bf16)

_DTYPES = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}


@dataclass(frozen=True)
class TensorRef:
    """Where one stored tensor's bytes are."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def read_safetensors_header(file: Path) -> dict[str, TensorRef]:
    """Parse a safetensors header into TensorRefs without reading any tensor data; every entry is checked
    (dtype, shape, offsets inside the file and matching the shape) so a damaged file is named here."""
    try:
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100_000_000:
                raise CheckpointError(f"{file}: header length {length} is not plausible (corrupt file?)")
            header = json.loads(f.read(length))
        size = file.stat().st_size
    except (struct.error, ValueError, RecursionError) as e:  # JSON and UTF-8 errors are ValueErrors
        raise CheckpointError(f"{file}: not a safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: not a safetensors file (its header is not a JSON object)")
    base = 8 + length
    return {name: _tensor_ref(file, name, meta, base, size) for name, meta in header.items() if name != "__metadata__"}


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor_ref(file: Path, name: str, meta: object, base: int, size: int) -> TensorRef:
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{file}: tensor '{name}' {what} (damaged header?)")

    if not isinstance(meta, dict):
        raise bad("has no entry object")
    dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise CheckpointError(f"{file}: tensor '{name}' has dtype {dtype}; only {', '.join(_DTYPES)} are supported")
    if not isinstance(shape, list) or not all(_whole(d) for d in shape):
        raise bad(f"has shape {shape!r}, not a list of sizes")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_whole(x) for x in offsets):
        raise bad(f"has data_offsets {offsets!r}, not two byte offsets")
    start, end = base + offsets[0], base + offsets[1]
    if end > size:
        raise CheckpointError(f"{file}: tensor '{name}' runs past the end of the file (truncated?)")
    want = int(np.prod(shape, dtype=np.int64)) * np.dtype(_DTYPES[dtype]).itemsize
    if end - start != want:
        raise bad(f"has {end - start} bytes of data, its shape {shape} needs {want}")
    return TensorRef(file, dtype, tuple(shape), start, end)


def _as_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32, copy=False)


class _MappedFiles:
    """One read-only memory map per shard, opened on first use."""

    def __init__(self) -> None:
        self._maps: dict[Path, np.memmap] = {}

    def array(self, ref: TensorRef) -> np.ndarray:
        if ref.file not in self._maps:
            self._maps[ref.file] = np.memmap(ref.file, dtype=np.uint8, mode="r")
        raw = self._maps[ref.file][ref.start : ref.end].view(_DTYPES[ref.dtype])
        return raw.reshape(ref.shape)


def _stored_tensors(folder: Path) -> dict[str, TensorRef]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        except (ValueError, RecursionError, AttributeError) as e:
            raise CheckpointError(f"{index}: not a valid index ({e})") from None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: 'weight_map' must map tensor names to shard file names")
        refs: dict[str, TensorRef] = {}
        for shard in sorted(set(weight_map.values())):
            if Path(shard).name != shard or shard in ("", ".", ".."):
                raise CheckpointError(f"{index}: shard name {shard!r} is not a file of the checkpoint folder")
            if not (folder / shard).is_file():
                raise CheckpointError(f"{folder}: shard '{shard}' listed in {index.name} is missing")
            refs.update(read_safetensors_header(folder / shard))
        for name, shard in weight_map.items():
            if name not in refs:
                raise CheckpointError(f"{folder}: tensor '{name}' is listed in {index.name} but not in '{shard}'")
        return refs
    single = folder / "model.safetensors"
    if single.exists():
        return read_safetensors_header(single)
    if any(folder.glob("*.bin")) or any(folder.glob("*.pth")):
        raise CheckpointError(f"{folder}: only safetensors checkpoints are supported (found PyTorch .bin files)")
    raise CheckpointError(f"{folder}: no model.safetensors or model.safetensors.index.json")


# --------------------------------------------------------------------------------------------
# The naming TABLE: canonical name -> stored name(s) in each naming. `{i}` is a layer index;
# several stored names are concatenated along axis 0 (transformers splits the fused qkv).

_VL = "vision.layers.{i}."
_OV = "vision_model.encoder.layers.{i}."
_HV = "vision_tower.encoder.layer.{i}."
_LL = "language_model.model.layers.{i}."

Row = tuple[str, tuple[str, ...], tuple[str, ...]]


def _same(canonical: str, stored: str) -> Row:
    """A row whose original and -hf names agree (the language model)."""
    return (canonical, (stored,), (stored,))


TABLE: tuple[Row, ...] = (
    # canonical                       original                                   -hf
    (
        "vision.embed.patch.weight",
        ("vision_model.embeddings.patch_embedding.weight",),
        ("vision_tower.embeddings.patch_embeddings.projection.weight",),
    ),
    (
        "vision.embed.patch.bias",
        ("vision_model.embeddings.patch_embedding.bias",),
        ("vision_tower.embeddings.patch_embeddings.projection.bias",),
    ),
    ("vision.embed.cls", ("vision_model.embeddings.class_embedding",), ("vision_tower.embeddings.cls_token",)),
    (
        "vision.embed.pos",
        ("vision_model.embeddings.position_embedding",),
        ("vision_tower.embeddings.position_embeddings",),
    ),
    (_VL + "norm1.weight", (_OV + "norm1.weight",), (_HV + "layernorm_before.weight",)),
    (_VL + "norm1.bias", (_OV + "norm1.bias",), (_HV + "layernorm_before.bias",)),
    (_VL + "attn.qkv.weight", (_OV + "attn.qkv.weight",), tuple(_HV + f"attention.{p}_proj.weight" for p in "qkv")),
    (_VL + "attn.qkv.bias", (_OV + "attn.qkv.bias",), tuple(_HV + f"attention.{p}_proj.bias" for p in "qkv")),
    (_VL + "attn.proj.weight", (_OV + "attn.proj.weight",), (_HV + "attention.projection_layer.weight",)),
    (_VL + "attn.proj.bias", (_OV + "attn.proj.bias",), (_HV + "attention.projection_layer.bias",)),
    (_VL + "ls1", (_OV + "ls1",), (_HV + "lambda_1",)),
    (_VL + "ls2", (_OV + "ls2",), (_HV + "lambda_2",)),
    (_VL + "norm2.weight", (_OV + "norm2.weight",), (_HV + "layernorm_after.weight",)),
    (_VL + "norm2.bias", (_OV + "norm2.bias",), (_HV + "layernorm_after.bias",)),
    (_VL + "mlp.fc1.weight", (_OV + "mlp.fc1.weight",), (_HV + "mlp.fc1.weight",)),
    (_VL + "mlp.fc1.bias", (_OV + "mlp.fc1.bias",), (_HV + "mlp.fc1.bias",)),
    (_VL + "mlp.fc2.weight", (_OV + "mlp.fc2.weight",), (_HV + "mlp.fc2.weight",)),
    (_VL + "mlp.fc2.bias", (_OV + "mlp.fc2.bias",), (_HV + "mlp.fc2.bias",)),
    ("projector.norm.weight", ("mlp1.0.weight",), ("multi_modal_projector.layer_norm.weight",)),
    ("projector.norm.bias", ("mlp1.0.bias",), ("multi_modal_projector.layer_norm.bias",)),
    ("projector.fc1.weight", ("mlp1.1.weight",), ("multi_modal_projector.linear_1.weight",)),
    ("projector.fc1.bias", ("mlp1.1.bias",), ("multi_modal_projector.linear_1.bias",)),
    ("projector.fc2.weight", ("mlp1.3.weight",), ("multi_modal_projector.linear_2.weight",)),
    ("projector.fc2.bias", ("mlp1.3.bias",), ("multi_modal_projector.linear_2.bias",)),
    _same("llm.embed.weight", "language_model.model.embed_tokens.weight"),
    _same("llm.layers.{i}.attn_norm.weight", _LL + "input_layernorm.weight"),
    *(_same(f"llm.layers.{{i}}.attn.{p}.weight", _LL + f"self_attn.{p}_proj.weight") for p in "qkvo"),
    *(_same(f"llm.layers.{{i}}.attn.{p}.bias", _LL + f"self_attn.{p}_proj.bias") for p in "qkv"),
    _same("llm.layers.{i}.mlp_norm.weight", _LL + "post_attention_layernorm.weight"),
    *(_same(f"llm.layers.{{i}}.mlp.{p}.weight", _LL + f"mlp.{p}_proj.weight") for p in ("gate", "up", "down")),
    _same("llm.norm.weight", "language_model.model.norm.weight"),
    _same("llm.lm_head.weight", "language_model.lm_head.weight"),
)

# Recent transformers save with a `model.` prefix and a bare `lm_head`; fold them onto the hub naming.
HF_PREFIX_ALIASES = (
    ("model.language_model.", "language_model.model."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
)


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape, for every tensor the config implies."""
    v, t = cfg.vision, cfg.text
    d, h, c = v.hidden_size, t.hidden_size, cfg.projector_in
    kv = t.num_kv_heads * t.head_dim
    vision_layer = {
        "norm1.weight": (d,), "norm1.bias": (d,), "attn.qkv.weight": (3 * d, d), "attn.qkv.bias": (3 * d,),
        "attn.proj.weight": (d, d), "attn.proj.bias": (d,), "ls1": (d,), "ls2": (d,),
        "norm2.weight": (d,), "norm2.bias": (d,), "mlp.fc1.weight": (v.intermediate_size, d),
        "mlp.fc1.bias": (v.intermediate_size,), "mlp.fc2.weight": (d, v.intermediate_size), "mlp.fc2.bias": (d,),
    }  # fmt: skip
    if not v.qkv_bias:
        del vision_layer["attn.qkv.bias"]
    text_layer = {
        "attn_norm.weight": (h,), "attn.q.weight": (h, h), "attn.q.bias": (h,), "attn.k.weight": (kv, h),
        "attn.k.bias": (kv,), "attn.v.weight": (kv, h), "attn.v.bias": (kv,), "attn.o.weight": (h, h),
        "mlp_norm.weight": (h,), "mlp.gate.weight": (t.intermediate_size, h),
        "mlp.up.weight": (t.intermediate_size, h), "mlp.down.weight": (h, t.intermediate_size),
    }  # fmt: skip
    shapes = {
        "vision.embed.patch.weight": (d, 3, v.patch_size, v.patch_size),
        "vision.embed.patch.bias": (d,),
        "vision.embed.cls": (1, 1, d),
        "vision.embed.pos": (1, v.grid * v.grid + 1, d),
        "projector.norm.weight": (c,), "projector.norm.bias": (c,),
        "projector.fc1.weight": (h, c), "projector.fc1.bias": (h,),
        "projector.fc2.weight": (h, h), "projector.fc2.bias": (h,),
        "llm.embed.weight": (t.vocab_size, h),
        "llm.norm.weight": (h,),
    }  # fmt: skip
    if not t.tie_word_embeddings:
        shapes["llm.lm_head.weight"] = (t.vocab_size, h)
    for i in range(v.num_layers):
        shapes.update({f"vision.layers.{i}.{k}": s for k, s in vision_layer.items()})
    for i in range(t.num_layers):
        shapes.update({f"llm.layers.{i}.{k}": s for k, s in text_layer.items()})
    return shapes


def source_names(cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
    """Canonical name -> stored name(s) in the config's naming, for every expected tensor."""
    column = {"original": 1, "hf": 2}[cfg.naming]
    layers = {"vision": cfg.vision.num_layers, "llm": cfg.text.num_layers}
    wanted = expected_shapes(cfg)
    out = {}
    for row in TABLE:
        canonical, sources = row[0], row[column]
        count = layers[canonical.split(".")[0]] if "{i}" in canonical else 1
        for i in range(count):
            name = canonical.format(i=i)
            if name in wanted:
                out[name] = tuple(s.format(i=i) for s in sources)
    return out


# --------------------------------------------------------------------------------------------


class Checkpoint:
    """An opened checkpoint: config plus memory-mapped tensors under canonical names."""

    def __init__(self, path: Path, config: ModelConfig, stored: dict[str, TensorRef]) -> None:
        self.path = path
        self.config = config
        self._stored = stored
        self._sources = source_names(config)
        self._shapes = expected_shapes(config)
        self._maps = _MappedFiles()

    def names(self) -> list[str]:
        return list(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def stored_dtype(self, name: str) -> str:
        return self._stored[self._sources[name][0]].dtype

    def get(self, name: str) -> np.ndarray:
        """The tensor as float32 (a read-only view into the file when it is stored as F32)."""
        if name == "llm.lm_head.weight" and self.config.text.tie_word_embeddings:
            name = "llm.embed.weight"
        if name not in self._sources:
            raise KeyError(f"no canonical tensor '{name}'")
        parts = [_as_float32(self._maps.array(self._stored[s]), self._stored[s].dtype) for s in self._sources[name]]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self._shapes:
            yield name, self.get(name)


def _fold_aliases(stored: dict[str, TensorRef]) -> dict[str, TensorRef]:
    out = {}
    for name, ref in stored.items():
        for old, new in HF_PREFIX_ALIASES:
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        out[name] = ref
    return out


def _check(folder: Path, cfg: ModelConfig, stored: dict[str, TensorRef]) -> None:
    sources = source_names(cfg)
    shapes = expected_shapes(cfg)
    problems: list[str] = []
    used: set[str] = set()
    for canonical, names in sources.items():
        want = shapes[canonical]
        part = (want[0] // len(names), *want[1:])
        for name in names:
            used.add(name)
            if name not in stored:
                problems.append(f"missing tensor '{name}'")
            elif stored[name].shape != part:
                problems.append(f"tensor '{name}' has shape {list(stored[name].shape)}, config implies {list(part)}")
    tied_head = "language_model.lm_head.weight"
    if cfg.text.tie_word_embeddings and tied_head in stored:
        used.add(tied_head)  # some savers write the tied head anyway; it is the embedding
    problems += [f"unexpected tensor '{n}' (not part of this model)" for n in sorted(set(stored) - used)]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise CheckpointError(f"checkpoint {folder} ({cfg.naming} naming): {shown}")


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open a checkpoint folder, checking every tensor's presence and shape against config.json."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder")
    cfg = load_config(folder)
    stored = _stored_tensors(folder)
    if cfg.naming == "hf":
        stored = _fold_aliases(stored)
    _check(folder, cfg, stored)
    return Checkpoint(folder, cfg, stored)
