"""Tiny tokenizer files of each kind, built in tests: a Llama-style SentencePiece model, a TeleChat-12B-style
one (control pieces <_user>/<_bot> that the config does not register), and a GPT-2 byte-level BPE pair
(vocab.json + merges.txt) trained with the `tokenizers` library. Checkpoint directories get the
tokenizer_config.json / special_tokens_map.json / added_tokens.json a real checkpoint of that family has."""
import io
import json
import os

CORPUS = [
    "Hello world, this is a tiny tokenizer for the model families of telechat_ms.",
    "你好，世界！今天天气很好，我们一起去公园散步吧。请用一句话回答下面的问题。",
    "[INST] What is the answer? [/INST] The answer is forty-two.",
    "### Human: tell me a joke###Assistant: no jokes today",
    "The quick brown fox jumps over the lazy dog 12345 67890.",
    "  leading spaces, trailing spaces  \tand tabs\nand newlines\n",
    "A chat between a curious human and an artificial intelligence assistant.",
]


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, ensure_ascii=False)


def train_sp(path, control=(), user_defined=(), vocab_size=420, pieces=("<unk>", "<s>", "</s>")):
    """A byte-fallback SentencePiece BPE model with unk/bos/eos at 0/1/2 (no pad piece), like Llama's."""
    import sentencepiece as spm
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        character_coverage=1.0, byte_fallback=True, num_threads=1, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, hard_vocab_limit=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, unk_piece=pieces[0], bos_piece=pieces[1], eos_piece=pieces[2],
        control_symbols=list(control), user_defined_symbols=list(user_defined), minloglevel=2)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(model.getvalue())
    return path


def llama_dir(root, legacy=True, add_bos=True, extra_config=None):
    """A Llama-2 / Firefly style checkpoint directory: tokenizer.model + tokenizer_config.json written by
    transformers' LlamaTokenizer.save_pretrained, with added tokens carrying lstrip / rstrip / single_word."""
    from transformers import AddedToken, LlamaTokenizer
    src = os.path.join(root, "src")
    if not os.path.isfile(os.path.join(src, "tokenizer.model")):
        train_sp(os.path.join(src, "tokenizer.model"))
    config = {"tokenizer_class": "LlamaTokenizer", "legacy": legacy, "add_bos_token": add_bos,
              "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "pad_token": None, **(extra_config or {})}
    write_json(os.path.join(src, "tokenizer_config.json"), config)
    tok = LlamaTokenizer.from_pretrained(src)
    tok.add_tokens(["<added>", AddedToken("<lst>", lstrip=True), AddedToken("<rst>", rstrip=True),
                    AddedToken("<sw>", single_word=True)])
    tok.add_special_tokens({"additional_special_tokens": ["<extra_sp>"]})
    out = os.path.join(root, f"llama_legacy{legacy}_bos{add_bos}")
    tok.save_pretrained(out)
    return out


def telechat12b_dir(root):
    """TeleChat-12B layout: <_start>/<_end>/<_pad> at 1-3, control pieces <_user> <_bot> <_system> not in the
    tokenizer_config (they are inserted as ids by the official chat code), add_bos_token false."""
    out = os.path.join(root, "telechat12b")
    reserved = [f"<_reserved{i}>" for i in range(4, 20)]          # puts <_user> at 20 as in the real model
    train_sp(os.path.join(out, "tokenizer.model"), control=["<_pad>"] + reserved + ["<_user>", "<_bot>", "<_system>"],
             pieces=("<_unk>", "<_start>", "<_end>"))
    write_json(os.path.join(out, "tokenizer_config.json"), {
        "tokenizer_class": "TelechatTokenizer", "add_bos_token": False, "add_eos_token": False,
        "bos_token": "<_start>", "eos_token": "<_end>", "unk_token": "<_unk>", "pad_token": "<_pad>"})
    return out


def train_bpe(directory, vocab_size=400):
    """vocab.json + merges.txt of a GPT-2 style byte-level BPE."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    os.makedirs(directory, exist_ok=True)
    tok.model.save(directory)
    return directory


AQUILA_ADDED = ["<|startofpiece|>", "<|endofpiece|>", "[CLS]", "</s>", "[UNK]"]


def aquila_dir(root):
    """Aquila2 (2023) layout: GPT2Tokenizer, vocab.json + merges.txt, added tokens after the BPE vocab,
    bos [CLS], eos </s>, unk/pad <|endoftext|> (special_tokens_map.json + added_tokens.json, no
    added_tokens_decoder: the legacy files are what HF reads)."""
    out = train_bpe(os.path.join(root, "aquila"))
    with open(os.path.join(out, "vocab.json"), encoding="utf-8") as fh:
        size = len(json.load(fh))
    write_json(os.path.join(out, "added_tokens.json"), {t: size + i for i, t in enumerate(AQUILA_ADDED)})
    write_json(os.path.join(out, "special_tokens_map.json"), {
        "bos_token": "[CLS]", "eos_token": "</s>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "additional_special_tokens": ["[UNK]"]})
    write_json(os.path.join(out, "tokenizer_config.json"), {"tokenizer_class": "GPT2Tokenizer",
                                                            "add_prefix_space": False})
    return out
