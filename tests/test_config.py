from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from unitok.config import from_dict, load_config, to_dict
from unitok.errors import ConfigError


@dataclass
class Model:
    n_layer: int = 2
    dim: int = 64
    dropout: float = 0.0
    norm: Literal["rms", "layer"] = "rms"


@dataclass
class Run:
    model: Model = field(default_factory=Model)
    lr: float = 1e-3
    name: Optional[str] = None
    betas: tuple[float, float] = (0.9, 0.95)
    tags: list[str] = field(default_factory=list)


def test_yaml_base_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("lr: 0.01\nmodel:\n  n_layer: 4\n  dim: 32\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nmodel:\n  dim: 48\ntags: [a]\n")
    cfg = load_config(Run, tmp_path / "child.yaml", ["model.dropout=0.1", "name=exp1", "betas=[0.8,0.9]", "lr=3"])
    assert load_config(Run, None, ["lr=5e-4"]).lr == 5e-4  # YAML 1.1 reads this as a string
    (tmp_path / "e.yaml").write_text("lr: 1e-3\n")
    assert load_config(Run, tmp_path / "e.yaml").lr == 1e-3
    assert cfg.model == Model(n_layer=4, dim=48, dropout=0.1)
    assert cfg.lr == 3.0 and isinstance(cfg.lr, float)
    assert cfg.name == "exp1" and cfg.betas == (0.8, 0.9) and cfg.tags == ["a"]
    assert from_dict(Run, to_dict(cfg)) == cfg


def test_unknown_key_names_it(tmp_path):
    (tmp_path / "c.yaml").write_text("model:\n  n_layers: 4\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'model.n_layers'.*n_layer"):
        load_config(Run, tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="unknown config key 'nope'"):
        load_config(Run, None, ["nope=1"])


@pytest.mark.parametrize("override,msg", [
    ("model.n_layer=2.5", "expects an integer"),
    ("model.norm=batch", "one of"),
    ("lr=fast", "expects a number"),
    ("betas=[1]", "list of 2"),
    ("model=3", "must be a mapping"),
    ("justakey", "key=value"),
])
def test_type_errors(override, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(Run, None, [override])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Run, tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(Run, tmp_path / "bad.yaml")


def test_errors_inside_a_union_are_reported():
    @dataclass
    class Outer:
        inner: Optional[Model] = None
        size: int | str = 0

    with pytest.raises(ConfigError, match=r"unknown config key 'inner.n_layers'; did you mean n_layer"):
        from_dict(Outer, {"inner": {"n_layers": 3}})
    with pytest.raises(ConfigError, match=r"config key 'inner.dim' expects an integer, got 'wide'"):
        from_dict(Outer, {"inner": {"dim": "wide"}})
    with pytest.raises(ConfigError, match=r"'size' fits none of its types: config key 'size' expects an integer, got "
                                          r"\[1\]; config key 'size' expects a string, got \[1\]"):
        from_dict(Outer, {"size": [1]})
    assert from_dict(Outer, {"inner": {"dim": 8}, "size": "big"}) == Outer(Model(dim=8), "big")
