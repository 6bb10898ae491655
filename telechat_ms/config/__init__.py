"""Typed configuration dataclasses, split by concern."""
from .base import ConfigError
from .model import PRESETS, TelechatConfig

__all__ = ["ConfigError", "TelechatConfig", "PRESETS"]
