"""telechat_ms: TeleChat2 (dense and MoE) in MindSpore for Ascend, tested on CPU."""
from setuptools import find_packages, setup

setup(
    name="telechat_ms",
    version="0.1.0",
    description="TeleChat2 dense and MoE models in MindSpore for Huawei Ascend",
    packages=find_packages(include=["telechat_ms", "telechat_ms.*"]),
    python_requires=">=3.11,<3.12",
    install_requires=[
        "mindspore==2.9.0",
        "mindformers==1.9.0",
        "numpy<2",
        "sentencepiece",
        "tokenizers>=0.15",    # HF tokenizer.json / GPT-2 BPE checkpoints (TeleChat-7B, Aquila2)
        "jinja2>=3.1",         # chat templates, rendered as transformers' apply_chat_template does
        "pyyaml",
        "safetensors",
        "tqdm",
        "matplotlib>=3.7",     # telechat-ms plot-loss (Agg backend, no display)
        "tensorboardX",        # TensorBoard scalars of the native loop (also a mindformers dependency)
        "fastapi>=0.110",      # telechat-ms serve: the OpenAI-compatible HTTP API (docs/serving.md)
        "uvicorn>=0.29",
    ],
    extras_require={
        # Independent references for parity tests only; the package never imports them.
        # `openai`: the official client the serve tests talk to.
        # `peft` (+ `accelerate`, which it needs): the LoRA parity reference (tests/test_lora.py).
        "test": ["pytest", "torch==2.13.0", "transformers==4.57.1", "openai>=1.0",
                 "lm_eval>=0.4.13,<0.5", "peft>=0.18", "accelerate"],
        # lm-evaluation-harness for `telechat-ms eval --tasks` / the `telechat_ms` lm_eval model (optional)
        "eval": ["lm_eval>=0.4.13,<0.5"],
    },
    entry_points={"console_scripts": ["telechat-ms=telechat_ms.cli:main"]},
)
