"""The forms a bundle's parts can be written in, and the defaults, declared once. Light to import: the CLI's
parser reads them, and answering never imports onnx (which the graph builders need)."""

LLM_PRECISIONS = {"w8a8": 8, "w4a8": 4, "fp32": 0}  # the language model's weight bits (0: float32)
VISION_PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_LLM, DEFAULT_VISION = "w8a8", "int8"
