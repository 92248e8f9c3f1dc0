"""The `edgevlm` command: one subcommand per module, dispatched from a table."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

from . import __version__


class UserError(Exception):
    """A mistake in what the user asked for: printed as one line, exit code 2."""


def _info(args: argparse.Namespace) -> int:
    from .checkpoint import open_checkpoint

    ck = open_checkpoint(args.checkpoint)
    c = ck.config
    v, t = c.vision, c.text
    n = sum(math.prod(ck.shape(name)) for name in ck.names())
    dtypes = sorted({ck.stored_dtype(name) for name in ck.names()})
    print(f"checkpoint   {ck.path} ({c.naming} naming, {', '.join(dtypes)})")
    print(f"parameters   {n / 1e6:.1f} M in {len(ck.names())} tensors")
    print(f"vision       {v.num_layers} layers, hidden {v.hidden_size}, {v.num_heads} heads, "
          f"{v.image_size}px tiles of {c.tokens_per_tile} tokens")  # fmt: skip
    print(f"language     {t.num_layers} layers, hidden {t.hidden_size}, {t.num_heads}/{t.num_kv_heads} heads, "
          f"vocab {t.vocab_size}, rope theta {t.rope_theta:g}")  # fmt: skip
    print(f"tiling       {c.min_dynamic_patch}..{c.max_dynamic_patch} tiles, thumbnail {c.use_thumbnail}")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="check a checkpoint strictly and describe it")
    p.add_argument("checkpoint", type=Path)


# name -> (add the subparser, run it)
COMMANDS: dict[str, tuple[Callable[[argparse._SubParsersAction], None], Callable[[argparse.Namespace], int]]] = {
    "info": (_add_info, _info),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgevlm", description="Run InternVL3 on a CPU or the RK3588 NPU.")
    parser.add_argument("--version", action="version", version=f"edgevlm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointError
    from .config import ConfigError

    try:
        return COMMANDS[args.command][1](args)
    except (UserError, CheckpointError, ConfigError, FileNotFoundError) as e:
        print(f"edgevlm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
