"""Model families as data: one module per family, registered in one table.

A family module holds everything that is specific to one public model lineage: its HF config.json names and
defaults, its presets (real sizes and tiny test sizes), its HF checkpoint name table and layout helpers, its
tokenizer kind, its default chat template and its stop rules. The model code never reads a family name: a
family only decides the values of TelechatConfig fields and how checkpoints are laid out on disk.
"""
from __future__ import annotations

from .registry import Family, all_families, detect, family_of_preset, get, register

__all__ = ["Family", "all_families", "detect", "get", "family_of_preset", "register"]
