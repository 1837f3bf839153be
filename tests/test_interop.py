"""transformers' Llama, Qwen2 and Qwen3 in (`unitok checkpoint import`), ours out (`export-hf`).

Tiny random models built from transformers' config classes (no download) are the peer: the same
lm_head logits on the same ids (fp32, 1e-5), the same greedy path for 32 tokens, and round trips
that change no bit. Our RoPE tables are computed in fp64 and rounded, transformers' in fp32: that
rounding is the whole difference (checked: with transformers' tables in our buffers the logits are
identical), about 1e-6 at these positions.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from unitok.checkpoint import load_model, save_checkpoint
from unitok.cli import main
from unitok.config import to_dict
from unitok.errors import CheckpointError
from unitok.interop import export_hf, import_checkpoint
from unitok.model.config import ModelConfig, debug
from unitok.model.transformer import UnifiedTransformer, rope_frequencies
from unitok.tokenizers import load_tokenizer
from unitok.tokenizers.text import HFTextTokenizer, TextTokenizer
from unitok.vocab import UnifiedVocab

transformers = pytest.importorskip("transformers")

CORPUS = ["The quick brown fox jumps over the lazy dog.", "Pack my box with five dozen liquor jugs!",
          "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich.", "  indented\tline\n"] * 20
V = 320  # model rows; the tokenizer has fewer (as Qwen2's padded embedding)
SMALL = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, bos_token_id=0, eos_token_id=1)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    # Llama 3.1's RoPE scaling with a pretraining context of 16, so positions up to 40 use all three
    # bands (head_dim 16, theta 5e5: wavelengths 6.3 (blended), then > 16 (stretched)); tied embeddings
    "llama3": ("LlamaConfig", "LlamaForCausalLM",
               dict(rope_theta=500000.0, tie_word_embeddings=True,
                    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(use_sliding_window=False)),
    # heads of 32 while hidden / heads = 16: an explicit head_dim
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=32)),
}


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tk.save(str(path))
    return path


def _hf_model(family: str, seed: int = 0):
    """A random transformers model of `family`; every parameter drawn (biases and norm gains too, so a
    mix-up between any two of them shows), with logits peaked enough for greedy choices to be clear."""
    config_cls, model_cls, extra = FAMILIES[family]
    cfg = getattr(transformers, config_cls)(**SMALL, **extra)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer_json):
    """family -> (transformers folder, the transformers model, our import of it)."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for family in FAMILIES:
        model = _hf_model(family)
        src = root / family
        model.save_pretrained(src)
        shutil.copy(tokenizer_json, src / "tokenizer.json")
        run = import_checkpoint(src, root / f"{family}-run")
        out[family] = (src, model, run)
    return out


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("unitok: error: ") and err.count("\n") == 1, err
    return err


# ------------------------------------------------------------------ parity
@pytest.mark.parametrize("family", FAMILIES)
def test_imported_model_gives_transformers_logits(folders, family):
    src, hf, run = folders[family]
    ours = load_model(run)
    ids = torch.randint(0, V, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (hf(ids).logits - ours.model(ids)).abs().max().item()
    print(f"{family}: max |logit diff| {diff:.2e}")
    assert diff <= 1e-5
    cfg = ours.model.cfg
    assert (cfg.qk_norm, cfg.qkv_bias) == {"llama": (False, False), "llama3": (False, False),
                                           "qwen2": (False, True), "qwen3": (True, False)}[family]
    assert cfg.head_dim == (32 if family == "qwen3" else 16)
    assert (cfg.rope_scaling is not None, cfg.tie_embeddings) == ((True, True) if family == "llama3" else (False, False))
    assert (ours.model.lm_head is None) == cfg.tie_embeddings


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_trajectory_follows_transformers(folders, family):
    _, hf, run = folders[family]
    check_greedy_trajectory(hf, load_model(run).model, V, family)


def check_greedy_trajectory(hf, model, vocab_size: int, name: str, masked=None) -> None:
    """transformers generates 32 tokens greedily; ours, fed the same ids through its KV cache, gives
    the same logits (1e-4) and picks the same token wherever transformers' choice is clear.
    `masked`: ids whose logits transformers' forward masks (Chameleon's image codes), left out."""
    prompt = torch.randint(2, vocab_size, (1, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = hf.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False, output_logits=True,
                          return_dict_in_generate=True, pad_token_id=1)
    new = out.sequences[0, 8:]
    theirs = torch.cat(out.logits)  # (32, V)
    assert len(new) == 32
    cache = model.new_cache(1, 40)
    with torch.no_grad():
        rows = [model(prompt, cache=cache)[0, -1]]
        rows += [model(t.view(1, 1), cache=cache)[0, -1] for t in new[:-1]]
    ours = torch.stack(rows)[:, :theirs.shape[1]]  # a per-modality head's logits follow (Janus's image codes)
    if masked is not None:
        ours[:, masked] = theirs[:, masked] = torch.finfo(theirs.dtype).min
    top2 = theirs.topk(2, dim=-1).values
    clear = top2[:, 0] - top2[:, 1] > 1e-3
    print(f"{name}: max |logit diff| {(ours - theirs).abs().max().item():.2e}, {int(clear.sum())} clear steps")
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert torch.equal(theirs.argmax(-1), new)  # transformers' path is greedy on these logits
    assert clear.sum() >= 24  # the comparison below covers most steps
    assert torch.equal(ours.argmax(-1)[clear], new[clear])


def test_llama3_scaling_is_the_one_computed():
    """The three bands of Llama 3.1's RoPE scaling: kept, blended, divided by the factor."""
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
    plain, scaled = rope_frequencies(16, 500000.0), rope_frequencies(16, 500000.0, scaling)
    r = 16 * plain / (2 * torch.pi)  # wavelengths in the pretraining context
    assert torch.equal(scaled[r >= 4], plain[r >= 4])
    assert torch.allclose(scaled[r <= 1], plain[r <= 1] / 8)
    mid = (r > 1) & (r < 4)
    assert mid.any() and bool(((scaled[mid] > plain[mid] / 8) & (scaled[mid] < plain[mid])).all())
    with pytest.raises(ValueError, match="'yarn' is not supported"):
        ModelConfig(rope_scaling={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(ValueError, match="exactly the keys"):
        ModelConfig(rope_scaling={"rope_type": "llama3", "factor": 8.0})


def test_new_options_default_to_todays_model():
    """The interop options off, the model is built as before: same parameters, same init draws."""
    cfg = debug()
    assert (cfg.qk_norm_type, cfg.qkv_bias, cfg.attn_head_dim, cfg.rope_scaling) == ("rms", False, None, None)
    torch.manual_seed(0)
    names = [n for n, _ in UnifiedTransformer(cfg).named_parameters()]
    assert not any(n.endswith(".bias") for n in names)
    assert cfg.heads is None and not any(n.startswith("heads.") for n in names)
    torch.manual_seed(0)
    biased = UnifiedTransformer(debug(qkv_bias=True))
    assert all(not p.any() for n, p in biased.named_parameters() if n.endswith(".bias"))


# ------------------------------------------------------------------ the imported run
def test_imported_run_keeps_the_models_ids(folders, tokenizer_json, capsys, tmp_path):
    _, _, run = folders["llama"]
    ck = load_model(run)
    v = ck.vocab
    assert (v.size, v.text_size, v.bos, v.eos, v.pad, v.codebooks) == (V, V, 0, 1, 1, {})
    assert v.token_name(0) == "<bos>" and v.token_name(5) == "text:5"
    tok = ck.tokenizers["text"]
    assert isinstance(tok, HFTextTokenizer) and tok.vocab_size == V
    assert tok.encode("the lazy dog") == HFTextTokenizer.from_file(tokenizer_json).encode("the lazy dog")
    assert json.loads((run / "state.json").read_text())["source_format"] == "llama"
    assert main(["lm", "sample", str(run), "--prompt", "The quick", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("The quick")
    assert main(["generate", str(run), "--task", "text-to-text", "--prompt", "The quick", "--max-new-tokens", "4",
                 "--temperature", "0", "--out", str(tmp_path / "gen")]) == 0
    assert (tmp_path / "gen" / "sample0.txt").is_file()


def test_sharded_and_pickled_weights_import_alike(folders, tmp_path):
    src, hf, run = folders["qwen2"]
    state = hf.state_dict()
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="40KB")
    shutil.copy(src / "tokenizer.json", sharded)
    assert (sharded / "model.safetensors.index.json").is_file() and not (sharded / "model.safetensors").exists()
    pickled = tmp_path / "pickled"
    shutil.copytree(src, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save(state, pickled / "pytorch_model.bin")
    want = load_model(run).model.state_dict()
    for folder in (sharded, pickled):
        got = load_model(import_checkpoint(folder, tmp_path / f"{folder.name}-run")).model.state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


# ------------------------------------------------------------------ export
@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    p = tmp_path_factory.mktemp("spm") / "corpus.txt"
    p.write_text("\n".join(CORPUS))
    return TextTokenizer.train([p], vocab_size=300)


def _trained_unitok_run(directory, spm, **model) -> Path:
    """A unitok text LM (SentencePiece vocabulary as `unitok lm train` builds it) after 5 AdamW steps."""
    vocab = UnifiedVocab.from_tokenizers([spm], max_size=1)
    torch.manual_seed(0)
    m = UnifiedTransformer(debug(vocab_size=vocab.size, **model))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    ids = torch.tensor([[vocab.bos] + spm.encode(" ".join(CORPUS[:3]))[:40]])
    for _ in range(5):
        opt.zero_grad()
        m(ids[:, :-1], ids[:, 1:]).backward()
        opt.step()
    return save_checkpoint(Path(directory) / "checkpoint", kind="transformer", config=to_dict(m.cfg),
                           modules={"model": m}, state={"step": 5, "history": []}, vocab=vocab,
                           tokenizers={"text": spm})


@pytest.mark.parametrize("qk_norm,arch", [(True, "Qwen3ForCausalLM"), (False, "LlamaForCausalLM")])
def test_export_loads_in_transformers_and_round_trips(spm, tmp_path, qk_norm, arch):
    run = _trained_unitok_run(tmp_path / "run", spm, qk_norm=qk_norm, qkv_bias=not qk_norm)
    out = export_hf(run, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["architectures"] == [arch]
    assert (out / "README.md").read_text().startswith("# unitok model exported for transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == arch
    ours = load_model(run)
    ids = torch.randint(0, ours.vocab.size, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        diff = (hf(ids).logits - ours.model(ids)).abs().max().item()
    print(f"{arch}: max |logit diff| {diff:.2e}")
    assert diff <= 1e-5
    # the folder is a unitok checkpoint too, and importing it changes no bit
    exported = load_model(out)
    back = load_model(import_checkpoint(out, tmp_path / "back"))
    a, b = ours.model.state_dict(), back.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert back.vocab.hash == exported.vocab.hash == ours.vocab.hash
    assert back.tokenizers["text"].identity() == ours.tokenizers["text"].identity()
    with torch.no_grad():
        assert torch.equal(back.model(ids), ours.model(ids)) and torch.equal(exported.model(ids), ours.model(ids))


def test_export_of_an_import_serves_its_tokenizer(folders, tmp_path):
    """An imported model goes back out with its tokenizer.json: transformers' AutoTokenizer and the
    unitok pipeline both read the folder."""
    from unitok.generation import Pipeline

    src, hf, run = folders["qwen3"]
    out = export_hf(run, tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "The lazy dog jumps."
    assert tok.encode(text, add_special_tokens=False) == load_model(run).tokenizers["text"].encode(text)
    assert (tok.bos_token_id, tok.eos_token_id) == (0, 1)
    result = Pipeline.from_pretrained(out)("text-to-text", prompt="The quick", max_new_tokens=3, temperature=0)
    assert len(result.samples[0].ids) == 3
    # exporting the export writes the same tensors; `unitok checkpoint export` of it writes our names again
    from safetensors.torch import load_file

    first, again = load_file(out / "model.safetensors"), load_file(export_hf(out, tmp_path / "again") / "model.safetensors")
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert main(["checkpoint", "export", str(out), "--out", str(tmp_path / "plain")]) == 0
    assert "layout" not in json.loads((tmp_path / "plain" / "model.json").read_text())
    assert load_model(tmp_path / "plain").model.state_dict().keys() == load_model(run).model.state_dict().keys()


def test_export_refusals(spm, tmp_path, capsys):
    run = _trained_unitok_run(tmp_path / "odd", spm, qk_norm=False, dim=34, n_head=4, attn_head_dim=8)
    assert "not a multiple of the 4 heads" in _one_line_error(capsys, ["checkpoint", "export-hf", str(run),
                                                                       "--out", str(tmp_path / "o1")])
    run = _trained_unitok_run(tmp_path / "bidi", spm)
    state = json.loads((run / "state.json").read_text())
    (run / "state.json").write_text(json.dumps({**state, "recipe": {"bidirectional_images": True}}))
    assert "bidirectional_images" in _one_line_error(capsys, ["checkpoint", "export-hf", str(run),
                                                              "--out", str(tmp_path / "o2")])
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


# ------------------------------------------------------------------ bad folders
class _RunsOnLoad:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("case,expected", [
    ("no-folder", "model folder not found"),
    ("no-config", "no config.json"),
    ("no-model-type", "names no model_type; pass --format"),
    ("unknown-architecture", "unknown architecture 'mistral'"),
    ("wrong-format", "describes a llama model, not qwen3"),
    ("shape", "config.json implies"),
    ("missing-tensor", "have no model.layers.1.mlp.down_proj.weight"),
    ("yarn", "RoPE scaling 'yarn'"),
    ("sliding-window", "sliding-window attention"),
    ("no-tokenizer", "no tokenizer.json"),
    ("pickle-with-code", "refused global 'posix.system'"),
])
def test_bad_folders_give_one_line_errors(folders, tmp_path, capsys, case, expected):
    src = tmp_path / "src"
    shutil.copytree(folders["llama"][0], src)
    fmt = "auto"
    marker = tmp_path / "ran"
    if case == "no-folder":
        src = tmp_path / "missing"
    elif case == "no-config":
        (src / "config.json").unlink()
    elif case == "no-model-type":
        _edit_config(src, model_type=None, architectures=None)
    elif case == "unknown-architecture":
        _edit_config(src, model_type="mistral", architectures=["MistralForCausalLM"])
    elif case == "wrong-format":
        fmt = "qwen3"
    elif case == "shape":
        _edit_config(src, intermediate_size=128)
    elif case == "missing-tensor":
        from safetensors.torch import load_file, save_file

        state = load_file(src / "model.safetensors")
        del state["model.layers.1.mlp.down_proj.weight"]
        save_file(state, src / "model.safetensors")
    elif case == "yarn":
        _edit_config(src, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0})
    elif case == "sliding-window":
        _edit_config(src, use_sliding_window=True, max_window_layers=1)
    elif case == "no-tokenizer":
        (src / "tokenizer.json").unlink()
    elif case == "pickle-with-code":
        (src / "model.safetensors").unlink()
        torch.save({"model.embed_tokens.weight": _RunsOnLoad(marker)}, src / "pytorch_model.bin")
    err = _one_line_error(capsys, ["checkpoint", "import", str(src), "--out", str(tmp_path / "run"),
                                   "--format", fmt])
    assert expected in err
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_token_ids_config_json_leaves_out_are_its_classs_defaults(folders, tmp_path, capsys):
    """transformers reads a missing bos/eos_token_id as its config class's default (Llama: 1 and 2), and
    so does import; Qwen's classes have none: without an eos_token_id the folder is refused."""
    src = tmp_path / "src"
    shutil.copytree(folders["llama"][0], src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k not in ("bos_token_id",
                                                                                        "eos_token_id")}))
    theirs = transformers.AutoConfig.from_pretrained(src)
    v = load_model(import_checkpoint(src, tmp_path / "run")).vocab
    assert (v.bos, v.eos) == (theirs.bos_token_id, theirs.eos_token_id) == (1, 2)
    qwen = tmp_path / "qwen"
    shutil.copytree(folders["qwen2"][0], qwen)
    _edit_config(qwen, eos_token_id=None)
    assert "names no eos_token_id" in _one_line_error(capsys, ["checkpoint", "import", str(qwen), "--out",
                                                               str(tmp_path / "qrun")])


def test_format_names_the_family_where_config_json_does_not(folders, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(folders["qwen2"][0], src)
    _edit_config(src, model_type=None, architectures=None)
    cfg = load_model(import_checkpoint(src, tmp_path / "run", "qwen2")).model.cfg
    assert cfg.qkv_bias and not cfg.qk_norm


def test_bad_index_cannot_name_files_outside_the_folder(folders, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(folders["llama"][0], src)
    (src / "model.safetensors").rename(tmp_path / "outside.safetensors")
    (src / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.norm.weight": "../outside.safetensors"}}))
    with pytest.raises(CheckpointError, match="is not the plain name of a file"):
        import_checkpoint(src, tmp_path / "run")


# ------------------------------------------------------------------ the tokenizer.json text tokenizer
def test_hf_text_tokenizer_encodes_and_decodes_like_tokenizers(tokenizer_json, tmp_path):
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(str(tokenizer_json))
    tok = HFTextTokenizer.from_file(tokenizer_json)
    texts = CORPUS[:4] + ["", " ", "  two  spaces ", "\x00\r\n\t", "🎉日本 naïve", "<s>inside</s> text"]
    for s in texts:
        ids = ref.encode(s, add_special_tokens=False).ids
        assert tok.encode(s) == ids
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=False) == s  # byte-level: exact
    assert tok.encode_batch(texts) == [tok.encode(s) for s in texts]
    assert tok.vocab_size == ref.get_vocab_size() and tok.token_id("</s>") == 1
    tok.save_pretrained(tmp_path / "t")
    again = load_tokenizer(tmp_path / "t")
    assert isinstance(again, HFTextTokenizer) and again.identity() == tok.identity()
    assert HFTextTokenizer.from_file(tokenizer_json, vocab_size=V).identity()["vocab_size"] == V
    with pytest.raises(CheckpointError, match="beyond the vocab_size 10"):
        HFTextTokenizer.from_file(tokenizer_json, vocab_size=10)
    (tmp_path / "t" / "tokenizer.json").write_text("{}")
    with pytest.raises(CheckpointError):
        load_tokenizer(tmp_path / "t")


def test_vocabulary_of_an_imported_model():
    """Special tokens inside the text range: packing, unpacking, names, manifest, and what is refused."""
    specials = {"<bos>": 7, "<eos>": 9, "<pad>": 9}
    v = UnifiedVocab(20, max_size=0, spans={}, specials=specials)
    assert (v.size, v.size_start, v.bos, v.eos, v.pad) == (20, 20, 7, 9, 9)
    packed = v.pack([{"text": [3, 4]}])
    assert packed.ids.tolist() == [7, 3, 4, 9]
    assert v.unpack(packed.ids).segments == [{"text": [3, 4]}]
    again = UnifiedVocab.from_manifest(v.manifest())
    assert again.special == v.special and again.hash == v.hash
    assert v.hash != UnifiedVocab(20, max_size=0, spans={}, specials={**specials, "<pad>": 8}).hash
    assert "special_ids" not in UnifiedVocab(20).manifest()  # unitok's own vocabularies are unchanged
    with pytest.raises(ValueError, match=r"text id in \[0, 20\)"):
        UnifiedVocab(20, max_size=0, spans={}, specials={"<eos>": 20})
    with pytest.raises(ValueError, match="share an id"):
        UnifiedVocab(20, specials={"<bos>": 1, "<boi>": 1})
    with pytest.raises(ValueError, match="span header holds size tokens"):
        UnifiedVocab(20, max_size=0)


def test_pipeline_text_output_leaves_out_an_imported_eos(folders, tmp_path):
    """With <eos> a text id (here id 0), a text answer ends at it and does not print it."""
    from unitok.generation import Pipeline

    src = tmp_path / "src"
    shutil.copytree(folders["llama"][0], src)
    _edit_config(src, bos_token_id=1, eos_token_id=0)
    loaded = load_model(import_checkpoint(src, tmp_path / "run"))
    with torch.no_grad():
        loaded.model.norm.weight.zero_()  # every logit 0: greedy picks id 0, the <eos>
    result = Pipeline(loaded)("text-to-text", prompt="The quick", max_new_tokens=3, temperature=0)
    assert result.samples[0].ids == [0] and result.samples[0].text == ""
