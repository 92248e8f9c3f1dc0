"""ImageNet normalisation, shared by the CPU tiler and the NPU backend (which undoes it)."""

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
