"""edgevlm: run InternVL3 vision-language models on a plain CPU and the RK3588 NPU."""

__version__ = "0.1.0"


def load(path, *, threads=None, verify=False):
    """Open a bundle made by `edgevlm convert` (see edgevlm.model.load)."""
    from .model import load as _load

    return _load(path, threads=threads, verify=verify)
