"""Streaming text: incremental detokenisation on byte-level BPE, stop strings and stop tokens."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from c2cq.services.executor.model.detokenizer import IncrementalDetokenizer
from c2cq.services.executor.model.engine import Engine
from c2cq.services.executor.model.sampler import SamplingParams
from c2cq.services.executor.model.stop import StopText

from .conftest import drain, prompt, token_ids

CORPUS = ["Le café est très bon. Ça coûte cinq euros à Paris.",
          "日本語のテキストです。日本は島国です。",
          "Emoji time 😀🎉 and more 😀 fun!", "The quick brown fox jumps over the lazy dog."] * 20


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """A byte-level BPE of 307 tokens (the tiny models' vocab): rare multi-byte chars stay split."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=307, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<eos>"], show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return tok


@pytest.mark.parametrize("text", ["café 日本 😀🎉 fin", "éàç", "🎉🎉 x 日本語", "plain ascii"])
def test_stream_concatenates_to_decode_without_broken_chars(tokenizer, text):
    prompt_ids = tokenizer.encode("Bonjour ").ids
    out_ids = tokenizer.encode(text).ids
    detok = IncrementalDetokenizer(tokenizer, prompt_ids)
    pieces = [detok.add(t) for t in out_ids] + [detok.flush()]
    assert "".join(pieces) == tokenizer.decode(prompt_ids + out_ids)[len(tokenizer.decode(prompt_ids)):]
    assert all("\ufffd" not in p for p in pieces)
    if text != "plain ascii":  # a multi-byte char split over tokens was held back, then emitted whole
        assert "" in pieces[:-1]


def test_stop_text_holds_back_a_possible_stop_prefix():
    st = StopText(("END", "xy"))
    assert st.add("abcE") == "abc"
    assert st.add("N") == ""
    assert st.add("X") == "ENX"
    assert st.add("aEN") == "a"
    assert st.add("D tail") == "" and st.stopped
    assert st.text == "abcENXa"


def _engine(ck, tokenizer, config=None):
    return Engine(config or ck.config, ck.tensors, tokenizer.to_str().encode(), kv_blocks=32, block_size=4)


def _run(engine, params):
    engine.add("r", prompt(3, 6), params)
    return drain(engine, 16)["r"]


def test_engine_streams_text_and_cuts_at_a_stop_string(checkpoints, tokenizer):
    ck = checkpoints("qwen2_tied")
    free = _run(_engine(ck, tokenizer), SamplingParams(max_tokens=24))
    text = "".join(o.text_delta for o in free)
    assert len(text) >= 10
    stop = text[6:9]
    cut = _run(_engine(ck, tokenizer), SamplingParams(max_tokens=24, stop=(stop,)))
    assert "".join(o.text_delta for o in cut) == text[:text.find(stop)]
    assert cut[-1].finished and cut[-1].finish_reason == "stop"
    assert len(cut) < len(free)


def test_stop_token_ids_and_eos_list(checkpoints, tokenizer):
    ck = checkpoints("qwen2_tied")
    ids = token_ids(_run(_engine(ck, tokenizer), SamplingParams(max_tokens=20)))
    stop_id = ids[7]
    first = ids.index(stop_id)
    by_param = _run(_engine(ck, tokenizer), SamplingParams(max_tokens=20, stop_token_ids=(stop_id,)))
    assert token_ids(by_param) == ids[:first + 1] and by_param[-1].finish_reason == "stop"
    absent = next(i for i in range(307) if i not in ids)
    config = json.loads(json.dumps(ck.config)) | {"eos_token_id": [absent, stop_id]}
    by_eos = _run(_engine(ck, tokenizer, config), SamplingParams(max_tokens=20))
    assert token_ids(by_eos) == ids[:first + 1]
    ignored = _run(_engine(ck, tokenizer, config), SamplingParams(max_tokens=20, ignore_eos=True))
    assert token_ids(ignored) == ids and ignored[-1].finish_reason == "length"
