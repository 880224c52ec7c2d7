"""fastheads: transfer learning on a frozen VGG16, fast, correct and reproducible."""

import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter off

__version__ = "0.1.0"
