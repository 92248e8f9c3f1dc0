"""The edge bundle: a folder of ONNX graphs, embedding table, tokenizer and `manifest.json`.

The manifest says everything the runtime needs (model dims, token ids, template, tiling, context
length, the precision of each part, and every file with its size and sha256); the runtime never
guesses from tensor shapes. Loading checks presence and sizes; `verify` also checks hashes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, models
from .atomic import write_text_atomic
from .config import ConfigError, is_whole

FORMAT = "edgevlm-bundle"
FORMAT_VERSION = 2  # 2: family and control-token ids recorded
MANIFEST = "manifest.json"
# Files up to this size (graphs, tokenizer, scales) are checked against their sha256 at every load, so a
# damaged one is named instead of failing inside ONNX Runtime; the large weight files only by `verify`.
HASHED_AT_LOAD = 32 * 2**20
REQUIRED_PARTS = ("vision", "llm", "embedding", "tokenizer")


class BundleError(ValueError):
    """A bundle that is missing, damaged, or from a newer edgevlm."""


@dataclass(frozen=True)
class Part:
    """One component of the bundle: its main file and how it was made."""

    file: str
    precision: str
    extra: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=dict)  # what quantising it cost (accuracy.py), measured


@dataclass(frozen=True)
class Manifest:
    model: Any  # the family's ModelConfig
    parts: dict[str, Part]  # "vision", "llm", "embedding", "tokenizer", optional "vision_rk3588", ...
    context_length: int
    max_tiles: int
    min_tiles: int = 1
    tokens: dict[str, int] = field(default_factory=dict)  # control token -> id, from the tokenizer
    source: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"size", "sha256"}
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        m = self.model
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "edgevlm_version": __version__,
            "source": self.source,
            "family": m.family,
            "model": dataclasses.asdict(m),
            "tokens": self.tokens,
            "template": m.template,
            "tiling": {
                "tile_size": m.tile_size,
                "min_tiles": self.min_tiles,
                "max_tiles": self.max_tiles,
                "use_thumbnail": m.use_thumbnail,
                "tokens_per_tile": m.tokens_per_tile,
            },
            "context_length": self.context_length,
            "parts": {k: dataclasses.asdict(p) for k, p in self.parts.items()},
            "files": self.files,
        }

    @classmethod
    def from_dict(cls, d: Any) -> Manifest:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise BundleError("manifest.json: not an edgevlm bundle manifest")
        version = d.get("format_version", 0)
        if not is_whole(version, minimum=1):
            raise BundleError(f"manifest.json: format_version must be a positive whole number, got {version!r}")
        if version > FORMAT_VERSION:
            raise BundleError(
                f"bundle format version {version} is newer than this edgevlm supports ({FORMAT_VERSION}); "
                "upgrade edgevlm"
            )
        if version < FORMAT_VERSION:
            raise BundleError(f"bundle format version {version} is from an older edgevlm: convert the checkpoint "
                              "again")  # fmt: skip
        try:
            model = models.config_from_dict(d["family"], d["model"])
            manifest = cls(
                model=model,
                parts={k: Part(**p) for k, p in d["parts"].items()},
                context_length=d["context_length"],
                max_tiles=d["tiling"]["max_tiles"],
                min_tiles=d["tiling"]["min_tiles"],
                tokens=d["tokens"],
                source=d.get("source", {}),
                files=d["files"],
                format_version=version,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BundleError(f"manifest.json: malformed ({type(e).__name__}: {e})") from None
        manifest.check()
        return manifest

    def check(self) -> None:
        """Numbers in range, and every file named is a plain file name recorded in `files`."""
        for name, value in (("context_length", self.context_length), ("max_tiles", self.max_tiles),
                            ("min_tiles", self.min_tiles)):  # fmt: skip
            if not is_whole(value, minimum=1):
                raise BundleError(f"manifest.json: {name} must be a positive whole number, got {value!r}")
        if not isinstance(self.tokens, dict) or not all(isinstance(k, str) and is_whole(v)
                                                        for k, v in self.tokens.items()):
            raise BundleError("manifest.json: 'tokens' must map control tokens to ids")  # fmt: skip
        if self.min_tiles > self.max_tiles:
            raise BundleError(f"manifest.json: min_tiles {self.min_tiles} > max_tiles {self.max_tiles}")
        if not isinstance(self.source, dict):
            raise BundleError("manifest.json: 'source' must be an object")
        missing = [p for p in REQUIRED_PARTS if p not in self.parts]
        if missing:
            raise BundleError(f"manifest.json: the bundle has no {', '.join(missing)} part")
        if not isinstance(self.files, dict):
            raise BundleError("manifest.json: 'files' must be an object")
        for name, entry in self.files.items():
            _check_name(name)
            size, digest = (entry.get("size"), entry.get("sha256")) if isinstance(entry, dict) else (None, None)
            if not is_whole(size) or not isinstance(digest, str):
                raise BundleError(f"manifest.json: the entry of {name} needs a size and a sha256")
        for key, part in self.parts.items():
            if not isinstance(part.accuracy, dict):
                raise BundleError(f"manifest.json: part {key!r} has an accuracy record that is not an object")
            named = [part.file, *part.extra.get("files", [])] if isinstance(part.extra, dict) else [None]
            for name in named:
                if not isinstance(name, str) or name not in self.files:
                    raise BundleError(f"manifest.json: part {key!r} names {name!r}, which is not a file of the bundle")


def _check_name(name: object) -> None:
    """A bundle file is a plain name inside the bundle folder: never a path that leads out of it."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise BundleError(f"manifest.json: file name {name!r} is not a plain file name inside the bundle; refused")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entries(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file in the bundle folder (the manifest excluded)."""
    return {
        p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }


def write_manifest(folder: Path, manifest: Manifest) -> Manifest:
    """Record every file of `folder` in the manifest and write it."""
    manifest = dataclasses.replace(manifest, files=file_entries(folder))
    write_text_atomic(folder / MANIFEST, json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return manifest


def read_manifest(folder: str | Path) -> Manifest:
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"{folder}: no such bundle folder")
    path = folder / MANIFEST
    if not path.exists():
        raise BundleError(f"{folder}: no manifest.json (not an edgevlm bundle; make one with `edgevlm convert`)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    try:
        return Manifest.from_dict(raw)
    except ConfigError as e:  # the model section: a bad value, named
        raise BundleError(f"{path}: model.{e}") from None


def is_bundle(folder: str | Path) -> bool:
    """Whether `folder` holds an edgevlm manifest (possibly of a damaged or newer bundle)."""
    try:
        raw = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(raw, dict) and raw.get("format") == FORMAT


def check_files(folder: str | Path, manifest: Manifest, *, hashes: bool = False) -> None:
    """Every listed file present inside the bundle with its size, the small ones (and with `hashes`
    all) with their sha256."""
    folder = Path(folder)
    root = folder.resolve()
    for name, entry in manifest.files.items():
        path = folder / name
        if not path.resolve().is_relative_to(root):  # a link that leads out of the bundle
            raise BundleError(f"{folder}: file {name} points outside the bundle; refused")
        if not path.is_file():
            raise BundleError(f"{folder}: file {name} is missing")
        size = path.stat().st_size
        if size != entry["size"]:
            raise BundleError(f"{folder}: file {name} has {size} bytes, the manifest says {entry['size']} (truncated?)")
        if (hashes or size <= HASHED_AT_LOAD) and sha256_file(path) != entry["sha256"]:
            raise BundleError(f"{folder}: file {name} does not match its sha256 (damaged; convert it again)")


def open_bundle(folder: str | Path, *, hashes: bool = False) -> Manifest:
    """Read and check a bundle's manifest; raises BundleError naming what is wrong."""
    manifest = read_manifest(folder)
    check_files(folder, manifest, hashes=hashes)
    return manifest
