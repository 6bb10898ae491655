"""Config dtype names -> MindSpore dtypes (one place)."""
import mindspore as ms

_DTYPES = {"float32": ms.float32, "float16": ms.float16, "bfloat16": ms.bfloat16}


def to_ms_dtype(name: str):
    return _DTYPES[name]
