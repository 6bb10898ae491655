"""Checkpoint I/O shared by convert/, train/ and infer/: lazy tensor sources (safetensors, MindSpore .ckpt,
torch .bin), streaming writers, dtypes, atomic output directories and the converted-directory format.

Nothing here knows a model family or an HF name: that is convert/ and families/.
"""
from .errors import ConvertError

__all__ = ["ConvertError"]
