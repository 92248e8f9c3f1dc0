"""edgevlm: run InternVL3 vision-language models on a plain CPU and the RK3588 NPU."""

__version__ = "0.1.0"
