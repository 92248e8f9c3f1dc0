"""ImageNet normalisation, shared by the CPU tiler and the NPU backend (which undoes it)."""

import numpy as np

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_MEAN = np.array(MEAN, dtype=np.float32)
IMAGENET_STD = np.array(STD, dtype=np.float32)
