"""TeleChat2 tool-call parsing (telechat_ms/serve/tools.py): whole answers and the streaming parser fed one
character at a time agree; invalid blocks come back as text with an error, never an exception."""
import json
import os

import pytest

from telechat_ms.data import load_tokenizer
from telechat_ms.serve.tools import ToolCallStream, generated_text, held_back, parse_tool_calls

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>'
CASES = [
    # text, content, call names, error fragment
    ("你好。\n", "你好。\n", [], None),
    (CALL, "", ["get_weather"], None),
    ("我查一下。\n" + CALL + "\n" + CALL.replace("北京", "上海") + "\n", "我查一下。", ["get_weather"] * 2, None),
    (CALL + "\n好的", "好的", ["get_weather"], None),
    ('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>', "", ["f"], None),   # string arguments
    ('<tool_call>{"name": "f"}</tool_call>', "", ["f"], None),                               # no arguments
    (CALL.replace('"北京"', "北京"), CALL.replace('"北京"', "北京"), [], "not valid JSON"),
    ('<tool_call>["f"]</tool_call>', '<tool_call>["f"]</tool_call>', [], 'string "name"'),
    ('<tool_call>{"name": "f", "arguments": [1]}</tool_call>', '<tool_call>{"name": "f", "arguments": [1]}'
     '</tool_call>', [], "not a JSON object"),
    ("先说一句 <tool_call>{\"name\": \"f\"", "先说一句 <tool_call>{\"name\": \"f\"", [], "not closed"),
    ("结尾是 <tool", "结尾是 <tool", [], None),                  # a held-back partial tag is released at the end
]


@pytest.mark.parametrize("text,content,names,error", CASES)
def test_whole_and_streamed_parses_agree(text, content, names, error):
    got_content, calls, got_error = parse_tool_calls(text)
    assert (got_content, [c.name for c in calls]) == (content, names)
    assert (got_error is None) if error is None else (error in got_error)
    stream = ToolCallStream()
    events = [e for ch in text for e in stream.feed(ch)] + stream.finish()
    assert "".join(v for k, v in events if k == "content") == content
    assert [v.name for k, v in events if k == "tool_call"] == names and stream.error == got_error


def test_calls_in_openai_shape():
    (call,) = parse_tool_calls(CALL)[1]
    shaped = call.openai(index=0)
    assert shaped["index"] == 0 and shaped["type"] == "function" and shaped["id"].startswith("call_")
    assert shaped["function"]["name"] == "get_weather"
    assert json.loads(shaped["function"]["arguments"]) == {"city": "北京"}


def test_content_is_not_released_while_it_may_start_a_tag():
    stream = ToolCallStream()
    assert stream.feed("好的<tool") == [("content", "好的")]
    assert stream.feed("_call>\n{\"name\": \"f\"}\n") == []
    (kind, call), = stream.feed("</tool_call>")
    assert kind == "tool_call" and call.name == "f"


def test_forced_prefix_is_part_of_the_answer():
    stream = ToolCallStream(prefix='<tool_call>\n{"name": "get_weather", "arguments": ')
    events = stream.feed('{"city": "上海"}}\n</tool_call>') + stream.finish()
    assert [(k, v.name, json.loads(v.arguments)) for k, v in events] == [("tool_call", "get_weather", {"city": "上海"})]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                                       "tiny_tokenizer.model"))


def test_tool_tags_survive_decoding(tokenizer):
    ids = tokenizer.encode("好的" + CALL, add_special_tokens=False)
    assert 9 in ids and 10 in ids                                  # <tool_call>, </tool_call> are special ids
    assert "<tool_call>" not in tokenizer.decode(ids)              # plain decoding drops them
    text, stopped = generated_text(tokenizer, ids, [])
    assert text == "好的" + CALL and not stopped
    assert generated_text(tokenizer, ids, ["get_"]) == ('好的<tool_call>\n{"name": "', True)


def test_held_back_tail():
    assert held_back("答案是", ["###"]) == 0
    assert held_back("答案是##", ["###"]) == 2
    assert held_back("答案是#", ["###", "</s>"]) == 1
    assert held_back("答案是</", ["###", "</s>"]) == 2
    assert held_back("答案", []) == 0


# ---------------------------------------------------------------------------------------- telechat-ms chat --tools
WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "查询天气", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    root = tmp_path_factory.mktemp("chat_tools")
    for cmd in ([sys.executable, f"{repo}/scripts/make_tiny_hf_checkpoint.py", str(root / "hf"), "--seq-length", "768"],
                [sys.executable, f"{repo}/convert/hf2ms.py", "--src", str(root / "hf"), "--dst", str(root / "ms")]):
        subprocess.run(cmd, check=True, capture_output=True, cwd=root)
    (root / "tools.json").write_text(json.dumps(WEATHER, ensure_ascii=False), encoding="utf-8")
    return str(root / "ms"), str(root / "tools.json")


def _scripted_generate(monkeypatch, tokenizer, answers):
    """generate() replaced by a script: the n-th call answers answers[n] (text -> ids); prompts are recorded."""
    import telechat_ms.infer.chat as chat_module
    from telechat_ms.infer.generate import GenerationResult
    prompts = []

    def generate(model, ids, config, **kwargs):
        prompts.append(ids[0])
        tokens = tokenizer.encode(answers[len(prompts) - 1], add_special_tokens=False)
        return GenerationResult([tokens], ["eos"])
    monkeypatch.setattr(chat_module, "generate", generate)
    return prompts


def test_chat_cli_tools_prints_calls_and_sends_tool_results(converted, tokenizer, capsys, monkeypatch):
    from telechat_ms.data import render_ids
    from telechat_ms.infer.cli import main
    model, tools = converted
    prompts = _scripted_generate(monkeypatch, tokenizer, ["我查一下。\n" + CALL, "北京今天晴。"])
    lines = iter(["北京天气", '/tool {"weather": "晴"}', "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["--model", model, "--interactive", "--tools", tools, "--mode", "pynative"]) == 0
    out = capsys.readouterr().out
    assert "我查一下。\ntool_call: " + json.dumps({"name": "get_weather", "arguments": {"city": "北京"}},
                                                ensure_ascii=False) in out
    assert "北京今天晴。" in out and "<tool_call>" not in out
    history = [{"role": "user", "content": "北京天气"},
               {"role": "assistant", "content": "我查一下。", "tool_calls": [
                   {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}}]},
               {"role": "tool", "content": '{"weather": "晴"}'}]
    assert prompts == [render_ids(tokenizer, history[:1], "telechat2", WEATHER, add_generation_prompt=True),
                       render_ids(tokenizer, history, "telechat2", WEATHER, add_generation_prompt=True)]


def test_chat_cli_invalid_tool_call_is_text_and_a_warning(converted, tokenizer, capsys, monkeypatch):
    from telechat_ms.infer.cli import main
    model, tools = converted
    bad = CALL.replace('"北京"', "北京")
    _scripted_generate(monkeypatch, tokenizer, [bad])
    assert main(["--model", model, "--prompt", "北京天气", "--tools", tools, "--mode", "pynative"]) == 0
    captured = capsys.readouterr()
    assert bad in captured.out and "tool_call:" not in captured.out
    assert "warning: invalid tool call, printed as text: tool call 1: not valid JSON" in captured.err


@pytest.mark.parametrize("content,named", [("not json", "cannot read a JSON list of tools"),
                                           ('{"name": "f"}', "expected a JSON list of tool objects")])
def test_chat_cli_bad_tools_file_is_one_error_before_loading(tmp_path, capsys, content, named):
    from telechat_ms.infer.cli import main
    (tmp_path / "tools.json").write_text(content, encoding="utf-8")
    assert main(["--model", str(tmp_path / "missing"), "--prompt", "hi", "--tools", str(tmp_path / "tools.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0]


def test_chat_cli_tools_are_not_for_batches(converted, tmp_path, capsys):
    from telechat_ms.infer.cli import main
    (tmp_path / "in.jsonl").write_text('{"prompt": "hi"}\n', encoding="utf-8")
    assert main(["--model", converted[0], "--input", str(tmp_path / "in.jsonl"), "--tools", converted[1]]) == 2
    assert "--tools is for --prompt / --interactive" in capsys.readouterr().err
