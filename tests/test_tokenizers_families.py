"""load_tokenizer for every family: our ids (and decoded text, special ids, bos/eos/pad) equal transformers'
tokenizer on the same files — SentencePiece (LlamaTokenizer, legacy on/off, added tokens with strip flags),
TeleChat-12B control pieces, GPT-2 BPE vocab/merges (GPT2TokenizerFast), tokenizer.json (AutoTokenizer,
PreTrainedTokenizerFast, LlamaTokenizerFast) — plus kind detection and file errors.
transformers is the independent reference here only; the package never imports it."""
import json
import os
import shutil

import pytest

from telechat_ms.data.tokenizer import TelechatTokenizer, TokenizerError, detect_kind, load_tokenizer
from tests import tiny_tokenizers as tt

SAMPLES = [
    "Hello world", " Hello  world ", "你好，世界！", "龘 rare 😀", "", " ", "\n\n", "a\tb\n c",
    "<s>[INST] q [/INST] a </s><s>[INST] q2 [/INST]", "你好<s>世界</s>", "a</s>b", "<unk>x", "▁x ▁y",
    "hi <added> there", "x<added>y", "a <lst> b <rst> c", "ab<sw>cd <sw> e", "<extra_sp> hi",
    "<|startofpiece|>q<|endofpiece|> a</s>", "### Human: hi###Assistant:", "[CLS]x[UNK]y",
]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tokenizers"))


def assert_same(ours, ref, samples=SAMPLES):
    """ids with and without special tokens, decode with and without skipping, and the special-token table."""
    for text in samples:
        for add in (True, False):
            assert ours.encode(text, add_special_tokens=add) == ref(text, add_special_tokens=add)["input_ids"], \
                (text, add)
        ids = ref(text)["input_ids"]
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), \
                (text, skip)
        got, offsets = ours.encode_with_offsets(text)
        assert got == ours.encode(text, add_special_tokens=False) and len(offsets) == len(got)
        assert all(0 <= s <= e <= len(text) for s, e in offsets)
    assert ours.vocab_size == len(ref)
    assert sorted(ours.special_ids) == sorted(ref.all_special_ids)
    assert (ours.bos_id, ours.eos_id, ours.pad_id, ours.unk_id) == \
        (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id, ref.unk_token_id)
    assert ours.special_tokens_map == ref.special_tokens_map
    for tid in range(ours.vocab_size):
        assert ours.id_to_token(tid) == ref.convert_ids_to_tokens(tid)


@pytest.mark.parametrize("legacy", [True, False])
def test_sentencepiece_equals_llama_tokenizer(root, legacy):
    from transformers import LlamaTokenizer
    directory = tt.llama_dir(root, legacy=legacy)
    ours = load_tokenizer(directory)
    assert ours.kind == "sentencepiece" and detect_kind(directory) == "sentencepiece"
    ref = LlamaTokenizer.from_pretrained(directory)
    assert_same(ours, ref)
    assert ours.encode("hi")[0] == ours.bos_id == 1                  # LlamaTokenizer adds BOS by default
    assert ours.token_to_id("<added>") == ref.convert_tokens_to_ids("<added>") >= 400


def test_sentencepiece_without_bos_and_bare_model(root):
    """FLM / TeleChat-52B: add_bos_token false; a bare tokenizer.model takes the model's own specials."""
    from transformers import LlamaTokenizer
    directory = tt.llama_dir(root, add_bos=False)
    assert_same(load_tokenizer(directory), LlamaTokenizer.from_pretrained(directory))
    bare = load_tokenizer(os.path.join(directory, "tokenizer.model"))
    ref = LlamaTokenizer(vocab_file=os.path.join(directory, "tokenizer.model"), legacy=True)
    assert_same(bare, ref, [s for s in SAMPLES if "<added>" not in s and "<lst>" not in s and "<sw>" not in s
                            and "<extra_sp>" not in s])


def test_telechat12b_control_pieces_are_tokens(root):
    """TeleChat-12B's <_user>/<_bot> are control pieces its config does not register: HF would split the text
    into plain pieces; we give them their ids (the official chat code inserts exactly these ids)."""
    from transformers import LlamaTokenizer
    directory = tt.telechat12b_dir(root)
    ours = load_tokenizer(directory)
    assert ours.kind == "sentencepiece" and not ours.encode("q")[0] == ours.bos_id      # add_bos_token false
    user, bot, end = (ours.token_to_id(t) for t in ("<_user>", "<_bot>", "<_end>"))
    q, a = ours.encode("q1", add_special_tokens=False), ours.encode("a1", add_special_tokens=False)
    assert ours.encode("<_user>q1<_bot>a1<_end>") == [user] + q + [bot] + a + [end]
    assert ours.decode([user] + q + [bot] + a + [end], skip_special_tokens=False) == "<_user>q1<_bot>a1<_end>"
    assert ours.decode(a + [end]) == "a1"                             # a generated answer decodes clean
    assert ours.decode([user] + q + [bot] + a + [end]) == "q1 a1"    # HF: skipped tokens join the runs
    ref = LlamaTokenizer.from_pretrained(directory, legacy=True)  # same files, no control-piece text
    plain = [s for s in SAMPLES if "<_" not in s]
    for text in plain:
        assert ours.encode(text) == ref(text)["input_ids"], text
    assert ref("<_user>")["input_ids"] != [user]                   # what HF does with the text


def test_telechat12b_single_word_config(root, tmp_path):
    """TeleChat-12B's published tokenizer_config.json marks <_end> (as unk) and <_start> single_word: HF merges
    "a<_end>" back into text and splits it into plain pieces; the control piece still becomes id 2 here."""
    from transformers import LlamaTokenizer
    directory = tmp_path / "t12"
    shutil.copytree(tt.telechat12b_dir(root), directory)
    word = {"__type": "AddedToken", "lstrip": False, "normalized": True, "rstrip": False, "single_word": True}
    tt.write_json(str(directory / "tokenizer_config.json"), {
        "tokenizer_class": "TelechatTokenizer", "add_bos_token": False, "add_eos_token": False,
        "eos_token": dict(word, content="<_start>"), "pad_token": dict(word, content="<_pad>"),
        "unk_token": dict(word, content="<_end>")})
    ours = load_tokenizer(str(directory))
    end = ours.token_to_id("<_end>")
    assert end == 2 and ours.encode("<_user>q<_bot>a<_end>")[-1] == end
    assert ours.encode("a <_end>")[-1] == end
    ref = LlamaTokenizer.from_pretrained(str(directory), legacy=True)
    assert ref("a<_end>")["input_ids"][-1] != end and ref("a <_end>")["input_ids"][-1] == end


def test_gpt2_bpe_pair_equals_gpt2_fast(root):
    """Aquila2 2023 layout (vocab.json + merges.txt, added_tokens.json, special_tokens_map.json)."""
    from transformers import GPT2TokenizerFast
    directory = tt.aquila_dir(root)
    ours = load_tokenizer(directory)
    assert ours.kind == "hf" and detect_kind(directory) == "hf"
    ref = GPT2TokenizerFast.from_pretrained(directory)
    assert_same(ours, ref)
    assert ours.bos_token == "[CLS]" and ours.eos_token == "</s>" and ours.pad_token == "<|endoftext|>"
    assert ours.encode("<|startofpiece|>q")[0] == ref.convert_tokens_to_ids("<|startofpiece|>")
    single = load_tokenizer(os.path.join(directory, "vocab.json"))       # the file itself, merges beside it
    assert single.encode("Hello world") == ref("Hello world")["input_ids"]


def test_tokenizer_json_equals_auto_and_bare_fast(root):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from transformers import GPT2TokenizerFast
    saved = os.path.join(root, "aquila_json")
    GPT2TokenizerFast.from_pretrained(tt.aquila_dir(root)).save_pretrained(saved)
    assert os.path.isfile(os.path.join(saved, "tokenizer.json"))
    assert_same(load_tokenizer(saved), AutoTokenizer.from_pretrained(saved))
    bare = os.path.join(root, "bare_json")
    os.makedirs(bare, exist_ok=True)
    shutil.copy(os.path.join(saved, "tokenizer.json"), bare)
    ref = PreTrainedTokenizerFast(tokenizer_file=os.path.join(bare, "tokenizer.json"))
    assert_same(load_tokenizer(os.path.join(bare, "tokenizer.json")), ref)
    assert load_tokenizer(bare).bos_id is None                    # no config: no special tokens known


def test_bloom_style_tokenizer_json(root):
    """TeleChat-7B: BloomTokenizerFast, tokenizer.json with the chat tokens as added tokens."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import AutoTokenizer
    directory = os.path.join(root, "telechat7b")
    tt.train_bpe(directory)
    from tokenizers import models
    backend = Tokenizer(models.BPE(*models.BPE.read_file(os.path.join(directory, "vocab.json"),
                                                          os.path.join(directory, "merges.txt"))))
    from tokenizers import decoders, pre_tokenizers
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True) for t in ("<_user>", "<_bot>", "<_start>", "<_end>")])
    backend.save(os.path.join(directory, "tokenizer.json"))
    tt.write_json(os.path.join(directory, "tokenizer_config.json"), {
        "tokenizer_class": "BloomTokenizerFast", "unk_token": "<unk>", "eos_token": "<_end>",
        "bos_token": "<_start>", "pad_token": "<pad>", "padding_side": "left"})
    ours = load_tokenizer(directory)
    ref = AutoTokenizer.from_pretrained(directory)
    assert type(ref).__name__ == "BloomTokenizerFast" and ours.kind == "hf"
    assert_same(ours, ref, SAMPLES + ["<_user>你好<_bot>a<_end>"])
    assert ours.token_to_id("<pad>") == ref.pad_token_id >= 400        # missing specials get new ids, as in HF


@pytest.mark.parametrize("legacy", [True, False])
def test_llama_tokenizer_json_equals_llama_fast(root, legacy):
    from transformers import LlamaTokenizerFast
    saved = os.path.join(root, f"llama_fast_{legacy}")
    LlamaTokenizerFast.from_pretrained(tt.llama_dir(root, legacy=legacy)).save_pretrained(saved)
    assert detect_kind(saved) == "sentencepiece"          # a SentencePiece class with its tokenizer.model
    assert_same(load_tokenizer(saved, "hf"), LlamaTokenizerFast.from_pretrained(saved))


def test_detection_and_telechat2(root):
    from telechat_ms.data.tiny_tokenizer import REPO_DATA
    tiny = str(REPO_DATA / "tiny_tokenizer.model")
    assert detect_kind(tiny) == "telechat2" and isinstance(load_tokenizer(tiny), TelechatTokenizer)
    assert isinstance(load_tokenizer(tiny, "auto"), TelechatTokenizer)
    generic = load_tokenizer(tiny, "sentencepiece")                 # the same file as a generic SP model
    assert generic.encode("你好", add_special_tokens=False) == load_tokenizer(tiny).encode("你好")
    with pytest.raises(TokenizerError, match="unknown tokenizer kind 'wordpiece'"):
        load_tokenizer(tiny, "wordpiece")


def test_file_errors_name_the_file(root, tmp_path):
    with pytest.raises(TokenizerError, match="no such tokenizer file or checkpoint directory"):
        load_tokenizer(str(tmp_path / "missing"))
    with pytest.raises(TokenizerError, match="no tokenizer found"):
        load_tokenizer(str(tmp_path))
    bad_model = tmp_path / "bad" / "tokenizer.model"
    bad_model.parent.mkdir()
    bad_model.write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match=f"{bad_model}: not a SentencePiece model"):
        load_tokenizer(str(bad_model.parent), "sentencepiece")
    bad_json = tmp_path / "badjson"
    bad_json.mkdir()
    (bad_json / "tokenizer.json").write_text("{", encoding="utf-8")
    with pytest.raises(TokenizerError, match="tokenizer.json: not a valid tokenizers JSON file"):
        load_tokenizer(str(bad_json))
    broken = tmp_path / "broken"
    shutil.copytree(tt.llama_dir(root), broken)
    (broken / "tokenizer_config.json").write_text('{"add_bos_token": tru}', encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"tokenizer_config.json: invalid JSON: .* \(line 1, column"):
        load_tokenizer(str(broken))
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(os.path.join(tt.aquila_dir(root), "vocab.json"), lonely)
    with pytest.raises(TokenizerError, match="merges.txt: tokenizer file not found"):
        load_tokenizer(str(lonely))
    (broken / "tokenizer_config.json").write_text(json.dumps({"bos_token": 5}), encoding="utf-8")
    with pytest.raises(TokenizerError, match="bos_token: expected a token string"):
        load_tokenizer(str(broken))
