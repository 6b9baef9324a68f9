"""Subword words with SentencePiece-style and cased tokenizers: every token but the special ones
belongs to exactly one word (a lone "▁" to the word it starts), so the words' log-probs add up
to the caption's, and words keep the case the model scored."""

from __future__ import annotations

import json

import pytest
import torch

from hf_fixtures import (  # noqa: F401 (one_thread: autouse fixture)
    adapter,
    bert_tokenizer,
    gpt2_tokenizer,
    image_file,
    one_thread,
    saved,
    sentencepiece_tokenizer,
)
from mmcam.adapters.hf.words import encode_words
from mmcam.cli import main
from mmcam.io import load_image

CAPTION = "Red circle on the left."
TEXTS = [CAPTION, "a triangle, Blue-red squares", "  a red circle . ", "(red) - blue"]


def test_a_lone_word_start_token_belongs_to_the_word_it_starts() -> None:
    tokenizer = sentencepiece_tokenizer(cased=True)
    ids, pieces = encode_words(tokenizer, CAPTION, special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(ids) == ["▁", "Red", "▁circle", "▁on", "▁the", "▁left", "."]
    assert pieces.words == ("Red", "circle", "on", "the", "left")
    assert pieces.spans == ((0, 1), (2,), (3,), (4,), (5, 6))  # "▁" with "Red"; "." with "left"


@pytest.mark.parametrize(
    ("cased", "expected"),
    [(True, ("a", "triangle", "Blue-red", "squares")), (False, ("a", "triangle", "blue-red", "squares"))],
)
def test_cased_tokenizers_keep_the_case_and_uncased_ones_read_lower_case(cased, expected) -> None:
    tokenizer = sentencepiece_tokenizer(cased)
    ids, pieces = encode_words(tokenizer, "a triangle, Blue-red squares", special_tokens=False)
    assert pieces.words == expected
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert [tokens[p] for p in pieces.spans[1]] == ["▁", "tri", "angle", ","]


@pytest.mark.parametrize("name", ["sentencepiece-cased", "sentencepiece-uncased", "wordpiece", "byte-level-bpe"])
@pytest.mark.parametrize("text", TEXTS)
def test_every_token_but_the_special_ones_is_in_exactly_one_word(name, text) -> None:
    tokenizer = {
        "sentencepiece-cased": lambda: sentencepiece_tokenizer(cased=True),
        "sentencepiece-uncased": lambda: sentencepiece_tokenizer(cased=False),
        "wordpiece": bert_tokenizer,
        "byte-level-bpe": gpt2_tokenizer,
    }[name]()
    ids, pieces = encode_words(tokenizer, text, special_tokens=True)
    covered = [position for span in pieces.spans for position in span]
    special = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}  # an unknown token is a word of its own
    assert covered == [position for position, token in enumerate(ids) if token not in special]
    if name.startswith("sentencepiece"):  # a vocabulary that reads every character of the texts
        expected = [word.strip("().,") for word in text.split() if word.strip("().,-")]
        assert [word.lower() for word in pieces.words] == [word.lower() for word in expected]


@pytest.fixture(scope="module")
def explained():
    loaded = adapter("ved-vit-sentencepiece")
    explanation = loaded.explain(image_file(), CAPTION, whole_caption=True, guided=False, counterfactual=False, contrast=False)
    return loaded, explanation


def test_word_logprobs_add_up_to_the_caption_logprob_the_model_reports(explained) -> None:
    loaded, explanation = explained
    assert explanation.labels == ["Red", "circle", "on", "the", "left", "<caption>"]
    *words, caption = explanation.info["logprobs"]
    assert sum(words) == pytest.approx(caption, abs=1e-5)
    assert list(explanation.scores) == pytest.approx(explanation.info["logprobs"], abs=1e-5)
    # independently of mmcam's scorer: the model's own loss with the caption as labels (mean
    # cross-entropy over its tokens, the lone "▁" included)
    labels = torch.tensor([loaded.scorer.tokenizer(CAPTION, add_special_tokens=False).input_ids])
    pixels = loaded.scorer.preprocess(load_image(image_file()).pixels)[None]
    with torch.no_grad():
        loss = loaded.scorer.model(pixel_values=pixels, labels=labels).loss
    assert caption == pytest.approx(-float(loss) * labels.shape[1], abs=1e-4)


def test_the_caption_keeps_the_case_and_words_are_chosen_in_any_case(explained) -> None:
    loaded, explanation = explained
    assert explanation.info["caption"] == "Red circle on the left"
    chosen = loaded.explain(image_file(), CAPTION, words=["red", "LEFT"], guided=False, counterfactual=False, contrast=False)
    assert chosen.labels == ["Red", "left"]
    assert list(chosen.info["logprobs"]) == pytest.approx([explanation.info["logprobs"][0], explanation.info["logprobs"][4]], abs=1e-5)


def test_the_cli_json_reports_the_words_as_the_model_scored_them(capsys) -> None:
    folder = saved("ved-vit-sentencepiece")
    assert main(["caption", str(image_file()), "--model", f"hf:{folder}", "--caption", CAPTION, "--json"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    record = json.loads(line)
    assert record["caption"] == "Red circle on the left"
    assert [word["word"] for word in record["words"]] == ["Red", "circle", "on", "the", "left"]
