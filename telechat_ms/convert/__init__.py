"""Weight conversion HF <-> telechat_ms MindSpore (and the official mindformers port -> ours).

Streaming and validated: see docs/convert.md. No torch or mindspore import happens here; torch is imported
only to read pytorch_model*.bin, mindspore only by load_pretrained.
"""
from ..io.errors import ConvertError
from .names import hf_to_ms, ms_to_hf, name_table
from .pipeline import ConvertReport, convert_hf_to_ms, convert_mindformers_to_ms, convert_ms_to_hf, load_config

__all__ = ["ConvertError", "ConvertReport", "convert_hf_to_ms", "convert_ms_to_hf", "convert_mindformers_to_ms",
           "load_config", "name_table", "hf_to_ms", "ms_to_hf"]
