"""Rockchip RK3588 (and RK3576/RK3562): NPU export, and the board backends (RKNN-Lite, RKLLM)."""
