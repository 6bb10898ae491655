"""Continuous batching: one engine thread owns the model and a SlotSession; requests queue for its slots.

The HTTP side (asyncio) submits a GenRequest and reads its events; the engine thread never waits for a client:
each event is handed to the request's `emit` callback (which only schedules a put on the request's asyncio
queue), so a slow reader cannot stall the other slots. Per step the engine
  1. drops cancelled requests (client disconnects) and frees their slots,
  2. admits waiting requests into free slots (FIFO),
  3. runs one forward for every slot with pending tokens (SlotSession.step: decode tokens and prefill chunks
     together), and
  4. selects the next token of every slot whose logits came back (each request has its own TokenSelector,
     so sampling parameters and seeds are per request), emits it, and frees the slot when the request ends.
The waiting queue is bounded: submit() raises QueueFull (the HTTP layer answers 503).
"""
from __future__ import annotations

import itertools
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..config.generation import GenerationConfig
from ..data.stops import has_stop
from ..infer.generate import _check_finite
from ..infer.sampling import TokenSelector
from ..infer.slots import SlotSession


class QueueFull(Exception):
    """Every slot is busy and the waiting queue holds max_queue requests."""


_IDS = itertools.count(1)


@dataclass
class GenRequest:
    """One generation. Events passed to `emit`: ("token", id) for every generated token (not the eos),
    ("done", finish_reason, completion_tokens) once, or ("error", message) once.
    finish_reason: "stop" (eos or a stop string) or "length" (max_tokens or the KV cache)."""

    prompt: list[int]
    config: GenerationConfig
    max_tokens: int
    emit: Callable[[tuple], None]
    stop_strings: list[str] = field(default_factory=list)
    id: int = field(default_factory=lambda: next(_IDS))
    tokens: list[int] = field(default_factory=list)       # generated ids without the eos
    generated: int = 0                                     # sampled tokens, eos included (usage)
    slot: int | None = None
    cancelled: bool = False
    finished: bool = False

    def __post_init__(self):
        self.selector = TokenSelector(self.config)
        self.stop_window = 4 * max((len(s) for s in self.stop_strings), default=0) + 8


class Engine:
    """Owns the model on one thread. `decode_hook(request, token) -> token` (tests only) may replace each
    selected token, e.g. to script a tool call; it is a constructor argument, never read from the environment."""

    def __init__(self, model, tokenizer, slots: int, max_len: int, max_queue: int = 64, chunk: int = 256,
                 decode_hook: Callable[[GenRequest, int], int] | None = None, exact_ntk: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.slots, self.max_len, self.max_queue = slots, max_len, max_queue
        self.session = SlotSession(model, slots, max_len, chunk=chunk, exact_ntk=exact_ntk)
        self.decode_hook = decode_hook
        # embedding rows past the tokenizer (padded vocabularies) are never selected: they cannot be decoded
        self.vocab_limit = min(tokenizer.vocab_size, model.config.vocab_size)
        self.waiting: deque[GenRequest] = deque()
        self.active: dict[int, GenRequest] = {}
        self.cond = threading.Condition()
        self.stopping = False
        self.stats = {"steps": 0, "admitted": 0, "finished": 0, "cancelled": 0, "slot_uses": [0] * slots,
                      "max_active": 0}
        self.thread = threading.Thread(target=self._run, name="telechat-ms-engine", daemon=True)

    # ---- called from the HTTP side ---------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def submit(self, request: GenRequest) -> None:
        with self.cond:
            if self.stopping:
                raise QueueFull("the server is shutting down")
            free = self.slots - len(self.active)
            if len(self.waiting) >= self.max_queue + max(free, 0):
                raise QueueFull(f"all {self.slots} slots are busy and {len(self.waiting)} requests are waiting "
                                f"(--max-queue {self.max_queue})")
            self.waiting.append(request)
            self.cond.notify_all()

    def cancel(self, request: GenRequest) -> None:
        """The client went away: the engine frees the request's slot before its next step."""
        with self.cond:
            if not request.finished:
                request.cancelled = True
                self.cond.notify_all()

    def load(self) -> dict:
        with self.cond:           # `active` is the engine thread's; its size is read atomically
            return {"slots": self.slots, "active": len(self.active), "waiting": len(self.waiting),
                    "max_queue": self.max_queue}

    # ---- the engine thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        """The engine loop. `cond` guards the waiting queue and the cancel flags; the step, token selection and
        the decode hook run outside it, so submit() / cancel() / load() never wait for the model."""
        while True:
            with self.cond:
                while not self.stopping and not self.waiting and not self.active:
                    self.cond.wait()
                if self.stopping:
                    break
                self._drop_cancelled()
                self._admit()
            if not self.session.pending():
                continue
            try:
                done = self.session.step()
            except Exception as exc:  # pylint: disable=broad-except  # fail the batch, keep serving
                self._fail_all(f"generation failed: {type(exc).__name__}: {exc}")
                continue
            self.stats["steps"] += 1
            for slot, logits in done.items():
                request = self.active.get(slot)
                if request is not None and not request.cancelled:
                    self._advance(request, logits)
        with self.cond:
            for request in list(self.waiting) + list(self.active.values()):
                self._finish(request, ("error", "the server is shutting down"))
            self.waiting.clear()

    def _drop_cancelled(self) -> None:
        for request in [r for r in self.waiting if r.cancelled]:
            self.waiting.remove(request)
            self._finish(request, None)
        for slot, request in list(self.active.items()):
            if request.cancelled:
                self._finish(request, None)

    def _admit(self) -> None:
        for slot in self.session.free_slots():
            if not self.waiting:
                break
            request = self.waiting.popleft()
            request.slot = slot
            self.active[slot] = request
            self.session.start(slot, request.prompt)
            self.stats["admitted"] += 1
            self.stats["slot_uses"][slot] += 1
        self.stats["max_active"] = max(self.stats["max_active"], len(self.active))

    def _finish(self, request: GenRequest, event: tuple | None) -> None:
        """End a request (event None: cancelled, nothing to tell) and free its slot."""
        if request.slot is not None and self.active.get(request.slot) is request:
            del self.active[request.slot]
            self.session.release(request.slot)
        request.finished = True
        self.stats["cancelled" if event is None else "finished"] += 1
        if event is not None:
            request.emit(event)

    def _fail_all(self, message: str) -> None:
        for request in list(self.active.values()):
            self._finish(request, ("error", message))

    def _advance(self, request: GenRequest, logits: np.ndarray) -> None:
        """Select, record and emit the next token of one request (generate()'s rules, per request)."""
        try:
            _check_finite(logits[None], request.generated)
        except Exception as exc:  # pylint: disable=broad-except
            self._finish(request, ("error", str(exc)))
            return
        seen = np.asarray([request.prompt + request.tokens], np.int32)                  # (1, n)
        scores = logits[None, :self.vocab_limit]                                        # (1, V_tokenizer)
        token = int(request.selector(scores, seen)[0])
        if self.decode_hook is not None:
            token = int(self.decode_hook(request, token))
        request.generated += 1
        if token in request.config.eos_token_id:
            self._finish(request, ("done", "stop", request.generated))
            return
        request.tokens.append(token)
        request.emit(("token", token))
        if request.stop_strings and has_stop(self.tokenizer, request.tokens[-request.stop_window:],
                                             request.stop_strings):
            self._finish(request, ("done", "stop", request.generated))
        elif request.generated >= request.max_tokens or len(request.prompt) + request.generated >= self.max_len:
            self._finish(request, ("done", "length", request.generated))
        else:
            self.session.append(request.slot, token)
