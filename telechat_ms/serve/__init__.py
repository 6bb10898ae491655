"""`telechat-ms serve`: an OpenAI-compatible HTTP API on a slot-based KV cache (docs/serving.md).

Modules: protocol (request bodies, checks, OpenAI errors), served (model + family tokenizer / template / stops,
prompts from requests), tools (TeleChat2 `<tool_call>` parsing, also used by the chat CLI), scheduler
(continuous batching on one engine thread over telechat_ms.infer.slots.SlotSession), app (FastAPI routes, SSE),
cli (the command). FastAPI / uvicorn are imported only by app and cli.
"""
