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
