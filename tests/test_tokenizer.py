"""Tokenizer and chat template: special-token layout, HF dummy-prefix segmentation, template ids vs hand-derived
sequences (spec §6), round trips. Uses the shipped data/tiny_tokenizer.model (TeleChat2 3B/7B layout)."""
import json
import os

import pytest

from telechat_ms.data import chat_template as ct
from telechat_ms.data.tiny_tokenizer import REPO_DATA, train_tiny_tokenizer
from telechat_ms.data.tokenizer import TelechatTokenizer, TokenizerError

TINY = str(REPO_DATA / "tiny_tokenizer.model")
S = ct.DEFAULT_SYSTEM_PROMPT
U, B, E_, SYS, START, PAD = 4, 5, 2, 6, 1, 3
CALL, ECALL, RESP, ERESP = 9, 10, 11, 12


@pytest.fixture(scope="module")
def tok():
    return TelechatTokenizer(TINY)


@pytest.fixture(scope="module")
def tok115(tmp_path_factory):
    return TelechatTokenizer(train_tiny_tokenizer(str(tmp_path_factory.mktemp("t115") / "tokenizer.model"), "115b"))


def sp(tok, text):
    """Raw SentencePiece ids of one separately encoded chunk (with its own dummy prefix)."""
    return list(tok.sp.EncodeAsIds(text))


def test_special_token_layout(tok):
    names = ["<_unk>", "<_start>", "<_end>", "<_pad>", "<_user>", "<_bot>", "<_system>", "<_observation>",
             "<_sep>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
    assert [tok.id_to_token(i) for i in range(13)] == names
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.user_id, tok.bot_id, tok.system_id) == (1, 2, 3, 4, 5, 6)
    assert [tok.token_to_id(n) for n in names[9:]] == [9, 10, 11, 12]
    assert tok.vocab_size <= 512 and tok.has_tool_tokens and tok.layout == "tools"
    # spec §6.1 model properties: digits split, byte fallback, whitespace kept, dummy prefix
    assert tok.tokens(tok.encode("2024")) == ["▁", "2", "0", "2", "4"]
    assert any(p.startswith("<0x") for p in tok.tokens(tok.encode("龘")))
    assert tok.decode(tok.encode("a  b\t\n c")) == "a  b\t\n c"


def test_115b_layout_has_no_tool_tokens(tok115):
    assert not tok115.has_tool_tokens and tok115.layout == "no-tools"
    assert tok115.id_to_token(9) == "<_control1>"
    with pytest.raises(TokenizerError, match="no <tool_call>"):
        tok115.token_to_id("<tool_call>")
    ids = tok115.encode("<tool_call>x</tool_call>")        # plain text there, never ids past the vocab
    assert max(ids) < tok115.vocab_size and 9 not in ids and 10 not in ids
    with pytest.raises(ct.TemplateError, match="vocab has none"):
        ct.render_ids(tok115, [{"role": "user", "content": "hi"}], tools=[{"name": "f"}])
    # the same conversation without tools renders fine
    assert ct.render_ids(tok115, [{"role": "user", "content": "hi"}])[0] == SYS


def test_dummy_prefix_per_segment(tok):
    """HF slow tokenizer: split at special tokens, encode each chunk separately (each gets a leading ▁)."""
    assert tok.encode("<_user>你好<_bot>") == [U] + sp(tok, "你好") + [B]
    assert tok.tokens(sp(tok, "你好"))[0].startswith("▁")
    assert tok.encode("\n") == sp(tok, "\n") and tok.tokens(tok.encode("\n")) == ["▁", "\n"]
    assert tok.encode("a<_end><_user>b") == sp(tok, "a") + [E_, U] + sp(tok, "b")
    # not the same as encoding the text in one piece: the chunk after a special gets its own ▁
    assert tok.encode("x<_bot>y") != sp(tok, "x") + [B] + sp(tok, "y")[1:]
    assert U not in tok.encode("<_user>hi", parse_special=False)
    assert tok.encode("<_unk>") != [0]                       # <_unk> is not recognised in text (HF list)


@pytest.mark.parametrize("text", ["你好，世界！", "Hello  world\t1234\n", " leading space", "trailing  ",
                                  "龘 rare 😀 chars", "<_user>q<_bot>a<_end>\n<tool_call>\n{}\n</tool_call>",
                                  "\n\n", ""])
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids, skip_special_tokens=False) == text
    stripped = text
    for special in ("<_user>", "<_bot>", "<_end>", "<tool_call>", "</tool_call>"):
        stripped = stripped.replace(special, "")
    assert tok.decode(ids) == stripped


def test_decode_drops_specials(tok):
    ids = [SYS] + sp(tok, "sys") + [U] + sp(tok, "q") + [B] + sp(tok, "a") + [E_, PAD, PAD, 7, 8]
    assert tok.decode(ids) == "sysqa"
    assert tok.decode(ids, skip_special_tokens=False) == "<_system>sys<_user>q<_bot>a<_end><_pad><_pad>" \
        "<_observation><_sep>"
    with pytest.raises(TokenizerError, match="outside the vocab"):
        tok.decode([tok.vocab_size])


def _check(tok, messages, want_text, want_ids, **kw):
    assert ct.render_text(messages, **kw) == want_text
    ids = ct.render_ids(tok, messages, **kw)
    assert ids == want_ids
    assert ids == tok.encode(want_text)                      # = HF: apply_chat_template text, then tokenize


def test_template_single_turn_default_system(tok):
    q = "生抽与老抽的区别？"
    _check(tok, [{"role": "user", "content": q}], f"<_system>{S}\n<_user>{q}<_bot>",
           [SYS] + sp(tok, S + "\n") + [U] + sp(tok, q) + [B], add_generation_prompt=True)
    assert START not in ct.render_ids(tok, [{"role": "user", "content": q}], add_generation_prompt=True)


def test_template_multi_turn(tok):
    msgs = [{"role": "user", "content": "q1"}, {"role": "bot", "content": "a1"}, {"role": "user", "content": "q2"}]
    _check(tok, msgs, f"<_system>{S}\n<_user>q1<_bot>a1<_end>\n<_user>q2<_bot>",
           [SYS] + sp(tok, S + "\n") + [U] + sp(tok, "q1") + [B] + sp(tok, "a1") + [E_] + sp(tok, "\n")
           + [U] + sp(tok, "q2") + [B], add_generation_prompt=True)


def test_template_system_message(tok):
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}]
    _check(tok, msgs, "<_system>You are terse.\n<_user>hi<_bot>hello<_end>\n",
           [SYS] + sp(tok, "You are terse.\n") + [U] + sp(tok, "hi") + [B] + sp(tok, "hello") + [E_]
           + sp(tok, "\n"))


def test_template_tools(tok):
    tool = {"name": "get_weather", "parameters": {"city": "string"}}
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}}
    msgs = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "天气？"},
            {"role": "assistant", "content": "查一下", "tool_calls": [call, {"name": "f", "arguments": "x"}]},
            {"role": "tool", "content": "晴"}, {"role": "tool", "content": "25度"},
            {"role": "assistant", "content": "晴，25度"}]
    tool_json = json.dumps(tool, ensure_ascii=False)
    call1 = '\n{"name": "get_weather", "arguments": {"city": "北京"}}\n'
    call2 = '\n{"name": "f", "arguments": "x"}\n'
    system = "SYS" + ct.TOOLS_HEADER + tool_json + "\n" + ct.TOOLS_FOOTER
    text = (f"<_system>{system}<_user>天气？<_bot>查一下<tool_call>{call1}</tool_call>\n<tool_call>{call2}"
            f"</tool_call><_end>\n<_user><tool_response>\n晴\n</tool_response>\n<tool_response>\n25度\n"
            f"</tool_response><_bot>晴，25度<_end>\n")
    # the system block's own "<tool_call>" literals are special tokens too (HF tokenizes the rendered text)
    head, rest = ct.TOOLS_FOOTER.split("<tool_call></tool_call>")
    mid, tail = rest.split("<tool_call>\n{")
    example, last = ("{" + tail).split("</tool_call>")
    sys_ids = (sp(tok, "SYS" + ct.TOOLS_HEADER + tool_json + "\n" + head) + [CALL, ECALL] + sp(tok, mid)
               + [CALL] + sp(tok, "\n" + example) + [ECALL] + sp(tok, last))
    ids = ([SYS] + sys_ids + [U] + sp(tok, "天气？") + [B] + sp(tok, "查一下") + [CALL] + sp(tok, call1) + [ECALL]
           + sp(tok, "\n") + [CALL] + sp(tok, call2) + [ECALL, E_] + sp(tok, "\n") + [U, RESP]
           + sp(tok, "\n晴\n") + [ERESP] + sp(tok, "\n") + [RESP] + sp(tok, "\n25度\n") + [ERESP, B]
           + sp(tok, "晴，25度") + [E_] + sp(tok, "\n"))
    _check(tok, msgs, text, ids, tools=[tool])


def test_training_labels(tok):
    msgs = [{"role": "user", "content": "q1"}, {"role": "bot", "content": "a1"},
            {"role": "user", "content": "q2"}, {"role": "bot", "content": "a2"}]
    ids, labels = ct.render_training(tok, msgs)
    trained = [i for i, lab in zip(ids, labels) if lab != -100]
    assert trained == sp(tok, "a1") + [E_] + sp(tok, "a2") + [E_]
    assert all(lab in (-100, i) for i, lab in zip(ids, labels))
    ids2, labels2 = ct.render_training(tok, msgs, train_turn_tokens=True)
    assert ids2 == ids
    trained2 = [i for i, lab in zip(ids, labels2) if lab != -100]
    assert trained2 == [U, B] + sp(tok, "a1") + [E_, U, B] + sp(tok, "a2") + [E_]
    mf_ids, mf_labels = ct.render_training(tok, msgs, style="mindformers")
    assert mf_ids == [START, U] + sp(tok, "q1") + [B] + sp(tok, "a1") + [E_, U] + sp(tok, "q2") + [B] \
        + sp(tok, "a2") + [E_]
    assert [i for i, lab in zip(mf_ids, mf_labels) if lab != -100] == trained


def test_template_errors(tok):
    with pytest.raises(ct.TemplateError, match="role"):
        ct.render_text([{"role": "robot", "content": "x"}])
    with pytest.raises(ct.TemplateError, match="only allowed first"):
        ct.render_text([{"role": "user", "content": "x"}, {"role": "system", "content": "s"}])
    with pytest.raises(ct.TemplateError, match="mindformers style"):
        ct.render_text([{"role": "tool", "content": "x"}], style="mindformers")


def test_loads_checkpoint_dir_with_added_tokens(tmp_path, tok115):
    """A 3B/7B-style download: tool tokens come from tokenizer_config.json added_tokens_decoder."""
    (tmp_path / "tokenizer.model").write_bytes(open(tok115.path, "rb").read())
    decoder = {str(i): {"content": c, "special": True} for i, c in
               [(1, "<_start>"), (2, "<_end>"), (3, "<_pad>"), (4, "<_user>"), (5, "<_bot>"), (6, "<_system>"),
                (9, "<tool_call>"), (10, "</tool_call>"), (11, "<tool_response>"), (12, "</tool_response>")]}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    t = TelechatTokenizer(str(tmp_path))
    assert t.has_tool_tokens and t.encode("<tool_call>x</tool_call>") == [9] + sp(t, "x") + [10]
    assert t.decode([9, 10], skip_special_tokens=False) == "<tool_call></tool_call>"
    decoder["600"] = {"content": "<tool_call>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    with pytest.raises(TokenizerError, match="outside the vocab"):
        TelechatTokenizer(str(tmp_path))


def test_rejects_non_telechat_model(tmp_path):
    import sentencepiece as spm
    model = tmp_path / "plain.model"
    with open(model, "wb") as fh:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(["hello world"] * 50), model_writer=fh,
                                       vocab_size=20, model_type="bpe", minloglevel=2)
    with pytest.raises(TokenizerError, match="not a TeleChat2 tokenizer"):
        TelechatTokenizer(str(model))
    with pytest.raises(TokenizerError, match="not found"):
        TelechatTokenizer(str(tmp_path / "missing.model"))


def test_shipped_tiny_tokenizer_is_reproducible(tmp_path):
    """Same pieces, types and scores (the serialized bytes also embed version-dependent trainer defaults)."""
    def pieces(t):
        return [(t.sp.IdToPiece(i), t.sp.GetScore(i), t.sp.IsControl(i), t.sp.IsByte(i)) for i in range(t.vocab_size)]
    fresh = TelechatTokenizer(train_tiny_tokenizer(str(tmp_path / "tiny.model")))
    assert pieces(fresh) == pieces(TelechatTokenizer(TINY)), \
        "data/tiny_tokenizer.model is stale: run python -m telechat_ms.data.tiny_tokenizer"
    assert os.path.getsize(TINY) < 64 * 1024


def test_offsets_and_common_interface(tok):
    """The interface every tokenizer kind shares (telechat_ms/data/tokenizer_base.py): offsets for loss masks,
    chat-template variables, and no BOS even with add_special_tokens."""
    text = "<_system>系统\n<_user>你好 world 龘<_bot>答<tool_call>x</tool_call><_end>\n"
    ids, offsets = tok.encode_with_offsets(text)
    assert ids == tok.encode(text)
    assert "".join(text[s:e] for s, e in offsets) == text           # every character once, in order
    for tid, (s, e) in zip(ids, offsets):
        if tid in tok.special_ids:
            assert text[s:e] == tok.id_to_token(tid)
    assert tok.encode_with_offsets("<_user>hi", parse_special=False)[0] == tok.encode("<_user>hi", False)
    assert tok.kind == "telechat2" and tok.encode("hi", add_special_tokens=True) == tok.encode("hi")
    assert tok.special_tokens_map["bos_token"] == "<_start>" and tok.special_tokens_map["eos_token"] == "<_end>"
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<_start>", "<_end>", "<_pad>")
