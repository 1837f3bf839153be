"""Record the state-dict layouts (key, shape, dtype; no weights) of the upstream models whose
checkpoints unitok loads, into tests/assets/layouts/*.json.

Tests build checkpoints from these files (seeded random tensors of the recorded shapes, saved in
the upstream container format) and load them through `ImageTokenizer.from_taming`,
`ImageTokenizer.from_llamagen` and `AudioTokenizer.from_encodec_checkpoint`. That checks the loaders against the real layouts instead
of against state dicts made from our own modules. This script is not run by the tests; rerun it
only to refresh the files (the output is deterministic):

    .venv/bin/python -m pip install --no-deps taming-transformers==0.0.1 encodec==0.1.1
    git clone https://github.com/FoundationVision/LlamaGen /tmp/LlamaGen   # not a package
    .venv/bin/python scripts/record_layouts.py --llamagen /tmp/LlamaGen

What is recorded, and how it is built without the packages' heavy dependencies:

* taming (taming-transformers 0.0.1, the version scripts/setup_env.sh installs): the real
  `taming.models.vqgan.VQModel` class. Its module imports pytorch_lightning (only for the
  LightningModule base class) and `taming.main` (only for `instantiate_from_config`); both are
  stood in for here (a LightningModule that is a plain nn.Module; the two-line
  `instantiate_from_config` of taming/main.py). Encoder, Decoder, VectorQuantizer, the
  VQLPIPSWithDiscriminator loss and its NLayerDiscriminator are taming's own code. LPIPS needs
  torchvision's `vgg16().features` (weights are not loaded: `LPIPS.load_from_pretrained` would
  download them and is disabled here); a stand-in `torchvision.models.vgg16` builds the same
  `features` Sequential as torchvision's VGG-16 (configuration "D", no batch norm: 13 conv3x3 +
  ReLU, 5 max-pools), which is all LPIPS keeps of it.
  - taming_vqgan_small.json: a small ddconfig (the one tests/test_image_tokenizer.py uses) with
    the VQLPIPSWithDiscriminator loss, so the `loss.*` keys a trained VQModel checkpoint carries
    are present (`loss.perceptual_loss.*`, `loss.discriminator.*`).
  - taming_vqgan_chameleon.json: the Chameleon tokenizer's ddconfig (ch 128, ch_mult
    [1, 1, 2, 2, 4], 2 res blocks, no attention levels, z 256, 8192 x 256 codes; the defaults of
    transformers' ChameleonVQVAEConfig) with taming's DummyLoss (no loss keys).
* encodec (the `encodec` package 0.1.1, Meta's original release): `EncodecModel.encodec_model_24khz
  (pretrained=False)` and `encodec_model_48khz(pretrained=False)`. The package imports torchaudio
  at import time (only used for file I/O and resampling); an empty stand-in module is put in
  sys.modules. Its published `.th` files are plain `torch.save(model.state_dict())` files (the
  package reads them with `torch.hub.load_state_dict_from_url` and `model.load_state_dict(state)`),
  so the container is recorded as "state_dict".
* LlamaGen (github.com/FoundationVision/LlamaGen, not on PyPI; recorded at commit ce98ec4): its
  `tokenizer/tokenizer_image/vq_model.py`, imported from its file alone (the repository's top-level
  `tokenizer/` and `utils/` folders would shadow other packages on sys.path), `VQ_16()` with its
  defaults (16,384 codes of 8 dims, l2-normalised, the codebook-usage buffer), which
  vq_ds16_c2i.pt and vq_ds16_t2i.pt hold. Its training and sampling scripts save and read
  `{"model": state_dict, ...}` (`vq_model.load_state_dict(checkpoint["model"])`).
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path

import torch
from torch import nn

OUT = Path(__file__).resolve().parents[1] / "tests" / "assets" / "layouts"


def layout(state: dict) -> list:
    return [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in state.items()]


def write(name: str, body: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    keys = body.pop("keys")
    text = json.dumps(body, indent=1, sort_keys=True)[:-2] + ',\n "keys": [\n'
    text += ",\n".join("  " + json.dumps(k) for k in keys) + "\n ]\n}\n"
    json.loads(text)  # well-formed
    path.write_text(text)
    print(f"wrote {path} ({len(keys)} keys)")


def _package_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


# ----------------------------------------------------------------------------------------- taming
def _vgg16_features() -> nn.Sequential:
    """torchvision.models.vgg16().features: configuration "D" without batch norm."""
    layers, c = [], 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*layers)


def _stand_ins_for_taming() -> None:
    pl = types.ModuleType("pytorch_lightning")
    pl.LightningModule = nn.Module
    sys.modules.setdefault("pytorch_lightning", pl)

    tv = types.ModuleType("torchvision")
    tv_models = types.ModuleType("torchvision.models")
    tv_models.vgg16 = lambda pretrained=False, **kw: types.SimpleNamespace(features=_vgg16_features())
    tv.models = tv_models
    sys.modules.setdefault("torchvision", tv)
    sys.modules.setdefault("torchvision.models", tv_models)

    main = types.ModuleType("taming.main")  # taming/main.py imports lightning, omegaconf, torchvision, ...

    def get_obj_from_str(string):
        module, cls = string.rsplit(".", 1)
        return getattr(importlib.import_module(module), cls)

    main.get_obj_from_str = get_obj_from_str
    main.instantiate_from_config = lambda config: get_obj_from_str(config["target"])(**config.get("params", {}))
    sys.modules["taming.main"] = main


def record_taming() -> None:
    _stand_ins_for_taming()
    from taming.modules.losses.lpips import LPIPS

    LPIPS.load_from_pretrained = lambda self, name="vgg_lpips": None  # would download the LPIPS weights
    from taming.models.vqgan import VQModel

    configs = {
        "taming_vqgan_small.json": dict(
            n_embed=64, embed_dim=16,
            ddconfig=dict(double_z=False, z_channels=32, resolution=32, in_channels=3, out_ch=3, ch=32,
                          ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[8], dropout=0.0),
            lossconfig=dict(target="taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                            params=dict(disc_conditional=False, disc_in_channels=3, disc_start=10000,
                                        disc_weight=0.8, codebook_weight=1.0))),
        "taming_vqgan_chameleon.json": dict(
            n_embed=8192, embed_dim=256,
            ddconfig=dict(double_z=False, z_channels=256, resolution=512, in_channels=3, out_ch=3, ch=128,
                          ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0),
            lossconfig=dict(target="taming.modules.losses.vqperceptual.DummyLoss")),
    }
    for name, params in configs.items():
        torch.manual_seed(0)
        model = VQModel(**params)
        write(name, {
            "source": "taming.models.vqgan.VQModel(**params).state_dict() (taming-transformers "
                      f"{_package_version('taming-transformers')}; see scripts/record_layouts.py)",
            "container": "{'state_dict': state_dict} (a Lightning checkpoint; Lightning's other entries omitted)",
            "params": params,
            "torch": torch.__version__.split("+")[0],
            "keys": layout(model.state_dict()),
        })


# ---------------------------------------------------------------------------------------- encodec
def record_encodec() -> None:
    sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))  # only used for I/O and resampling
    from encodec import EncodecModel

    for name, build, info in [
        ("encodec_24khz.json", EncodecModel.encodec_model_24khz,
         dict(checkpoint="encodec_24khz-d7cc33bc.th", sample_rate=24000, channels=1, causal=True,
              norm="weight_norm", target_bandwidths=[1.5, 3.0, 6.0, 12.0, 24.0])),
        ("encodec_48khz.json", EncodecModel.encodec_model_48khz,
         dict(checkpoint="encodec_48khz-7e698e3e.th", sample_rate=48000, channels=2, causal=False,
              norm="time_group_norm", normalize=True, segment=1.0, target_bandwidths=[3.0, 6.0, 12.0, 24.0])),
    ]:
        torch.manual_seed(0)
        model = build(pretrained=False)
        write(name, {
            "source": f"encodec.EncodecModel.{build.__name__}(pretrained=False).state_dict() (encodec "
                      f"{_package_version('encodec')}; see scripts/record_layouts.py)",
            "container": "state_dict (the published .th files are torch.save(model.state_dict()))",
            "params": info,
            "torch": torch.__version__.split("+")[0],
            "keys": layout(model.state_dict()),
        })


# ---------------------------------------------------------------------------------------- LlamaGen
def record_llamagen(repo: Path) -> None:
    import importlib.util
    import subprocess

    path = repo / "tokenizer" / "tokenizer_image" / "vq_model.py"
    spec = importlib.util.spec_from_file_location("llamagen_vq_model", path)
    vq_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vq_model)
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    torch.manual_seed(0)
    model = vq_model.VQ_16()
    write("llamagen_vq_ds16.json", {
        "source": f"LlamaGen tokenizer/tokenizer_image/vq_model.py VQ_16().state_dict() (commit {commit}; see "
                  "scripts/record_layouts.py)",
        "container": "{'model': state_dict} (its vq_train.py adds optimizer, discriminator, steps, args, ema)",
        "params": {"model": "VQ-16", **{k: v for k, v in vars(model.config).items()}},
        "torch": torch.__version__.split("+")[0],
        "keys": layout(model.state_dict()),
    })


if __name__ == "__main__":
    if "--llamagen" in sys.argv:
        record_llamagen(Path(sys.argv[sys.argv.index("--llamagen") + 1]))
    else:
        record_taming()
        record_encodec()
