"""transformers' multimodal models in (`unitok checkpoint import`): Chameleon's language model, its id
layout and its VQ encoder; Emu3's language model and its VQ (encoder and spatial-norm decoder).

Tiny random models built from transformers' config classes (no download) are the peer, as in
tests/test_interop.py: the same `lm_head` logits on the same ids (fp32, 1e-5), the same greedy path
for 32 tokens, the same image codes, and decoded images within 1e-5.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from test_interop import _edit_config, _one_line_error, check_greedy_trajectory
from unitok.checkpoint import load_model
from unitok.cli import main
from unitok.errors import ConfigError
from unitok.grammar import SpanGrammar
from unitok.interop import import_checkpoint

transformers = pytest.importorskip("transformers")

V = 320  # model rows
LM = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, max_position_embeddings=128)
TEXT = ["The quick brown fox jumps over the lazy dog.", "Pack my box with five dozen liquor jugs!"] * 20


def _draw(model, seed: int = 0):
    """Every parameter drawn (norm gains near 1, the rest small) and BatchNorm statistics too, so a
    mix-up between any two shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = "norm" in name and name.endswith("weight")
            p.copy_(1 + 0.1 * torch.randn_like(p) if gain else 0.1 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                b.copy_(0.1 * torch.randn_like(b) if name.endswith("mean") else 1 + 0.2 * torch.rand_like(b))
    return model.eval()


def _tokenizer_json(path: Path, specials: list[str]) -> None:
    """A byte-level BPE tokenizer.json whose first ids are `specials` (as Chameleon's: <unk> <s> </s>
    <pad>, then its image tokens, then its markers)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.save(str(path))


# ------------------------------------------------------------------ Chameleon
K = 32  # image codes
CODE0 = 4  # first image token id, as in the released models (ids 4-8195)


def _image_token(code: int) -> str:
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z"


CHAMELEON_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", *map(_image_token, range(K)), "<eoss>", "<racm3:break>",
                      "<image>"]
VOCABULARY_MAP = {name: i for i, name in enumerate(CHAMELEON_SPECIALS)}
EOI, BOI = VOCABULARY_MAP["<eoss>"], VOCABULARY_MAP["<racm3:break>"]
# base_channels a multiple of 32 (GroupNorm(32)); 32 px at f4: an 8 x 8 grid; attention at 16 px and in the middle
VQ = dict(embed_dim=8, num_embeddings=K, latent_channels=32, base_channels=32, channel_multiplier=[1, 2, 2],
          resolution=32, num_res_blocks=1, attn_resolutions=[16])


def _chameleon(seed: int = 0, **extra):
    cfg = transformers.ChameleonConfig(**LM, vocabulary_map=VOCABULARY_MAP, vq_config=VQ, bos_token_id=1,
                                       eos_token_id=2, pad_token_id=3, **extra)
    return _draw(transformers.ChameleonForConditionalGeneration(cfg), seed)


@pytest.fixture(scope="module")
def chameleon(tmp_path_factory):
    """(transformers folder, the transformers model, our import of it)."""
    root = tmp_path_factory.mktemp("chameleon")
    hf = _chameleon()
    hf.save_pretrained(root / "src")
    _tokenizer_json(root / "src" / "tokenizer.json", CHAMELEON_SPECIALS)
    return root / "src", hf, import_checkpoint(root / "src", root / "run")


def _images(n: int = 2, seed: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _same_codes(name: str, theirs: torch.Tensor, ours: torch.Tensor) -> None:
    print(f"{name} VQ: {int((ours == theirs).sum())} of {ours.numel()} codes equal, {len(ours.unique())} distinct")
    assert torch.equal(ours, theirs) and len(ours.unique()) > K // 4  # and the codes vary


def _same_images(name: str, want: torch.Tensor, got: torch.Tensor) -> None:
    """Decoded images within 1e-5, at pixel values of image size (|x| < 2)."""
    diff = (want - got).abs().max().item()
    print(f"{name} VQ decoder: max |pixel diff| {diff:.2e} (pixels up to {want.abs().max().item():.2f})")
    assert want.shape == got.shape and want.abs().max().item() < 2 and diff <= 1e-5


def test_chameleon_gives_transformers_lm_head_logits(chameleon):
    """The same lm_head logits; transformers' forward then masks the image codes' logits, and that
    mask is the only difference."""
    _, hf, run = chameleon
    ours = load_model(run)
    cfg = ours.model.cfg
    assert (cfg.qk_norm, cfg.qk_norm_type, ours.model.blocks[0].attn.q_norm.weight.shape) == (True, "layernorm", (4, 16))
    ids = torch.randint(0, V, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = hf.lm_head(hf.model(ids).last_hidden_state)
        masked = hf(ids).logits
        mine = ours.model(ids)
    diff = (theirs - mine).abs().max().item()
    print(f"chameleon: max |logit diff| {diff:.2e}")
    assert diff <= 1e-5
    codes = list(range(CODE0, CODE0 + K))
    assert bool((masked[..., codes] == torch.finfo(masked.dtype).min).all())
    keep = torch.ones(V, dtype=torch.bool)
    keep[codes] = False
    assert torch.equal(masked[..., keep], theirs[..., keep])


def test_chameleon_greedy_trajectory_follows_transformers(chameleon):
    _, hf, run = chameleon
    check_greedy_trajectory(hf, load_model(run).model, V, "chameleon", masked=list(range(CODE0, CODE0 + K)))


def test_chameleon_vocabulary_keeps_its_image_ids(chameleon):
    """Image codes are its ids 4-35, an image span is <racm3:break>, 8 x 8 codes, <eoss> with no
    size tokens, exactly the ids transformers' model puts in place of an image; text never holds
    those ids (the grammar), and the span decodes back to the codes."""
    _, hf, run = chameleon
    ck = load_model(run)
    v = ck.vocab
    assert (v.size, v.text_size, v.code_range("image"), v.marker_ids["image"]) == (V, V, (CODE0, CODE0 + K), (BOI, EOI))
    assert (v.bos, v.eos, v.pad, v.max_size, v.spans["image"].sizes) == (1, 2, 3, 0, (8, 8))
    assert v.token_name(CODE0 + 5) == "image:L0:5" and v.token_name(BOI) == "<boi>"
    x = _images()
    codes = ck.tokenizers["image"].encode(x)  # (2, 8, 8)
    assert codes.shape == (2, 8, 8)
    with torch.no_grad():
        bpe = hf.model.get_image_tokens(x)  # (2, 64): transformers' ids of the codes
    span = v.pack([{"image": codes[0]}], bos=False, eos=False).ids
    assert span.tolist() == [BOI, *bpe[0].tolist(), EOI]
    back = v.unpack(np.concatenate([[1], span, [2]]))
    assert back.ok and np.array_equal(back.segments[0]["image"], codes[0].numpy())
    with pytest.raises(ValueError, match=r"fixed grid \(8, 8\)"):
        v.pack([{"image": codes[0, :4]}])
    g = SpanGrammar(v)
    free = g.mask(g.start().allowed())
    assert not free[CODE0:CODE0 + K].any() and not free[EOI] and free[BOI] and free[CODE0 + K + 3:].all()
    st = g.start([1, BOI, *bpe[0].tolist()[:-1]])
    assert st.allowed() == [(CODE0, CODE0 + K)] and st.push(bpe[0, -1].item()).allowed() == [(EOI, EOI + 1)]
    text = ck.tokenizers["text"].encode("The lazy dog.")
    assert v.unpack([1, *text, 2]).segments == [{"text": text}]


def test_chameleon_vq_encoder_gives_transformers_codes(chameleon):
    _, hf, run = chameleon
    tok = load_model(run).tokenizers["image"]
    x = _images(4, seed=5)
    with torch.no_grad():
        theirs = hf.model.vqmodel.encode(x).image_tokens.view(4, 8, 8)
    ours = tok.encode(x)
    _same_codes("chameleon", theirs, ours)
    with pytest.raises(ConfigError, match="no decoder"):
        tok.decode(ours)


def test_chameleon_with_a_taming_decoder_decodes(chameleon, tmp_path):
    """--image-decoder: a taming checkpoint whose encoder equals the folder's gives the full
    tokenizer (same codes, and it decodes); one with another encoder is refused."""
    from unitok.interop.hf import VQ_PREFIX as PREFIX
    from unitok.tokenizers.image import ImageTokenizer

    src, hf, run = chameleon
    enc = load_model(run).tokenizers["image"]
    torch.manual_seed(7)
    full = ImageTokenizer(enc.config)
    state = {k: v for k, v in hf.state_dict().items() if k.startswith(PREFIX)}
    taming = {k[len(PREFIX):]: v for k, v in state.items()}  # taming's names: encoder.*, quantize.embedding.weight
    for k, v in full.state_dict().items():
        if k.startswith("decoder."):
            taming[k] = torch.randn_like(v) * 0.1
    torch.save({"state_dict": taming}, tmp_path / "vqgan.ckpt")
    out = import_checkpoint(src, tmp_path / "run", image_decoder=tmp_path / "vqgan.ckpt")
    tok = load_model(out).tokenizers["image"]
    assert type(tok) is ImageTokenizer
    x = _images()
    codes = tok.encode(x)
    assert torch.equal(codes, enc.encode(x))
    assert tok.decode(codes).shape == (2, 3, 32, 32)
    taming["encoder.conv_in.bias"] = taming["encoder.conv_in.bias"] + 1
    torch.save({"state_dict": taming}, tmp_path / "other.ckpt")
    with pytest.raises(Exception, match="encoder differs"):
        import_checkpoint(src, tmp_path / "run2", image_decoder=tmp_path / "other.ckpt")


@pytest.mark.parametrize("case,expected", [
    ("no-vocabulary-map", "no vocabulary_map"),
    ("image-ids-out-of-order", "not one run of ids in code order"),
    ("too-few-image-tokens", f"names {K - 1} image codes; the VQ codebook has {K}"),
    ("no-markers", "no <racm3:break> or <eoss>"),
    ("swin-norm", "swin_norm"),
    ("double-latent", "double_latent"),
    ("decoder-for-llama", "--image-decoder is for chameleon models"),
])
def test_chameleon_bad_folders(chameleon, tmp_path, capsys, case, expected):
    src = tmp_path / "src"
    shutil.copytree(chameleon[0], src)
    cfg = json.loads((src / "config.json").read_text())
    vmap = dict(cfg["vocabulary_map"])
    argv = []
    if case == "no-vocabulary-map":
        _edit_config(src, vocabulary_map=None)
    elif case == "image-ids-out-of-order":
        vmap[_image_token(0)], vmap[_image_token(1)] = vmap[_image_token(1)], vmap[_image_token(0)]
        _edit_config(src, vocabulary_map=vmap)
    elif case == "too-few-image-tokens":
        del vmap[_image_token(K - 1)]
        _edit_config(src, vocabulary_map=vmap)
    elif case == "no-markers":
        del vmap["<eoss>"]
        _edit_config(src, vocabulary_map=vmap)
    elif case == "swin-norm":
        _edit_config(src, swin_norm=True)
    elif case == "double-latent":
        _edit_config(src, vq_config={**cfg["vq_config"], "double_latent": True})
    elif case == "decoder-for-llama":
        _edit_config(src, model_type="llama", architectures=["LlamaForCausalLM"])
        argv = ["--image-decoder", str(tmp_path / "vqgan.ckpt")]
    err = _one_line_error(capsys, ["checkpoint", "import", str(src), "--out", str(tmp_path / "run"), *argv])
    assert expected in err
    assert not (tmp_path / "run").exists()


def test_chameleon_export_is_refused(chameleon, tmp_path, capsys):
    """No stock causal-LM class computes a per-head LayerNorm QK-norm."""
    err = _one_line_error(capsys, ["checkpoint", "export-hf", str(chameleon[2]), "--out", str(tmp_path / "hf")])
    assert "QK-norm 'layernorm'" in err and not (tmp_path / "hf").exists()


# ------------------------------------------------------------------ Emu3
EMU3_VQ = dict(codebook_size=K, embed_dim=8, latent_channels=8, base_channels=32, channel_multiplier=[1, 2, 2],
               num_res_blocks=1, attn_resolutions=[2], hidden_size=64, num_attention_heads=2)  # 32 px -> 8 x 8
# its tokenizer's first ids: <unk> <s> </s> <pad>, the processor's tokens, its placeholder <image>, the
# visual tokens (ids 10-41, code c at 10 + c); vocabulary_map lists them, as Emu3's lists its whole vocabulary
EMU3_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|image start|>", "<|extra_200|>", "<image>", "<|image end|>",
                 "<|image token|>", "<|extra_201|>", *(f"<|visual token {c:06d}|>" for c in range(K))]
EMU3_MAP = {name: i for i, name in enumerate(EMU3_SPECIALS)}
VISUAL0 = EMU3_MAP["<|visual token 000000|>"]


@pytest.fixture(scope="module")
def emu3(tmp_path_factory):
    """(transformers folder, the transformers model, our import of it)."""
    root = tmp_path_factory.mktemp("emu3")
    cfg = transformers.Emu3Config(text_config=dict(**LM, bos_token_id=1, eos_token_id=2, pad_token_id=3),  # pad < V
                                  vq_config=EMU3_VQ, vocabulary_map=EMU3_MAP)
    hf = _draw(transformers.Emu3ForConditionalGeneration(cfg))
    hf.save_pretrained(root / "src")
    _tokenizer_json(root / "src" / "tokenizer.json", EMU3_SPECIALS)
    return root / "src", hf, import_checkpoint(root / "src", root / "run")


def test_emu3_gives_transformers_logits(emu3):
    _, hf, run = emu3
    ours = load_model(run)
    ids = torch.randint(0, V, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (hf(ids).logits - ours.model(ids)).abs().max().item()
    print(f"emu3: max |logit diff| {diff:.2e}")
    assert diff <= 1e-5
    assert (ours.model.cfg.qk_norm, ours.model.cfg.rope_theta) == (False, 1e6)
    assert (ours.vocab.size, ours.vocab.code_range("image")) == (V, (VISUAL0, VISUAL0 + K))  # its ids, as they are


def test_emu3_greedy_trajectory_follows_transformers(emu3):
    _, hf, run = emu3
    check_greedy_trajectory(hf, load_model(run).model, V, "emu3")


def test_emu3_vq_gives_transformers_codes_and_images(emu3):
    """Its VQ, the run's image tokenizer: the same codes, and decoded images within 1e-5 (the decoder's
    spatial norms read the codes)."""
    from unitok.tokenizers.emu3 import Emu3ImageTokenizer

    _, hf, run = emu3
    tok = load_model(run).tokenizers["image"]
    assert isinstance(tok, Emu3ImageTokenizer)
    x = _images(4, seed=6)
    with torch.no_grad():
        theirs = torch.stack(hf.model.vqmodel.encode(x, torch.tensor([[32, 32]] * 4)).image_tokens)
        ours = tok.encode(x)
        _same_codes("emu3", theirs, ours)
        _same_images("emu3", hf.model.vqmodel.decode(ours), tok.decode(ours))


def _emu3_prompt_ids(hf, tokenizer_json: Path, x: torch.Tensor, text: str) -> list[int]:
    """transformers' ids for `text` then the image `x` (1, 3, H, W): the prompt string its processor
    writes (`Emu3Processor.replace_image_token`: <|image start|>, "h*w", <|image token|>, h * (w + 1)
    <image> placeholders, <|extra_201|>, <|image end|>), tokenized, and the placeholders replaced by
    the model's own ids for the image (`get_image_tokens`: each row of codes, then <|extra_200|>), as
    its forward puts the image in their place."""
    from tokenizers import Tokenizer

    h, w = x.shape[-2] // 4, x.shape[-1] // 4  # the VQ's spatial factor: 4 here
    prompt = f"{text}<|image start|>{h}*{w}<|image token|>{'<image>' * (h * (w + 1))}<|extra_201|><|image end|>"
    ids = torch.tensor(Tokenizer.from_file(str(tokenizer_json)).encode(prompt, add_special_tokens=False).ids)
    with torch.no_grad():
        ids[ids == EMU3_MAP["<image>"]] = hf.model.get_image_tokens(x, torch.tensor([list(x.shape[-2:])])).to(ids.dtype)
    return ids.tolist()


def test_emu3_image_span_is_the_processors(emu3):
    """The imported vocabulary packs an image as transformers lays it out (a size header written as
    text, a marker after every row, two end markers), id for id, on a grid of 8 x 12 codes (sizes of
    one and two digits); `unpack` reads the codes back, and the span grammar accepts exactly that
    span: digits, then the row marker after each row's codes, then <|extra_201|>, then <|image end|>."""
    src, hf, run = emu3
    ck = load_model(run)
    v, text_tok, tok = ck.vocab, ck.tokenizers["text"], ck.tokenizers["image"]
    x = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(4)) * 2 - 1
    codes = tok.encode(x)[0]  # (8, 12)
    assert codes.shape == (8, 12) and len(codes.unique()) > K // 4
    theirs = _emu3_prompt_ids(hf, src / "tokenizer.json", x, "A dog.")
    ours = v.pack([{"text": "A dog."}, {"image": codes}], text_tokenizer=text_tok, bos=False, eos=False).ids.tolist()
    assert ours == theirs
    span = theirs[theirs.index(EMU3_MAP["<|image start|>"]):]
    assert text_tok.decode(span[1:5]) == "8*12" and span[5] == EMU3_MAP["<|image token|>"]
    assert v.spans["image"].describe() == ("<boi> H*W <|image token|> codes (each row then <|extra_200|>) "
                                           "<|extra_201|> <eoi>")
    assert span[6 + 12] == span[6 + 2 * 13 - 1] == EMU3_MAP["<|extra_200|>"]  # after each row of 12 codes
    back = v.unpack([1, *theirs, 2], text_tokenizer=text_tok)
    assert back.ok and back.segments[0] == {"text": "A dog."}
    assert np.array_equal(back.segments[1]["image"], codes.numpy())
    # a row marker missing, or a span without its <|extra_201|>: the span does not decode
    assert not v.unpack([*span[:18], *span[19:]]).segments and not v.unpack([*span[:-2], span[-1]]).ok
    g = SpanGrammar(v)
    st = g.start([1, *theirs[:theirs.index(span[0])]])
    allowed = []
    for t in span:
        allowed.append(st.allowed())
        st.push(t)
    digits, star = [text_tok.encode(str(d))[0] for d in range(10)], text_tok.encode("*")[0]
    ids_in = lambda ranges: {i for lo, hi in ranges for i in range(lo, hi)}  # noqa: E731
    assert ids_in(allowed[1]) == set(digits[1:])  # no leading zero
    assert ids_in(allowed[2]) == {*digits, star} and ids_in(allowed[4]) == {*digits, EMU3_MAP["<|image token|>"]}
    one = lambda name: [(EMU3_MAP[name], EMU3_MAP[name] + 1)]  # noqa: E731
    assert allowed[6] == [(VISUAL0, VISUAL0 + K)] and allowed[6 + 12] == one("<|extra_200|>")
    assert allowed[-2] == one("<|extra_201|>") and allowed[-1] == one("<|image end|>")
    assert st.modality is None and g.start().allowed() == g.free
    free = g.mask(g.free)
    assert not free[[EMU3_MAP[n] for n in ("<|image token|>", "<|extra_200|>", "<|extra_201|>", "<|image end|>")]].any()
    assert not free[VISUAL0:VISUAL0 + K].any() and free[EMU3_MAP["<|image start|>"]] and free[digits].all()


def test_emu3_grammar_walks_decode(emu3):
    """Random walks of the span grammar on the imported vocabulary, kept to a context of 48 tokens by
    `fitting`, unpack to whole images whose header is their grid."""
    v = load_model(emu3[2]).vocab
    g = SpanGrammar(v)
    rng = np.random.default_rng(0)
    spans = 0
    for _ in range(40):
        st, ids = g.start(), [v.bos]
        while not st.ended and len(ids) < 48:
            ranges = st.fitting(st.allowed(), 48 - len(ids))
            lo, hi = ranges[rng.integers(len(ranges))]
            ids.append(int(rng.integers(lo, hi)))
            st.push(ids[-1])
        un = v.unpack(ids)
        assert un.ok, (un.problems, ids)
        spans += sum("image" in s for s in un.segments)
    assert spans >= 5


def test_emu3_pretokenize_writes_its_image_spans(emu3, tmp_path):
    """`pretokenize --vocab RUN` with the imported tokenizers writes Emu3's own spans: "8*8" as text,
    a row marker after each of the 8 rows, <|extra_201|> <|image end|>; they unpack to the codes."""
    from PIL import Image

    from unitok.data.shards import read_shards

    _, _, run = emu3
    (tmp_path / "data").mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "data" / "a.png")
    (tmp_path / "data" / "a.txt").write_text("a red square")
    toks = [str(run / "tokenizers" / m) for m in ("text", "image")]
    assert main(["pretokenize", str(tmp_path / "data"), "--tokenizer", *toks,
                 "--vocab", str(run.parent), "--out", str(tmp_path / "shards"), "--set", "image_size=32"]) == 0
    s = read_shards(tmp_path / "shards")
    ids = np.asarray(s.document(0)[0]).astype(np.int64).tolist()
    span = ids[ids.index(EMU3_MAP["<|image start|>"]):ids.index(EMU3_MAP["<|image end|>"]) + 1]  # before or after the text
    text = load_model(run).tokenizers["text"]
    assert text.decode(span[1:4]) == "8*8" and span[4] == EMU3_MAP["<|image token|>"]
    assert span.count(EMU3_MAP["<|extra_200|>"]) == 8 and span[5 + 8] == EMU3_MAP["<|extra_200|>"]
    assert span[-2:] == [EMU3_MAP["<|extra_201|>"], EMU3_MAP["<|image end|>"]] and len(span) == 1 + 3 + 1 + 72 + 2
    doc = s.vocab.unpack(ids)
    assert doc.ok and [seg["image"].shape for seg in doc.segments if "image" in seg] == [(8, 8)]


def test_emu3_image_tasks_run_in_its_layout_and_follow_transformers(emu3, tmp_path):
    """unitok's pipeline on the Emu3 import: text-to-image writes the header "8*8" as text and the
    row markers, and each id it chooses greedily is transformers' choice among the ids the grammar
    allows there (wherever that choice is clear); image-to-image keeps the upper rows with their
    markers; image-to-text reads the image in Emu3's layout."""
    from PIL import Image

    from unitok.generation import Pipeline

    _, hf, run = emu3
    pipe = Pipeline(load_model(run))
    v = pipe.vocab
    png = tmp_path / "a.png"
    Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)).save(png)
    result = pipe("text-to-image", prompt="The lazy dog.", size=32, temperature=0)
    prompt, new = result.prompt_ids, result.samples[0].ids
    assert pipe.tokenizers["text"].decode(prompt[-4:-1]) == "8*8" and prompt[-1] == EMU3_MAP["<|image token|>"]
    assert len(new) == 64 + 8 + 2 and new[-2:] == [EMU3_MAP["<|extra_201|>"], EMU3_MAP["<|image end|>"]]
    assert result.samples[0].span["generated_codes"] == 64 and result.samples[0].media.shape == (32, 32, 3)
    with torch.no_grad():
        theirs = hf(torch.tensor([prompt + new])).logits[0, len(prompt) - 1:-1]
    st, clear = pipe.grammar.start(prompt), 0
    for t, logits in zip(new, theirs):
        masked = logits.masked_fill(~pipe.grammar.mask(st.allowed()), float("-inf"))
        top2 = masked.topk(2).values
        if top2[0] - top2[1] > 1e-3:  # a marker the grammar forces is clear too
            assert masked.argmax().item() == t
            clear += VISUAL0 <= t < VISUAL0 + K
        st.push(t)
    print(f"emu3 text-to-image: transformers' choice clear at {clear} of 64 codes")
    assert clear >= 48
    half = pipe("image-to-image", image=png, size=32, temperature=0)
    given = half.prompt_ids[half.prompt_ids.index(EMU3_MAP["<|image token|>"]) + 1:]
    assert len(given) == 4 * 9 and given[8::9] == [EMU3_MAP["<|extra_200|>"]] * 4
    assert len(half.samples[0].ids) == 4 * 9 + 2 and half.samples[0].span["generated_codes"] == 32
    text = pipe("image-to-text", image=png, size=32, max_new_tokens=3, temperature=0)
    assert v.unpack(text.prompt_ids).segments[0]["image"].shape == (8, 8)


def test_emu3_bad_vq_config(emu3, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(emu3[0], src)
    _edit_config(src, vq_config={**EMU3_VQ, "hidden_size": 32})
    err = _one_line_error(capsys, ["checkpoint", "import", str(src), "--out", str(tmp_path / "run")])
    assert "hidden_size 32 is not the width of its attention blocks" in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("case,expected", [
    ("too-few-visual-tokens", f"names {K - 1} visual tokens; the VQ codebook has {K}"),
    ("visual-tokens-out-of-order", "not one run of ids in code order"),
    ("no-body-marker", "no <|image token|> token"),
    ("digits-merged", 'does not write a size such as "10*23" one id per digit'),
])
def test_emu3_bad_image_layout(emu3, tmp_path, capsys, case, expected):
    src = tmp_path / "src"
    shutil.copytree(emu3[0], src)
    vmap = dict(EMU3_MAP)
    if case == "too-few-visual-tokens":
        del vmap[f"<|visual token {K - 1:06d}|>"]
    elif case == "visual-tokens-out-of-order":
        a, b = "<|visual token 000000|>", "<|visual token 000001|>"
        vmap[a], vmap[b] = vmap[b], vmap[a]
    elif case == "no-body-marker":
        _tokenizer_json(src / "tokenizer.json", [t if t != "<|image token|>" else "<|other|>" for t in EMU3_SPECIALS])
    else:  # a tokenizer with "10" as one token
        _tokenizer_json(src / "tokenizer.json", [*EMU3_SPECIALS, "10"])
    _edit_config(src, vocabulary_map=vmap)
    err = _one_line_error(capsys, ["checkpoint", "import", str(src), "--out", str(tmp_path / "run")])
    assert expected in err and not (tmp_path / "run").exists()


def test_emu3_in_memory_names_import_alike(emu3, tmp_path):
    """transformers 5 saves Emu3 under its hub names (text_model.model.*, vqmodel.*); a folder under its
    in-memory names (model.text_model.*, lm_head, model.vqmodel.*) imports the same."""
    from safetensors.torch import save_file

    src, hf, run = emu3
    other = tmp_path / "src"
    shutil.copytree(src, other)
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, other / "model.safetensors")
    assert "model.text_model.norm.weight" in hf.state_dict()
    a, b = load_model(run).model.state_dict(), load_model(import_checkpoint(other, tmp_path / "run")).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ Janus
JANUS_VQ = dict(embed_dim=8, num_embeddings=K, latent_channels=32, base_channels=32, channel_multiplier=[1, 2, 2],
                num_res_blocks=1, image_token_embed_dim=64, projection_dim=64)  # 32 px -> 8 x 8
JANUS_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<begin_of_image>", "<end_of_image>"]


@pytest.fixture(scope="module")
def janus(tmp_path_factory):
    """(transformers folder, the transformers model, our import of it). The codebook is stored with
    unit-norm codes, as VQ-16 initialises it (docs/interop.md: where transformers' encode and Janus's
    agree)."""
    import torch.nn.functional as F

    root = tmp_path_factory.mktemp("janus")
    cfg = transformers.JanusConfig(text_config=dict(**LM, bos_token_id=1, eos_token_id=2, pad_token_id=3),
                                   vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                                      num_attention_heads=2, image_size=64, patch_size=8),
                                   vq_config=JANUS_VQ)
    hf = _draw(transformers.JanusForConditionalGeneration(cfg))
    with torch.no_grad():
        emb = hf.model.vqmodel.quantize.embedding.weight
        emb.copy_(F.normalize(emb, dim=-1))
        hf.model.vqmodel.decoder.conv_out.weight.mul_(0.2)  # decoded pixels of about image size (|x| ~ 1), not ~5
    hf.save_pretrained(root / "src")
    _tokenizer_json(root / "src" / "tokenizer.json", JANUS_SPECIALS)
    return root / "src", hf, import_checkpoint(root / "src", root / "run")


def _janus_reference(hf, ids: torch.Tensor) -> torch.Tensor:
    """transformers' Janus on a sequence of text ids (< V) and image codes (V + code): text through
    embed_tokens, codes through generation_embeddings + generation_aligner; logits (B, T, V + K):
    lm_head's, then generation_head's."""
    image = ids >= V
    emb = hf.get_input_embeddings()(ids.clamp(max=V - 1))
    emb[image] = hf.prepare_embeddings_for_image_generation(ids[image] - V)
    h = hf.model.language_model(inputs_embeds=emb).last_hidden_state
    return torch.cat([hf.lm_head(h), hf.model.generation_head(h)], dim=-1)


def test_janus_gives_transformers_logits_text_and_image(janus):
    """Text ids through lm_head, image codes through its generation embeddings, aligner and head:
    a sequence of both gives transformers' logits (1e-5); the model is tied as transformers ties it."""
    _, hf, run = janus
    ours = load_model(run)
    v, cfg = ours.vocab, ours.model.cfg
    assert (v.size, v.text_size, v.code_range("image"), v.spans["image"].sizes) == (V + K, V, (V, V + K), (8, 8))
    assert (cfg.vocab_size, cfg.tie_embeddings, cfg.heads["image"]["start"]) == (V + K, True, V)
    g = torch.Generator().manual_seed(1)
    text = torch.randint(0, V, (2, 20), generator=g)
    ids = torch.cat([text, torch.full((2, 1), v.marker_ids["image"][0]), V + torch.randint(0, K, (2, 24), generator=g)], 1)
    with torch.no_grad():
        diff = (_janus_reference(hf, ids) - ours.model(ids)).abs().max().item()
        text_diff = (hf(text).logits - ours.model(text)[..., :V]).abs().max().item()
    print(f"janus: max |logit diff| {text_diff:.2e} (text), {diff:.2e} (text and image codes, both heads)")
    assert diff <= 1e-5 and text_diff <= 1e-5


def test_janus_greedy_trajectory_follows_transformers(janus):
    _, hf, run = janus
    check_greedy_trajectory(hf, load_model(run).model, V, "janus")


def test_janus_loss_scores_each_target_by_its_own_head(janus):
    """The training loss: a text target's cross-entropy over lm_head's logits, an image code's over
    the generation head's (as Janus trains), computed from transformers' logits here."""
    import torch.nn.functional as F

    _, hf, run = janus
    model = load_model(run).model
    g = torch.Generator().manual_seed(4)
    ids = torch.cat([torch.randint(0, V, (2, 10), generator=g), V + torch.randint(0, K, (2, 12), generator=g)], 1)
    targets = ids[:, 1:].clone()
    targets[0, 3] = -100
    with torch.no_grad():
        ref = _janus_reference(hf, ids[:, :-1])
        text, image = (targets >= 0) & (targets < V), targets >= V
        want = torch.cat([F.cross_entropy(ref[text][:, :V], targets[text], reduction="none"),
                          F.cross_entropy(ref[image][:, V:], targets[image] - V, reduction="none")])
        got = model(ids[:, :-1], targets, z_loss=0.0)
        per = model(ids[:, :-1], targets, z_loss=0.0, reduction="none")
    assert abs(got.item() - want.mean().item()) <= 1e-5
    assert per.shape == (targets.numel(),) and per[3].item() == 0.0
    assert abs(per.sum().item() - want.sum().item()) <= 1e-4


def test_janus_vq_gives_transformers_codes_and_images(janus):
    _, hf, run = janus
    tok = load_model(run).tokenizers["image"]
    x = _images(4, seed=8)
    with torch.no_grad():
        theirs = hf.model.vqmodel.encode(x).image_tokens.view(4, 8, 8)
        ours = tok.encode(x)
        _same_codes("janus", theirs, ours)
        _same_images("janus", hf.model.vqmodel.decode(ours.view(4, -1)), tok.decode(ours))


def test_janus_reads_no_image_siglip_and_exports_nothing(janus, tmp_path, capsys):
    """Its SigLIP understanding path is not imported: a task that reads an image is refused with the
    reason, in one line; export-hf refuses the per-modality head."""
    from PIL import Image

    _, _, run = janus
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    err = _one_line_error(capsys, ["generate", str(run), "--task", "image-to-text", "--image", str(tmp_path / "red.png"),
                                   "--out", str(tmp_path / "gen")])
    assert "SigLIP" in err and not (tmp_path / "gen").exists()
    assert not any(k.startswith(("vision", "aligner")) for k in load_model(run).model.state_dict())
    err = _one_line_error(capsys, ["checkpoint", "export-hf", str(run), "--out", str(tmp_path / "hf")])
    assert "per-modality heads (image" in err


@pytest.mark.parametrize("case,expected", [
    ("no-markers", "no <begin_of_image>"),
    ("projection", "projection_dim 32 is not the language model's hidden_size 64"),
    ("missing-head-tensor", "no tensor for heads.image.out.bias"),
])
def test_janus_bad_folders(janus, tmp_path, capsys, case, expected):
    from safetensors.torch import load_file, save_file

    src = tmp_path / "src"
    shutil.copytree(janus[0], src)
    if case == "no-markers":
        _tokenizer_json(src / "tokenizer.json", JANUS_SPECIALS[:4])
    elif case == "projection":
        _edit_config(src, vq_config={**json.loads((src / "config.json").read_text())["vq_config"], "projection_dim": 32})
    else:
        state = load_file(src / "model.safetensors")
        del state["model.generation_head.vision_head.bias"]
        save_file(state, src / "model.safetensors")
    err = _one_line_error(capsys, ["checkpoint", "import", str(src), "--out", str(tmp_path / "run")])
    assert expected in err and not (tmp_path / "run").exists()


def test_janus_text_to_image_follows_transformers_greedy(janus):
    """unitok's pipeline generates an image with the imported head (greedy, 8 x 8 codes between
    <begin_of_image> and <end_of_image>); transformers' modules, fed the same prompt and each chosen
    code through the generation embeddings, choose the same codes wherever their choice is clear."""
    from unitok.generation import Pipeline

    _, hf, run = janus
    pipe = Pipeline(load_model(run))
    result = pipe("text-to-image", prompt="The lazy dog.", size=32, temperature=0)
    codes = torch.as_tensor(result.samples[0].ids[:-1])  # then <end_of_image>
    assert result.samples[0].ids[-1] == pipe.vocab.marker_ids["image"][1] and len(codes) == 64
    ids = torch.tensor([result.prompt_ids])  # <s> text <begin_of_image>
    steps = []
    with torch.no_grad():
        for c in codes:
            logits = _janus_reference(hf, ids)[0, -1, V:]
            steps.append(logits)
            ids = torch.cat([ids, c.view(1, 1)], 1)
    theirs = torch.stack(steps)
    top2 = theirs.topk(2, dim=-1).values
    clear = top2[:, 0] - top2[:, 1] > 1e-3
    print(f"janus text-to-image: {int(clear.sum())} clear steps of 64, {len((codes - V).unique())} distinct codes")
    assert clear.sum() >= 48 and torch.equal(theirs.argmax(-1)[clear], (codes - V)[clear])
    assert result.samples[0].media.shape == (32, 32, 3)


def test_per_modality_heads_are_checked():
    """`ModelConfig.heads`: known kinds with exactly their keys, tiling the top of the ids."""
    from unitok.model.config import debug

    head = {"kind": "mlp", "start": 500, "size": 12, "code_dim": 4, "in_layers": 2, "out_hidden": 16}
    cfg = debug(heads={"image": head})
    assert (cfg.embedding_rows, debug().embedding_rows) == (500, 512)
    for bad, match in [({**head, "kind": "conv"}, "unknown kind 'conv'"),
                       ({**head, "start": 400}, "starts at id 400; .* so it starts at 500"),
                       ({**head, "extra": 1}, "takes exactly the keys"),
                       ({**head, "size": 0, "start": 512}, "must be positive integers")]:
        with pytest.raises(ValueError, match=match):
            debug(heads={"image": bad})
    # under bf16 autocast (GPU training) the head's vectors join the fp32 embeddings; both heads learn
    from unitok.model.transformer import UnifiedTransformer

    torch.manual_seed(0)
    model = UnifiedTransformer(cfg)
    ids, targets = torch.tensor([[1, 2, 501, 505, 3]]), torch.tensor([[2, 501, 505, 3, 510]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(ids, targets).backward()
    for p in (model.heads["image"].embed.weight, model.heads["image"].out.weight, model.tok_emb.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


# ------------------------------------------------------------------ LlamaGen VQ-16
def test_llamagen_vq16_layout_loads_as_vq16():
    """LlamaGen's VQ-16 (vq_ds16_c2i.pt / vq_ds16_t2i.pt), recorded from its repository by
    scripts/record_layouts.py: every name and shape lands in our VQ-16 (CheckpointError otherwise),
    and the architecture is read from the weights. Shapes only (meta tensors): 72M parameters."""
    from upstream_layouts import random_state, read_layout

    from unitok.tokenizers.image import ImageTokenizer

    layout = read_layout("llamagen_vq_ds16.json")
    params = layout["params"]
    with torch.device("meta"):
        tok = ImageTokenizer.from_llamagen_state(random_state(layout, device="meta"), "llamagen layout")
    c = tok.config
    assert (c.ch, c.ch_mult, c.num_res_blocks, c.z_channels, c.embed_dim, c.quantizer.size, c.quantizer.cosine) == (
        128, params["encoder_ch_mult"], 2, params["z_channels"], params["codebook_embed_dim"], params["codebook_size"],
        True)
    assert c.downsample == 16 and len(tok.encoder.down[-1].attn) == 2 and not len(tok.encoder.down[0].attn)


def _llamagen_names(janus_vq: dict) -> dict:
    """transformers' Janus VQ names -> LlamaGen's (both list the decoder's levels deepest first)."""
    import re

    out = {}
    for k, v in janus_vq.items():
        k = re.sub(r"^(encoder\.)down\.(\d+)\.block\.", r"\1conv_blocks.\2.res.", k)
        k = re.sub(r"^(encoder\.)down\.(\d+)\.", r"\1conv_blocks.\2.", k)
        k = re.sub(r"^(decoder\.)up\.(\d+)\.block\.", r"\1conv_blocks.\2.res.", k)
        k = re.sub(r"^(decoder\.)up\.(\d+)\.", r"\1conv_blocks.\2.", k)
        for i, name in enumerate(("block_1", "attn_1", "block_2")):
            k = k.replace(f".mid.{name}.", f".mid.{i}.")
        out[k] = v
    return out


def test_llamagen_checkpoint_loads_code_for_code(janus, tmp_path):
    """A small VQ-16 checkpoint in LlamaGen's layout and container ({"model": state dict, "args":
    argparse.Namespace}, read without executing anything) gives the codes, and the images, of the
    same weights in transformers' Janus VQ (VQ-16 too)."""
    import argparse
    import re

    from upstream_layouts import read_layout

    from unitok.tokenizers.image import ImageTokenizer

    _, hf, _ = janus
    vq = hf.model.vqmodel
    state = _llamagen_names({k: v.clone() for k, v in vq.state_dict().items()})
    state["quantize.codebook_used"] = torch.zeros(65536)
    pattern = lambda keys: {re.sub(r"\.\d+\.", ".N.", k) for k in keys}  # noqa: E731
    assert pattern(state) == pattern(k for k, _, _ in read_layout("llamagen_vq_ds16.json")["keys"])
    torch.save({"model": state, "steps": 5, "args": argparse.Namespace(vq_model="VQ-16")}, tmp_path / "vq_ds16.pt")
    tok = ImageTokenizer.from_llamagen(tmp_path / "vq_ds16.pt")
    x = _images(4, seed=9)
    with torch.no_grad():
        theirs = vq.encode(x).image_tokens.view(4, 8, 8)
        ours = tok.encode(x)
        _same_codes("llamagen VQ-16", theirs, ours)
        _same_images("llamagen VQ-16", vq.decode(ours.view(4, -1)), tok.decode(ours))


# ------------------------------------------------------------------ fine-tuning an import
def test_imported_chameleon_fine_tunes_on_shards_in_its_layout(chameleon, tmp_path, capsys):
    """`unitok pretokenize --vocab RUN` writes shards in Chameleon's own ids (image codes 4-35 between
    <racm3:break> and <eoss>), and `unitok train ... init_from=RUN` continues the imported model (its
    architecture and every weight) on them: 50 steps, and the loss falls."""
    from PIL import Image

    from unitok.data.shards import read_shards

    _, _, run = chameleon
    data = tmp_path / "data"
    data.mkdir()
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 40)}
    for i, (name, rgb) in enumerate(colours.items()):
        for j, shape in enumerate(("square", "stripe")):
            im = Image.new("RGB", (32, 32), (240, 240, 240))
            im.paste(rgb, (8, 8, 24, 24) if shape == "square" else (0, 12, 32, 20))
            im.save(data / f"{i}{j}.png")
            (data / f"{i}{j}.txt").write_text(f"a {name} {shape}")
    toks = [str(run / "tokenizers" / m) for m in ("text", "image")]
    shards = tmp_path / "shards"
    assert main(["pretokenize", str(data), "--tokenizer", *toks, "--vocab", str(run.parent), "--out", str(shards),
                 "--set", "image_size=32", "--workers", "2"]) == 0  # the workers build the vocabulary too
    s = read_shards(shards)
    assert s.vocab.hash == load_model(run).vocab.hash and len(s) == 8
    ids = np.asarray(s.document(0)[0]).astype(np.int64)
    doc = s.vocab.unpack(ids)
    assert doc.ok and sorted(next(iter(seg)) for seg in doc.segments) == ["image", "text"]
    span = ids[list(ids).index(BOI):]
    assert span[65] == EOI and ((span[1:65] >= CODE0) & (span[1:65] < CODE0 + K)).all()  # 8 x 8 codes, no sizes
    recipe = tmp_path / "finetune.yaml"
    recipe.write_text("model: {max_seq_len: 128}\nseq_len: 128\nbatch_size: 4\neval_fraction: 0.25\neval_every: 0\n"
                      "eval_batches: 1\ncond_dropout: 0.0\noptim: {lr: 2.0e-3, warmup_steps: 5}\n"
                      "run: {max_steps: 50, log_every: 1, ckpt_every: 50, threads: 1}\n")
    assert main(["train", str(recipe), f"init_from={run.parent}", "--data", str(shards),
                 "--out", str(tmp_path / "ft")]) == 0
    recs = [json.loads(x) for x in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    first, last = float(np.mean(losses[:5])), float(np.mean(losses[-5:]))
    with capsys.disabled():
        print(f"chameleon fine-tune: loss {first:.3f} (steps 1-5) -> {last:.3f} (steps 46-50)")
    assert len(losses) == 50 and last < 0.7 * first
    tuned = load_model(tmp_path / "ft")
    cfg = tuned.model.cfg
    assert (cfg.qk_norm_type, cfg.dim, cfg.vocab_size, tuned.vocab.hash) == ("layernorm", 64, V, s.vocab.hash)


def test_init_from_the_same_vocabulary_continues_every_weight(chameleon, tmp_path):
    """init_from a run of the training vocabulary: the model is that run's (architecture and every
    weight), whatever the recipe's model section says but its run-time keys; tokenizers that do not
    build a given --vocab are refused in one line."""
    from unitok.config import load_config
    from unitok.training.loop import Engine
    from unitok.training.transformer_task import TransformerTask
    from unitok.training.unified import UnifiedConfig

    _, _, run = chameleon
    imported = load_model(run)
    cfg = load_config(UnifiedConfig, Path(__file__).parents[1] / "configs" / "train" / "unified-debug.yaml",
                      ["run.threads=1", "model.dropout=0.1"])
    task = TransformerTask(Engine(cfg.run, cfg.optim, tmp_path / "run", recipe={}), cfg.model, imported.vocab,
                           batch_size=2, seq_len=64, optim=cfg.optim, init_from=str(run))
    a, b = task.model.state_dict(), imported.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (task.model_cfg.dim, task.model_cfg.dropout, task.model_cfg.qk_norm_type) == (64, 0.1, "layernorm")
    with pytest.raises(ConfigError, match="exceeds the max_seq_len 128"):
        TransformerTask(Engine(cfg.run, cfg.optim, tmp_path / "run2", recipe={}), cfg.model, imported.vocab,
                        batch_size=2, seq_len=256, optim=cfg.optim, init_from=str(run))


def test_pretokenize_refuses_tokenizers_that_do_not_build_the_vocab(chameleon, tmp_path, capsys):
    _, _, run = chameleon
    (tmp_path / "a.txt").write_text("The lazy dog.")
    err = _one_line_error(capsys, ["pretokenize", str(tmp_path / "a.txt"), "--tokenizer", str(run / "tokenizers" / "text"),
                                   "--vocab", str(run / "vocab.json"), "--out", str(tmp_path / "shards")])
    assert "--tokenizer was built with a different vocabulary" in err and "codebooks.image" in err
