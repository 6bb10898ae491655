"""Chat templates: our jinja rendering equals transformers' apply_chat_template (text, ids, assistant masks) on
TeleChat2's official template, a Llama-2 and an Aquila template and a template using every HF feature;
the built-in templates render the spec's strings; loss masks cover exactly the assistant answers (and their
end markers) for every built-in; template resolution; stop strings."""
import json
import os

import pytest

from telechat_ms.data import chat_template as ct
from telechat_ms.data.stops import answer_text, cut_at_stop, find_stop, has_stop, stop_strings_for
from telechat_ms.data.templates import AQUILA_SYSTEM, BUILTIN_TEMPLATES, DEFAULT_SYSTEM_PROMPT, TOOLS_FOOTER, \
    TOOLS_HEADER
from telechat_ms.data.tiny_tokenizer import REPO_DATA
from telechat_ms.data.tokenizer import load_tokenizer
from tests import tiny_tokenizers as tt

TINY = str(REPO_DATA / "tiny_tokenizer.model")
Q2 = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
      {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "天气",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}

# TeleChat2's official template (spec telechat2.md §6.2(a)), written out independently of the built-in
_J = json.dumps
TELECHAT2_SPEC = """
{%- if tools %}
    {%- if messages[0]['role'] == 'system' %}{{- '<_system>' + messages[0]['content'] }}
    {%- else %}{{- '<_system>' + """ + _J(DEFAULT_SYSTEM_PROMPT, ensure_ascii=False) + """ }}{%- endif %}
    {{- """ + _J(TOOLS_HEADER, ensure_ascii=False) + """ }}
    {%- for tool in tools %}
        {{- tool | tojson }}
        {{- '\\n' }}
    {%- endfor %}
    {{- """ + _J(TOOLS_FOOTER, ensure_ascii=False) + """ }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}{{- '<_system>' + messages[0]['content'] + '\\n' }}
    {%- else %}{{- '<_system>' + """ + _J(DEFAULT_SYSTEM_PROMPT + "\n", ensure_ascii=False) + """ }}{%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'user' %}
        {{- '<_user>' + message.content }}
    {%- elif message.role == 'bot' or message.role == 'assistant' %}
        {{- '<_bot>' }}
        {%- if message.content %}{{- message.content }}{%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
            {%- if loop.index0 == 0 %}{{- '<tool_call>' }}{%- else %}{{- '\\n<tool_call>' }}{%- endif %}
            {{- '\\n{"name": "' }}{{ tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<_end>\\n' }}
    {%- elif message.role == 'tool' %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != 'tool') %}
            {{- '<_user>' + '<tool_response>\\n' }}
        {%- else %}
            {{- '\\n<tool_response>\\n' }}
        {%- endif %}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<_bot>' }}{%- endif %}
"""

# the Llama-2 chat template as published with meta-llama/Llama-2-*-chat-hf (HF format)
LLAMA2_HF = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

# every rendering feature HF provides: generation blocks, loop controls, tojson options, tools, strftime_now
FEATURES = """{{- bos_token }}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}{{ '[SYS] ' + message['content'] + '\\n' }}
    {%- elif message['role'] == 'user' %}{{ '[U] ' + message['content'] + '\\n' }}
    {%- elif message['role'] == 'assistant' %}{{ '[A] ' }}
        {%- generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\\n' }}
    {%- else %}{{ raise_exception('unknown role ' + message['role']) }}
    {%- endif %}
    {%- if loop.index0 >= 6 %}{% break %}{% endif %}
{%- endfor %}
{%- if tools %}{{ 'TOOLS ' + (tools | tojson(indent=2)) + '\\n' }}{% endif %}
{%- if add_generation_prompt %}{{ '[A] ' }}{% endif %}
{{- '' if (strftime_now('%Y') | length) == 4 else raise_exception('no date') }}"""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("templates"))


@pytest.fixture(scope="module")
def telechat2():
    """Our TeleChat2 tokenizer and transformers' slow tokenizer on the same model (legacy, no BOS)."""
    from transformers import LlamaTokenizer
    ref = LlamaTokenizer(vocab_file=TINY, legacy=True, add_bos_token=False, bos_token="<_start>",
                         eos_token="<_end>", unk_token="<_unk>", pad_token="<_pad>",
                         additional_special_tokens=["<_user>", "<_bot>", "<_system>", "<tool_call>", "</tool_call>",
                                                    "<tool_response>", "</tool_response>"])
    return load_tokenizer(TINY), ref


@pytest.fixture(scope="module")
def llama(root):
    from transformers import LlamaTokenizer
    directory = tt.llama_dir(root, legacy=False)
    return load_tokenizer(directory), LlamaTokenizer.from_pretrained(directory), directory


@pytest.fixture(scope="module")
def aquila(root):
    from transformers import GPT2TokenizerFast
    directory = tt.aquila_dir(root)
    return load_tokenizer(directory), GPT2TokenizerFast.from_pretrained(directory), directory


CONVERSATIONS = [
    [{"role": "user", "content": "生抽与老抽的区别？"}],
    [{"role": "system", "content": "You are terse."}] + Q2,
    Q2[:3],
    [{"role": "user", "content": "  spaced question  "}, {"role": "assistant", "content": " spaced answer "}],
]


def same_as_hf(ours, ref, template: str, messages, **kw):
    """Text and ids equal transformers' for both add_generation_prompt values; returns the text without."""
    texts = []
    for gen in (False, True):
        text = ref.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=gen,
                                       **kw)
        chat = ct.ChatTemplate("test", template)
        assert ct.render_text(messages, chat, add_generation_prompt=gen, tokenizer=ours, **kw) == text
        ids = ref.apply_chat_template(messages, chat_template=template, tokenize=True, add_generation_prompt=gen,
                                      **kw)
        assert ct.render_ids(ours, messages, chat, add_generation_prompt=gen, **kw) == ids
        texts.append(text)
    return texts[0]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_telechat2_official_template_equals_hf(telechat2, messages):
    ours, ref = telechat2
    text = same_as_hf(ours, ref, TELECHAT2_SPEC, messages)
    assert ct.render_text(messages, "telechat2") == text            # the built-in is the official template


def test_telechat2_official_template_with_tools_equals_hf(telechat2):
    ours, ref = telechat2
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}}
    messages = [{"role": "user", "content": "天气？"},
                {"role": "assistant", "content": "查一下", "tool_calls": [call, call]},
                {"role": "tool", "content": "晴"}, {"role": "tool", "content": "25度"},
                {"role": "assistant", "content": "晴，25度"}]
    text = same_as_hf(ours, ref, TELECHAT2_SPEC, messages, tools=[TOOL])
    assert ct.render_text(messages, "telechat2", tools=[TOOL]) == text


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_llama2_template_equals_hf(llama, messages):
    ours, ref, _ = llama
    text = same_as_hf(ours, ref, LLAMA2_HF, messages)
    assert ct.render_text(messages, "llama2", tokenizer=ours) == text   # built-in = Meta's format


@pytest.mark.parametrize("name", ["aquila-chat", "aquila", "aquila-legacy", "aquila-v1", "aquila-v2"])
def test_aquila_templates_equal_hf(aquila, name):
    ours, ref, _ = aquila
    for messages in CONVERSATIONS[:3]:
        same_as_hf(ours, ref, BUILTIN_TEMPLATES[name].source, messages)


def test_every_hf_feature_and_assistant_masks_equal_hf(llama, root):
    """HF computes assistant masks with a fast tokenizer's char_to_token: compare on LlamaTokenizerFast."""
    from transformers import LlamaTokenizerFast
    saved = os.path.join(root, "llama_fast_features")
    LlamaTokenizerFast.from_pretrained(llama[2]).save_pretrained(saved)
    ours, ref = load_tokenizer(saved, "hf"), LlamaTokenizerFast.from_pretrained(saved)
    messages = [{"role": "system", "content": "S"}] + Q2
    same_as_hf(ours, ref, FEATURES, messages, tools=[TOOL])
    same_as_hf(llama[0], llama[1], FEATURES, messages, tools=[TOOL])          # and the slow pair
    out = ref.apply_chat_template(messages, chat_template=FEATURES, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    ids, labels = ct.render_training(ours, messages, ct.ChatTemplate("features", FEATURES))
    assert ids == out["input_ids"]
    assert [int(label != -100) for label in labels] == out["assistant_masks"]
    with pytest.raises(ct.TemplateError, match="unknown role robot"):
        ct.render_text([{"role": "robot", "content": "x"}], ct.ChatTemplate("features", FEATURES), tokenizer=ours)


def test_checkpoint_template_is_used_and_file_wins(llama, tmp_path):
    import shutil
    from transformers import LlamaTokenizer
    ours, _, directory = llama
    ckpt = tmp_path / "ckpt"
    shutil.copytree(directory, ckpt)
    config = json.loads((ckpt / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = LLAMA2_HF
    (ckpt / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    chat = ct.resolve_template(None, str(ckpt), default="firefly")
    assert chat.source == LLAMA2_HF and "tokenizer_config.json" in chat.name
    ref = LlamaTokenizer.from_pretrained(str(ckpt))
    assert ct.render_text(Q2, chat, tokenizer=ours) == ref.apply_chat_template(Q2, tokenize=False)
    (ckpt / "chat_template.jinja").write_text("{{ bos_token }}{% for m in messages %}{{ m['content'] }}|"
                                              "{% endfor %}", encoding="utf-8")
    ref = LlamaTokenizer.from_pretrained(str(ckpt))
    chat = ct.resolve_template(None, str(ckpt / "tokenizer.model"))
    assert ct.render_text(Q2, chat, tokenizer=ours) == ref.apply_chat_template(Q2, tokenize=False) == "<s>q1|a1|q2|a2|"
    config["chat_template"] = [{"name": "default", "template": "D"}, {"name": "tool_use", "template": "T"}]
    (ckpt / "chat_template.jinja").unlink()
    (ckpt / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    assert ct.resolve_template(None, str(ckpt)).source == "D"
    assert ct.resolve_template(None, str(ckpt), tools=True).source == "T"


# ---- built-in templates render the spec's strings -----------------------------------------------------------
LEGACY = AQUILA_SYSTEM + "\n\n"
SPEC = {   # name: (multi-turn training text, prompt for the next question)
    "telechat2": (f"<_system>{DEFAULT_SYSTEM_PROMPT}\n<_user>q1<_bot>a1<_end>\n<_user>q2<_bot>a2<_end>\n",
                  f"<_system>{DEFAULT_SYSTEM_PROMPT}\n<_user>q1<_bot>a1<_end>\n<_user>q2<_bot>"),
    "telechat2-mindformers": ("<_start><_user>q1<_bot>a1<_end><_user>q2<_bot>a2<_end>",
                              "<_start><_user>q1<_bot>a1<_end><_user>q2<_bot>"),
    "telechat1": ("<_user>q1<_bot>a1<_end><_user>q2<_bot>a2<_end>", "<_user>q1<_bot>a1<_end><_user>q2<_bot>"),
    "telechat52b": ("<_user>q1<_bot>a1<_end><_user>q2<_bot>a2</s>", "<_user>q1<_bot>a1<_end><_user>q2<_bot>"),
    "aquila-chat": (f"{AQUILA_SYSTEM}###Human: q1###Assistant: a1###Human: q2###Assistant: a2###",
                    f"{AQUILA_SYSTEM}###Human: q1###Assistant: a1###Human: q2###Assistant: "),
    "aquila": (f"{AQUILA_SYSTEM}###Human: q1###Assistant: a1</s>Human: q2###Assistant: a2</s>",
               f"{AQUILA_SYSTEM}###Human: q1###Assistant: a1</s>Human: q2###Assistant: "),
    "aquila-legacy": (f"{LEGACY}### Human: q1\n### Assistant: a1</s>### Human: q2\n### Assistant: a2</s>",
                      f"{LEGACY}### Human: q1\n### Assistant: a1</s>### Human: q2\n### Assistant:  "),
    "aquila-v1": ("<|startofpiece|>q1<|endofpiece|>a1</s><|startofpiece|>q2<|endofpiece|>a2</s>",
                  "<|startofpiece|>q1<|endofpiece|>a1</s><|startofpiece|>q2<|endofpiece|> "),
    "aquila-v2": (f"{LEGACY}<|startofpiece|>q1<|endofpiece|>a1</s><|startofpiece|>q2<|endofpiece|>a2</s>",
                  f"{LEGACY}<|startofpiece|>q1<|endofpiece|>a1</s><|startofpiece|>q2<|endofpiece|> "),
    "firefly": ("<s>q1</s>a1</s>q2</s>a2</s>", "<s>q1</s>a1</s>q2</s>"),
    "llama2": ("<s>[INST] q1 [/INST] a1 </s><s>[INST] q2 [/INST] a2 </s>",
               "<s>[INST] q1 [/INST] a1 </s><s>[INST] q2 [/INST]"),
}
SPECIALS = {"bos_token": "<s>", "eos_token": "</s>"}


def test_every_builtin_is_specified():
    assert sorted(SPEC) == sorted(BUILTIN_TEMPLATES)


@pytest.mark.parametrize("name", sorted(SPEC))
def test_builtin_renders_the_spec(name):
    full, prompt = SPEC[name]
    chat = ct.resolve_template(name)
    assert chat.render(Q2, special_tokens=SPECIALS) == full
    assert chat.render(Q2[:3], add_generation_prompt=True, special_tokens=SPECIALS) == prompt


def test_builtin_system_messages():
    system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}]
    assert ct.render_text(system, "telechat2", add_generation_prompt=True) == "<_system>Be brief.\n<_user>q<_bot>"
    assert ct.render_text(system, "telechat1", add_generation_prompt=True) == "Be brief.<_user>q<_bot>"
    assert ct.render_text(system, "aquila-chat", add_generation_prompt=True) == "Be brief.###Human: q###Assistant: "
    assert ct.render_text(system, "llama2", add_generation_prompt=True,
                          bos_token="<s>") == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nq [/INST]"
    with pytest.raises(ct.TemplateError, match="firefly template has no system prompt"):
        ct.render_text(system, "firefly", bos_token="<s>", eos_token="</s>")
    with pytest.raises(ct.TemplateError, match="roles must alternate"):
        ct.render_text([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "llama2",
                       bos_token="<s>", eos_token="</s>")


# ---- loss masks ------------------------------------------------------------------------------------------
def trained_runs(tok, ids, labels):
    runs, current = [], []
    for tid, label in zip(ids, labels):
        if label != -100:
            assert label == tid
            current.append(tid)
        elif current:
            runs.append(current)
            current = []
    return [tok.decode(r, skip_special_tokens=False).strip() for r in runs + ([current] if current else [])]


@pytest.fixture(scope="module")
def tokenizers(root, telechat2, llama, aquila):
    return {"telechat2": telechat2[0], "llama": load_tokenizer(tt.llama_dir(root, legacy=True)),
            "flm": load_tokenizer(tt.llama_dir(root, add_bos=False)), "aquila": aquila[0],
            "telechat12b": load_tokenizer(tt.telechat12b_dir(root))}


MASKS = {   # name: (tokenizer, trained runs of Q2)
    "telechat2": ("telechat2", ["a1<_end>", "a2<_end>"]),
    "telechat2-mindformers": ("telechat2", ["a1<_end>", "a2<_end>"]),
    "telechat1": ("telechat12b", ["a1<_end>", "a2<_end>"]),
    # the history answer is rendered with <_end>, the last with </s>: the differing end is not trained
    "telechat52b": ("flm", ["a1", "a2</s>"]),
    "aquila-chat": ("aquila", ["a1###", "a2###"]),
    "aquila": ("aquila", ["a1</s>", "a2</s>"]),
    "aquila-legacy": ("aquila", ["a1</s>", "a2</s>"]),
    "aquila-v1": ("aquila", ["a1</s>", "a2</s>"]),
    "aquila-v2": ("aquila", ["a1</s>", "a2</s>"]),
    "firefly": ("llama", ["a1</s>", "a2</s>"]),
    "llama2": ("llama", ["a1 </s>", "a2 </s>"]),
}


def test_every_builtin_has_a_mask_case():
    assert sorted(MASKS) == sorted(BUILTIN_TEMPLATES)


@pytest.mark.parametrize("name", sorted(MASKS))
def test_loss_mask_covers_exactly_the_answers(tokenizers, name):
    kind, want = MASKS[name]
    tok = tokenizers[kind]
    ids, labels = ct.render_training(tok, Q2, name)
    assert ids == ct.render_ids(tok, Q2, name)
    assert trained_runs(tok, ids, labels) == want


def test_loss_mask_long_answers_and_tools(tokenizers):
    tok = tokenizers["telechat2"]
    answer = "今天天气很好，我们一起去公园散步吧。" * 3
    ids, labels = ct.render_training(tok, [{"role": "user", "content": "q"}, {"role": "assistant",
                                                                             "content": answer}])
    assert trained_runs(tok, ids, labels) == [answer + "<_end>"]
    call = {"name": "f", "arguments": {"x": 1}}
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": "r"}, {"role": "assistant", "content": "done"}]
    ids, labels = ct.render_training(tok, messages, tools=[TOOL])
    assert trained_runs(tok, ids, labels) == ['<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call><_end>',
                                              "done<_end>"]
    ids, labels = ct.render_training(tok, messages, tools=[TOOL], train_turn_tokens=True)
    assert trained_runs(tok, ids, labels)[:2] == ["<_user>", "<_bot><tool_call>\n{\"name\": \"f\", \"arguments\": "
                                                  "{\"x\": 1}}\n</tool_call><_end>"]


# ---- resolution -----------------------------------------------------------------------------------------
def test_resolve_template(tmp_path, llama):
    assert ct.resolve_template("chat").name == "telechat2" and ct.resolve_template("mindformers").name == \
        "telechat2-mindformers"
    path = tmp_path / "mine.jinja"
    path.write_text("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}", encoding="utf-8")
    chat = ct.resolve_template(str(path))
    assert chat.name == str(path) and ct.render_text(Q2[:1], chat) == "<user>q1"
    _, _, directory = llama                                # a checkpoint without chat_template
    assert ct.resolve_template(None, directory, default="llama2").name == "llama2"
    with pytest.raises(ct.TemplateError, match="no chat template: the checkpoint has none"):
        ct.resolve_template(None, directory)
    with pytest.raises(ct.TemplateError, match="neither a built-in template .*telechat2.* nor a file"):
        ct.resolve_template("nonesuch")
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}", encoding="utf-8")
    with pytest.raises(ct.TemplateError, match=f"chat template {bad}: jinja syntax error at line 1"):
        ct.resolve_template(str(bad))


def test_sandbox_refuses_unsafe_templates():
    chat = ct.ChatTemplate("evil", "{{ messages.__class__.__mro__ }}")
    with pytest.raises(ct.TemplateError, match="evil"):
        ct.render_text(Q2, chat)


# ---- stop strings ---------------------------------------------------------------------------------------
def test_stop_strings(tokenizers):
    assert stop_strings_for("aquila-chat", ["###", "<stop>"], None) == ["###", "</s>", "[UNK]", "<stop>"]
    assert stop_strings_for(None, ["", "x"]) == ["x"]
    assert find_stop("ab###c</s>", ["</s>", "###"]) == 2 and find_stop("abc", ["#"]) == -1
    assert cut_at_stop("ab###c", ["###"]) == "ab" and cut_at_stop("abc", []) == "abc"
    tok = tokenizers["aquila"]
    ids = tok.encode("good answer###Human: next[UNK]more", add_special_tokens=False)
    assert answer_text(tok, ids, ["###"]) == ("good answer", True)
    unk = tok.encode("good answer[UNK]more</s>", add_special_tokens=False)
    assert tok.decode(unk) == "good answermore"               # a special stop string is invisible when skipped
    assert answer_text(tok, unk, ["[UNK]", "</s>"]) == ("good answer", True) and has_stop(tok, unk, ["[UNK]"])
    assert answer_text(tok, unk, []) == ("good answermore", False) and not has_stop(tok, unk, ["###"])
    llama = tokenizers["llama"]
    ids = llama.encode("hello world</s>junk", add_special_tokens=False)
    assert answer_text(llama, ids, ["</s>"]) == ("hello world", True)
    assert answer_text(llama, ids[:3], ["</s>"]) == (llama.decode(ids[:3]), False)


def test_loss_mask_edge_conversations(tokenizers):
    tok = tokenizers["telechat2"]
    ids, labels = ct.render_training(tok, [{"role": "assistant", "content": "hello"},
                                           {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    assert trained_runs(tok, ids, labels) == ["hello<_end>", "a<_end>"]
    ids, labels = ct.render_training(tok, [{"role": "user", "content": "q"}])        # nothing to learn
    assert set(labels) == {-100}
    with pytest.raises(ct.TemplateError, match="non-empty list"):
        ct.render_training(tok, [])


# ---- chat sessions with any template (generation scripted: the model is not what is tested here) ---------
def test_chat_session_uses_template_and_stop_strings(tokenizers, monkeypatch):
    from types import SimpleNamespace

    import telechat_ms.infer.chat as chat_module
    from telechat_ms.config.generation import GenerationConfig
    from telechat_ms.infer.generate import GenerationResult
    tok = tokenizers["aquila"]
    script = tok.encode("Fine, thanks.###Human: more", add_special_tokens=False)
    seen = []

    def scripted(model, prompts, config, max_len, on_token=None, stop_check=None):
        seen.append(prompts[0])
        result = GenerationResult(tokens=[[]], stop_reason=["length"])
        for token in script:
            result.tokens[0].append(token)
            on_token(0, token)
            if stop_check is not None and stop_check(0, result.tokens[0]):
                result.stop_reason[0] = "stop_string"
                break
        return result

    monkeypatch.setattr(chat_module, "generate", scripted)
    model = SimpleNamespace(config=SimpleNamespace(vocab_size=tok.vocab_size, eos_token_id=tok.eos_id,
                                                   pad_token_id=tok.pad_id, seq_length=512))
    session = chat_module.ChatSession(model, tok, GenerationConfig(eos_token_id=[tok.eos_id]), template="aquila-chat")
    streamed = []
    answer, result = session.ask("How are you?", on_text=streamed.append)
    assert answer == "Fine, thanks." == "".join(streamed) and result.stop_reason == ["stop_string"]
    assert seen[0] == ct.render_ids(tok, [{"role": "user", "content": "How are you?"}], "aquila-chat",
                                    add_generation_prompt=True)
    session.ask("And you?")
    assert tok.decode(seen[1]).endswith("###Human: How are you?###Assistant: Fine, thanks.###Human: And you?"
                                        "###Assistant: ")
    assert session.stop_strings == ["###", "</s>", "[UNK]"]
