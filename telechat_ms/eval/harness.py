"""lm-evaluation-harness model `telechat_ms`: our MindSpore model and KV-cache engine behind lm_eval's LM API.

    pip install -e .[eval]
    python -m telechat_ms.eval.harness --model telechat_ms --model_args pretrained=DIR --batch_size 8 \
        --device npu --tasks ceval-valid,cmmlu,mmlu,gsm8k    # lm_eval's own CLI, with this model registered
    telechat-ms eval --model DIR --tasks ceval-valid,cmmlu --batch-size 8 --output results.json
    # Python: import telechat_ms.eval.harness; lm_eval.simple_evaluate(model="telechat_ms", model_args=...)

lm_eval's stock `lm_eval` command does not import third-party modules, hence `python -m telechat_ms.eval.harness`
(the same CLI with `telechat_ms` registered first).

What each request type does (mirroring lm_eval's `hf` model, so the numbers are comparable):
* loglikelihood: TemplateLM's context/continuation split (trailing spaces moved to the continuation, the
  whole string encoded and cut at the context's length; an empty context gets the prefix token = BOS, else
  EOS), then (context + continuation)[-(max_length + 1):][:-1] is scored in batches (telechat_ms/eval/
  scoring.py): the sum of the continuation's log-probabilities and whether every token is the argmax.
* loglikelihood_rolling: lm_eval's disjoint rolling windows of max_length tokens (first window after the prefix
  token), summed.
* generate_until: batched left-padded generation with the static KV cache (telechat_ms/infer/generate.py),
  greedy unless the task samples; stops at EOS, at any `until` string (checked on the decoded text), or after
  max_gen_toks; the text is cut before the first stop string.
"""
from __future__ import annotations

from typing import Any

from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from ..config.base import ConfigError
from .scoring import TokenScorer


def _int(name: str, value: Any, low: int = 1) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"telechat_ms model_args: {name} must be an integer, got {value!r}"
                          + (" (automatic batch sizes are not supported)" if name == "batch_size" else "")) from None
    if number < low:
        raise ConfigError(f"telechat_ms model_args: {name} must be >= {low}, got {number}")
    return number


def _bool(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    return str(value).lower() in ("1", "true", "yes")


_DEVICES = {"cpu": "CPU", "npu": "Ascend", "ascend": "Ascend", "gpu": "GPU"}


def resolve_device(device, explicit=None) -> str:
    """MindSpore device target from lm_eval's --device (cpu / npu / ascend / gpu; lm_eval's own default
    `cuda:0` means "not given": CPU) or the explicit model_arg device_target."""
    if explicit:
        if explicit not in ("CPU", "Ascend", "GPU"):
            raise ConfigError(f"telechat_ms model_args: device_target must be CPU, Ascend or GPU, got {explicit!r}")
        return explicit
    name = str(device or "cpu").split(":")[0].lower()
    if name == "cuda":
        return "CPU"
    if name not in _DEVICES:
        raise ConfigError(f"telechat_ms: --device {device!r} is not a MindSpore device (cpu, npu, gpu)")
    return _DEVICES[name]


class TelechatLM(TemplateLM):
    """model_args: pretrained (converted directory, or a loaded TelechatForCausalLM with `tokenizer` given as an
    object), tokenizer, max_length (default: the model's seq_length), max_gen_toks (256), add_bos_token,
    prefix_token_id, pad_multiple (64), device_target (CPU / Ascend / GPU), mode (graph / pynative); lm_eval's
    --batch_size and --device (cpu / npu) arrive as batch_size and device."""

    def __init__(self, pretrained, tokenizer=None, batch_size=1, max_length=None, max_gen_toks=256,
                 add_bos_token=None, prefix_token_id=None, pad_multiple=64, device=None, mode="graph",
                 device_target=None, max_batch_size=None, **unused):   # pylint: disable=unused-argument
        super().__init__()
        self.batch_size_per_device = _int("batch_size", batch_size)        # checked before loading anything
        self._max_gen_toks = _int("max_gen_toks", max_gen_toks)
        pad_multiple = _int("pad_multiple", pad_multiple)
        if isinstance(pretrained, str):
            from .cli import load_for_eval   # pylint: disable=import-outside-toplevel
            target = resolve_device(device, device_target)
            self.model, self.tokenizer = load_for_eval(pretrained, target, mode, tokenizer)
            self.name = pretrained
        else:
            if tokenizer is None or isinstance(tokenizer, str):
                raise ConfigError("telechat_ms: a model object needs its tokenizer object")
            self.model, self.tokenizer, self.name = pretrained, tokenizer, "telechat_ms"
        config = self.model.config
        self._max_length = _int("max_length", max_length) if max_length is not None else config.seq_length
        self.add_bos_token = _bool(add_bos_token)
        self.custom_prefix_token_id = None if prefix_token_id is None else int(prefix_token_id)
        self.scorer = TokenScorer(self.model, self.batch_size_per_device, pad_multiple)

    # ---- tokens ------------------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        eos = self.tokenizer.eos_id
        return self.model.config.eos_token_id if eos is None else eos

    @property
    def prefix_token_id(self) -> int:
        if self.custom_prefix_token_id is not None:
            return self.custom_prefix_token_id
        bos = self.tokenizer.bos_id
        return self.eot_token_id if bos is None else bos

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        return str(self.tokenizer.path).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        """As lm_eval's hf model: the tokenizer's own BOS rule unless add_bos_token / add_special_tokens says
        otherwise; no second BOS when the string starts with the BOS text."""
        if add_special_tokens is None:
            add_special_tokens = True if self.add_bos_token is None else self.add_bos_token
            bos = self.tokenizer.bos_token
            if bos and string.startswith(bos):
                add_special_tokens = False
        ids = self.tokenizer.encode(string, add_special_tokens=add_special_tokens)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # ---- scoring -----------------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: ((context, continuation) or None, context ids, continuation ids)."""
        rows = []
        for _, context, continuation in requests:
            if not context or not continuation:
                raise ConfigError("loglikelihood request with an empty context or continuation")
            window = (context + continuation)[-(self.max_length + 1):]
            rows.append((window, min(len(continuation), len(window) - 1)))
        with tqdm(total=len(rows), desc="loglikelihood", disable=disable_tqdm or self.rank != 0) as bar:
            scored = self.scorer.score(rows, on_batch=lambda done: bar.update(len(done)))
        out = []
        for (key, _, _), s in zip(requests, scored):
            answer = (float(s.logprobs.sum()), bool(s.greedy.all()))
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
            out.append(answer)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for index, (string,) in enumerate(req.args for req in requests):
            pairs = lm_utils.get_rolling_token_windows(token_list=self.tok_encode(string),
                                                       prefix_token=self.prefix_token_id,
                                                       max_seq_len=self.max_length, context_len=1)
            for context, continuation in map(lm_utils.make_disjoint_window, pairs):
                windows.append((None, context, continuation))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm)):
            totals[owner] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ---- generation --------------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from .generation import generate_batches   # pylint: disable=import-outside-toplevel
        return generate_batches(self, [req.args for req in requests], disable_tqdm or self.rank != 0)


# registered under the package's module name only: `python -m telechat_ms.eval.harness` runs this file as
# __main__ and imports it again below, which registers it then
if __name__ != "__main__":
    register_model("telechat_ms")(TelechatLM)


def run_tasks(model_dir: str, tasks: list[str], batch_size: int = 1, max_length: int | None = None,
              num_fewshot: int | None = None, limit: float | None = None, include_path: str | None = None,
              device_target: str = "CPU", mode: str = "graph", tokenizer: str | None = None,
              max_gen_toks: int = 256, pad_multiple: int = 64, progress: bool = True) -> dict:
    """`telechat-ms eval --tasks`: lm_eval.simple_evaluate with this model; returns lm_eval's results dict
    (JSON-serialisable parts: results, versions, n-shot, configs)."""
    import lm_eval   # pylint: disable=import-outside-toplevel
    from lm_eval.tasks import TaskManager   # pylint: disable=import-outside-toplevel
    lm = TelechatLM(model_dir, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
                    max_gen_toks=max_gen_toks, pad_multiple=pad_multiple, device_target=device_target, mode=mode)
    manager = TaskManager(include_path=include_path) if include_path else None
    try:
        out = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                                      task_manager=manager, log_samples=False, verbosity=None if progress else "ERROR")
    except KeyError as exc:     # an unknown task name
        raise ConfigError(f"--tasks: {exc.args[0] if exc.args else exc}") from None
    return {k: out[k] for k in ("results", "versions", "n-shot", "higher_is_better") if k in out}


def main(argv: list[str] | None = None) -> None:
    """lm_eval's command line with `--model telechat_ms` available."""
    import sys   # pylint: disable=import-outside-toplevel
    from lm_eval.__main__ import cli_evaluate   # pylint: disable=import-outside-toplevel
    if argv is not None:
        sys.argv = [sys.argv[0]] + list(argv)
    cli_evaluate()


if __name__ == "__main__":
    from telechat_ms.eval.harness import main as _main   # pylint: disable=import-self
    _main()
