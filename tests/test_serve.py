"""`telechat-ms serve` through the official `openai` client (loopback only; one server per module, in a thread).

A tiny converted TeleChat2 checkpoint (random weights, seq_length 768) is served with 4 KV-cache slots. Greedy
answers equal `telechat-ms chat` on the same prompt; streaming equals non-streaming; a scripted decoding hook
(an Engine constructor argument, test-only) forces the model's tokens for the tool-call round trip; 16 concurrent
streams get the answers they get alone; disconnects free slots; a full queue answers 503; every bad request is
an OpenAI error JSON with its status code.
"""
import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest
import uvicorn

from telechat_ms.data import render_ids
from telechat_ms.infer.cli import main as chat_main
from telechat_ms.serve.app import create_app
from telechat_ms.serve.cli import main as serve_main
from telechat_ms.serve.scheduler import Engine
from telechat_ms.serve.served import load_served

from .conftest import set_mode

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "tiny-telechat"
WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "查询天气", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>'


class Script:
    """The decoding hook given to the Engine: replaces each selected token while `fn` is set."""

    def __init__(self):
        self.fn = None

    def __call__(self, request, token):
        return token if self.fn is None else self.fn(request, token)


def forced(tokenizer, text):
    """A hook fn emitting `text`'s tokens, then the eos."""
    ids = tokenizer.encode(text, add_special_tokens=False) + [2]
    return lambda request, token: ids[request.generated]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    for cmd in ([sys.executable, f"{REPO}/scripts/make_tiny_hf_checkpoint.py", str(root / "hf"), "--seq-length", "768"],
                [sys.executable, f"{REPO}/convert/hf2ms.py", "--src", str(root / "hf"), "--dst", str(root / "ms")]):
        subprocess.run(cmd, check=True, capture_output=True, cwd=root)
    return str(root / "ms")


@contextlib.contextmanager
def serving(served, **engine_kwargs):
    """A uvicorn server of `served` on a free loopback port, in a thread; always shut down."""
    script = Script()
    engine = Engine(served.model, served.tokenizer, 4, served.max_len, decode_hook=script, **engine_kwargs)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(create_app(served, engine), log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not uv.started:
            assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
            time.sleep(0.05)
        yield type("Server", (), {"port": sock.getsockname()[1], "engine": engine, "served": served,
                                  "script": script, "tokenizer": served.tokenizer})
    finally:
        uv.should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture(scope="module")
def server(checkpoint):
    set_mode("graph")
    with serving(load_served(checkpoint, NAME, None), max_queue=32) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="unused", max_retries=0,
                         timeout=60)


@pytest.fixture(autouse=True)
def _reset_hook(request):
    yield
    if "server" in request.fixturenames:
        server = request.getfixturevalue("server")
        server.script.fn = None
        server.engine.max_queue = 32


def _chat(client, content, **kwargs):
    return client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": content}], **kwargs)


def _stream_text(stream):
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta.content if hasattr(choice, "delta") else choice.text
            text += delta or ""
            finish = choice.finish_reason or finish
    return text, finish, usage


def _wait(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------- plain generation
def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == [NAME]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/health")
    health = json.loads(conn.getresponse().read())
    assert health["status"] == "ok" and health["slots"] == 4 and health["active"] == 0


def test_greedy_chat_equals_chat_cli_and_completions(client, server, checkpoint, capsys):
    """Same prompt, greedy: the server's answer is the chat CLI's, token for token; /v1/completions on the
    rendered prompt ids gives the same text; usage counts the prompt and the generated tokens."""
    got = _chat(client, "你好", max_tokens=12)
    assert chat_main(["--model", checkpoint, "--prompt", "你好", "--max-new-tokens", "12", "--no-stream"]) == 0
    assert got.choices[0].message.content == capsys.readouterr().out[:-1]          # print() adds one "\n"
    ids = render_ids(server.tokenizer, [{"role": "user", "content": "你好"}], "telechat2", add_generation_prompt=True)
    assert got.usage.prompt_tokens == len(ids) and got.choices[0].finish_reason == "length"
    assert got.usage.completion_tokens == 12 and got.usage.total_tokens == len(ids) + 12
    completion = client.completions.create(model=NAME, prompt=ids, max_tokens=12)
    assert completion.choices[0].text == got.choices[0].message.content


def test_streaming_equals_non_streaming(client):
    whole = _chat(client, "你好", max_tokens=12).choices[0].message.content
    text, finish, usage = _stream_text(_chat(client, "你好", max_tokens=12, stream=True,
                                             stream_options={"include_usage": True}))
    assert (text, finish, usage.completion_tokens) == (whole, "length", 12)
    plain = client.completions.create(model=NAME, prompt="生抽与老抽的区别是什么？", max_tokens=10)
    text, finish, _ = _stream_text(client.completions.create(model=NAME, prompt="生抽与老抽的区别是什么？", max_tokens=10,
                                                             stream=True))
    assert (text, finish) == (plain.choices[0].text, "length")


def test_seeded_sampling_and_stop_strings(client):
    first = _chat(client, "你好", max_tokens=10, temperature=0.9, seed=7, extra_body={"top_k": 50})
    again = _chat(client, "你好", max_tokens=10, temperature=0.9, seed=7, extra_body={"top_k": 50})
    other = _chat(client, "你好", max_tokens=10, temperature=0.9, seed=8, extra_body={"top_k": 50})
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.choices[0].message.content != other.choices[0].message.content
    unseeded = {_chat(client, "你好", max_tokens=10, temperature=0.9).choices[0].message.content for _ in range(2)}
    assert len(unseeded) == 2                                         # no seed: a fresh one per request
    whole = _chat(client, "你好", max_tokens=12).choices[0].message.content
    stop = whole[len(whole) // 2:len(whole) // 2 + 2]
    cut = _chat(client, "你好", max_tokens=12, stop=[stop])
    assert cut.choices[0].message.content == whole[:whole.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    text, finish, _ = _stream_text(_chat(client, "你好", max_tokens=12, stop=stop, stream=True))
    assert (text, finish) == (whole[:whole.find(stop)], "stop")                   # the stop never leaks


# ---------------------------------------------------------------------------------------- tools
def test_tool_call_round_trip(client, server):
    """tools rendered with the TeleChat2 template; the scripted model emits <tool_call>; the client gets an
    OpenAI tool call, sends the tool result back (role tool -> <tool_response>) and gets the final answer."""
    prompts = []
    call_hook = forced(server.tokenizer, CALL_TEXT)
    answer_hook = forced(server.tokenizer, "北京今天晴。")

    def hook(request, token):
        if not request.tokens:
            prompts.append(request.prompt)
        return (answer_hook if 11 in request.prompt else call_hook)(request, token)    # 11 = <tool_response>

    server.script.fn = hook
    messages = [{"role": "user", "content": "北京天气"}]
    first = client.chat.completions.create(model=NAME, messages=messages, tools=WEATHER, max_tokens=80)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "北京"}
    assert prompts[0] == render_ids(server.tokenizer, messages, "telechat2", tools=WEATHER, add_generation_prompt=True)

    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"weather": "晴"}'}]
    final = client.chat.completions.create(model=NAME, messages=messages, tools=WEATHER, max_tokens=40)
    assert final.choices[0].message.content == "北京今天晴。" and final.choices[0].finish_reason == "stop"
    expected = [messages[0], {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}}]},
        {"role": "tool", "content": '{"weather": "晴"}'}]
    assert prompts[1] == render_ids(server.tokenizer, expected, "telechat2", tools=WEATHER, add_generation_prompt=True)


def test_tool_call_streamed_as_deltas(client, server):
    server.script.fn = forced(server.tokenizer, "我查一下。\n" + CALL_TEXT)
    stream = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "北京天气"}],
                                            tools=WEATHER, max_tokens=80, stream=True)
    content, calls, finish = "", [], None
    for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        calls += delta.tool_calls or []
        finish = chunk.choices[0].finish_reason or finish
    assert content == "我查一下。" and finish == "tool_calls"
    (call,) = calls
    assert call.index == 0 and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "北京"}


def test_invalid_tool_call_json_is_returned_as_text(client, server):
    bad = '<tool_call>\n{"name": "get_weather", "arguments": {"city": 北京}}\n</tool_call>'
    server.script.fn = forced(server.tokenizer, bad)
    got = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "北京天气"}],
                                         tools=WEATHER, max_tokens=80)
    assert got.choices[0].finish_reason == "invalid_tool_call"
    assert got.choices[0].message.content == bad and not got.choices[0].message.tool_calls


def test_named_tool_choice_starts_the_call(client, server):
    """tool_choice naming a function: the answer is started with that call's prefix; the model completes it."""
    server.script.fn = forced(server.tokenizer, '{"city": "上海"}}\n</tool_call>')
    got = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "上海天气"}],
                                         tools=WEATHER, max_tokens=40,
                                         tool_choice={"type": "function", "function": {"name": "get_weather"}})
    (call,) = got.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "上海"}


# ---------------------------------------------------------------------------------------- concurrency
def test_16_concurrent_streams_get_their_alone_answers(client, server):
    questions = [f"第{i}个问题：今天吃什么？" for i in range(16)]
    alone = [_chat(client, q, max_tokens=4).choices[0].message.content for q in questions]
    before = list(server.engine.stats["slot_uses"])
    server.engine.stats["max_active"] = 0
    with ThreadPoolExecutor(16) as pool:
        streamed = list(pool.map(lambda q: _stream_text(_chat(client, q, max_tokens=4, stream=True))[0], questions))
    assert streamed == alone
    uses = [after - b for after, b in zip(server.engine.stats["slot_uses"], before)]
    assert sum(uses) == 16 and min(uses) >= 2                   # every slot served several requests
    assert server.engine.stats["max_active"] == 4


def _raw_stream(port, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    return conn


def test_disconnects_free_their_slots_and_slow_readers_stall_nobody(client, server):
    def slow(request, token):
        time.sleep(0.01)
        return token
    server.script.fn = slow
    engine = server.engine
    cancelled = engine.stats["cancelled"]
    body = {"model": NAME, "messages": [{"role": "user", "content": "你好"}], "max_tokens": 700}
    conns = [_raw_stream(server.port, {**body, "stream": True}),    # reads one chunk, then hangs up
             _raw_stream(server.port, {**body, "stream": True}),    # never reads its stream
             _raw_stream(server.port, body)]                         # non-streaming, hangs up while waiting
    try:
        response = conns[0].getresponse()
        assert response.status == 200 and response.readline().startswith(b"data: ")
        _wait(lambda: engine.load()["active"] == 3)
        start = time.monotonic()
        assert _chat(client, "你好", max_tokens=4).choices[0].finish_reason == "length"
        assert time.monotonic() - start < 20                         # served beside the silent stream
    finally:
        for conn in conns:
            conn.close()
    _wait(lambda: engine.load()["active"] == 0, timeout=8)           # 3 x 700 tokens x 10 ms would take 21 s
    assert engine.stats["cancelled"] == cancelled + 3


def test_full_queue_answers_503(client, server):
    gate, entered = threading.Event(), threading.Event()

    def blocked(request, token):
        entered.set()
        gate.wait(30)
        return token
    server.script.fn = blocked
    server.engine.max_queue = 1
    with ThreadPoolExecutor(5) as pool:
        first = pool.submit(_chat, client, "你好", max_tokens=2)
        assert entered.wait(30)                    # 1 active (engine held in the hook), 3 free slots + 1 queue
        rest = [pool.submit(_chat, client, "你好", max_tokens=2) for _ in range(4)]
        _wait(lambda: server.engine.load()["waiting"] == 4)
        with pytest.raises(openai.APIStatusError) as refused:
            _chat(client, "你好", max_tokens=2)
        gate.set()
        assert all(f.result().choices[0].finish_reason == "length" for f in [first] + rest)
    assert refused.value.status_code == 503
    assert refused.value.body["code"] == "server_busy" and "retry" in refused.value.body["message"]


# ---------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,status,param", [
    (dict(model="no-such-model"), 404, "model"),
    (dict(content="你好" * 800), 400, "messages"),                     # prompt longer than --max-len
    (dict(max_tokens=5000), 400, "max_tokens"),                       # prompt + max_tokens > --max-len
    (dict(max_tokens=0), 400, "max_tokens"),
    (dict(temperature=3), 400, "temperature"),
    (dict(top_p=0), 400, "top_p"),
    (dict(top_p=1.5), 400, "top_p"),
    (dict(extra_body={"repetition_penalty": 0}), 400, "repetition_penalty"),
    (dict(n=2), 400, "n"),
    (dict(tools=WEATHER, tool_choice={"type": "function", "function": {"name": "nope"}}), 400, "tool_choice"),
])
def test_bad_requests_are_openai_errors(client, kwargs, status, param):
    kwargs = {"model": NAME, "messages": [{"role": "user", "content": kwargs.pop("content", "你好")}], **kwargs}
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(**kwargs)
    assert err.value.status_code == status
    assert err.value.body["param"] == param and err.value.body["type"] == "invalid_request_error"
    assert err.value.body["message"]


def test_bad_json_and_unknown_route(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", "/v1/completions", body=b'{"model": ', headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    error = json.loads(response.read())["error"]
    assert response.status == 400 and error["code"] == "invalid_json" and "not valid JSON" in error["message"]
    conn.request("GET", "/v1/nothing")
    response = conn.getresponse()
    assert response.status == 404 and "error" in json.loads(response.read())


@pytest.mark.parametrize("flags,named", [
    (["--adapter", "lora_dir"], "--adapter lora_dir: no adapter_config.json"),
    (["--max-batch", "0"], "--max-batch must be >= 1, got 0"),
    (["--max-len", "-1"], "--max-len must be >= 1, got -1"),
])
def test_serve_cli_refuses_bad_flags_before_loading(flags, named, tmp_path, capsys):
    assert serve_main(["--model", str(tmp_path / "missing"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and named in err[0]


def test_serve_cli_busy_port_and_missing_model(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        assert serve_main(["--model", str(tmp_path), "--port", port]) == 2
        assert "cannot listen" in capsys.readouterr().err
    assert serve_main(["--model", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert "missing" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- other families
def test_aquila2_is_served_with_its_tokenizer_template_and_stops(tmp_path):
    """A tiny Aquila2 checkpoint (GPT-2 BPE tokenizer, aquila-chat template, stop strings ###, [UNK], </s>):
    the answer equals greedy decoding of the family's rendering (KVCacheSession), cut at its stop strings. The
    model's vocab (512) is larger than the tokenizer's: ids past the tokenizer are never selected."""
    from telechat_ms.data import answer_text, has_stop, resolve_template
    from telechat_ms.infer.engine import KVCacheSession
    from .tiny_tokenizers import aquila_dir
    subprocess.run([sys.executable, f"{REPO}/scripts/make_tiny_hf_checkpoint.py", str(tmp_path / "hf"), "--preset",
                    "tiny_aquila2", "--seq-length", "128"], check=True, capture_output=True, cwd=tmp_path)
    os.remove(tmp_path / "hf" / "tokenizer.model")
    tok_dir = aquila_dir(str(tmp_path / "tok"))
    for name in os.listdir(tok_dir):
        shutil.copy(os.path.join(tok_dir, name), tmp_path / "hf" / name)
    subprocess.run([sys.executable, f"{REPO}/convert/hf2ms.py", "--src", str(tmp_path / "hf"), "--dst",
                    str(tmp_path / "ms")], check=True, capture_output=True, cwd=tmp_path)
    served = load_served(str(tmp_path / "ms"), "aquila", None)
    messages = [{"role": "user", "content": "Hello world, tell me a joke"}]
    template = resolve_template(None, tokenizer_dir=str(tmp_path / "ms"), default="aquila-chat")
    stops = served.chat_stops(template, [])
    assert template.name == "aquila-chat" and {"###", "[UNK]", "</s>"} <= set(stops)
    ids = render_ids(served.tokenizer, messages, template, add_generation_prompt=True)
    # the reference runs on the served model before its SlotSession exists (that one gets fresh buffers/graphs)
    session, tokens = KVCacheSession(served.model, 1, 128), []
    logits = session.step(np.asarray([ids], np.int32))
    while len(tokens) < 10:            # greedy over the tokenizer's ids (the model's vocab is padded to 512)
        token = int(np.argmax(logits[0, :served.tokenizer.vocab_size]))
        if token == 2 or has_stop(served.tokenizer, tokens + [token], stops):
            tokens += [token] if token != 2 else []
            break
        tokens.append(token)
        logits = session.step(np.asarray([[token]], np.int32))
    with serving(served) as running:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{running.port}/v1", api_key="unused", max_retries=0)
        got = client.chat.completions.create(model="aquila", messages=messages, max_tokens=10)
    assert got.usage.prompt_tokens == len(ids)
    assert got.choices[0].message.content == answer_text(served.tokenizer, tokens, stops)[0]


def test_quantized_directories_load_with_quantized_cells(tmp_path):
    """A GPTQ int4 checkpoint converted with its weights kept quantized is served by QuantizedCausalLM
    (telechat_ms/quant; its numerics are tested in test_quant_model.py)."""
    from telechat_ms import TelechatConfig
    from telechat_ms.convert import convert_hf_to_ms
    from telechat_ms.quant.cells import QuantizedCausalLM
    from . import quant_packer
    quant_packer.make_llama(str(tmp_path / "hf"), TelechatConfig.preset("tiny_llama2_gqa"), "gptq", 4, 32, False,
                            False, tokenizer=os.path.join(REPO, "data", "tiny_tokenizer.model"))
    convert_hf_to_ms(str(tmp_path / "hf"), str(tmp_path / "ms"))
    served = load_served(str(tmp_path / "ms"), None, None)
    assert isinstance(served.model, QuantizedCausalLM) and served.family.name == "llama2"
    assert served.name == "ms" and served.template(False).name == "llama2"


def test_lora_adapter_is_served_like_chat_with_the_adapter(client, checkpoint, tmp_path, capsys):
    """--adapter: a PEFT LoRA adapter applied without merging; greedy answers equal `telechat-ms chat --adapter`
    and differ from the base model's."""
    from telechat_ms.lora import LoraConfig, adapter_arrays, apply_lora, save_adapter
    from telechat_ms.lora.inject import Adapter, set_adapter_arrays
    from telechat_ms.model import TelechatForCausalLM
    model = TelechatForCausalLM.from_pretrained(checkpoint)
    apply_lora(model, LoraConfig(rank=4, alpha=8, target_modules=["wq", "wk_v", "w2"]))
    rng = np.random.default_rng(3)                  # non-zero B: the adapter changes the answers
    set_adapter_arrays(model, {m: Adapter(a.a, rng.normal(0, 0.5, a.b.shape).astype(np.float32), a.scaling)
                               for m, a in adapter_arrays(model).items()})
    adapter = str(tmp_path / "adapter")
    save_adapter(model, adapter, base=checkpoint)
    with serving(load_served(checkpoint, "lora", None, adapter=adapter)) as running:
        lora = openai.OpenAI(base_url=f"http://127.0.0.1:{running.port}/v1", api_key="unused", max_retries=0)
        got = lora.chat.completions.create(model="lora", messages=[{"role": "user", "content": "你好"}],
                                           max_tokens=12).choices[0].message.content
    assert chat_main(["--model", checkpoint, "--adapter", adapter, "--prompt", "你好", "--max-new-tokens", "12",
                      "--no-stream"]) == 0
    assert got == capsys.readouterr().out[:-1]
    assert got != _chat(client, "你好", max_tokens=12).choices[0].message.content
