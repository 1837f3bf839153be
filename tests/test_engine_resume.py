"""The engine's checkpoint and resume in one process, in about a second (tests/test_engine.py does the
same through the CLI with kill -9, about a minute a trainer): a toy task whose every step draws from
torch's, Python's and NumPy's RNGs and from its own data position, stopped and resumed, ends exactly
where the uninterrupted run ends; what a resume refuses, each in one line."""

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from unitok.errors import CheckpointError
from unitok.training.loop import Engine, OptimConfig, RunConfig, Task

OPTIM = OptimConfig(lr=0.05, warmup_steps=2)


class Toy(Task):
    """y = w x on a fixed data stream; each step also adds noise from all three RNGs, so a resume that
    loses any of them, the data position, the task state or the optimizer's moments diverges."""

    def __init__(self, extra: bool = False, stop_at: int | None = None):
        torch.manual_seed(1)
        self.stop_at = stop_at  # raise Stop before this step (after its checkpoint): a killed run
        self.model = nn.Linear(4, 1)
        self.param_groups = [{"params": list(self.model.parameters())}]
        self.pos, self.phase = 0, 0
        self.ema = nn.Linear(4, 1) if extra else None  # a module a changed recipe adds
        self.extra_optimizers = {"ema": torch.optim.SGD(self.ema.parameters(), lr=0.1)} if extra else {}
        self.data = torch.linspace(-1, 1, 64).view(16, 4)

    def modules(self):
        return {"model": self.model, **({"ema": self.ema} if self.ema is not None else {})}

    def model_config(self):
        return {"toy": 1}

    def begin_step(self, step, progress):
        if step == self.stop_at:
            raise Stop

    def forward_backward(self, scale):
        x = self.data[self.pos % 16] + 0.1 * torch.randn(4) + random.random() + float(np.random.randn())
        self.pos += 3
        loss = (self.model(x) - self.phase).pow(2).mean()
        if self.ema is not None:
            loss = loss + self.ema(x).pow(2).mean()
        (loss * scale).backward()
        return {"loss": loss.item()}

    def end_step(self, step):
        self.phase = step % 3
        return {}

    def data_state(self):
        return {"pos": self.pos}

    def load_data_state(self, state):
        self.pos = state["pos"]

    def extra_state(self):
        return {"phase": self.phase}

    def load_extra_state(self, state):
        self.phase = state["phase"]


class Stop(Exception):
    pass


def _fit(out, steps, resume=False, recipe=None, allow=False, stop_at=None, ckpt_every=0):
    random.seed(0)  # a fresh run starts from the same Python and NumPy states; a resumed one must
    np.random.seed(4)  # replace them with the checkpoint's (the engine seeds torch itself; seed 4: see below)
    eng = Engine(RunConfig(max_steps=steps, seed=5, device="cpu", log_every=1, ckpt_every=ckpt_every), OPTIM, out,
                 recipe=recipe or {"run": {"max_steps": steps}, "lr": 0.05}, resume=resume,
                 allow_recipe_change=allow, progress=False)
    task = Toy(stop_at=stop_at)  # after the engine's torch.manual_seed, as a trainer builds its model
    eng.fit(task)
    return eng, task


def _state(eng, task):
    opt = eng.optimizers["model"].state_dict()
    moments = [t for s in opt["state"].values() for t in (s["exp_avg"], s["exp_avg_sq"], s["step"])]
    return [p.detach().clone() for p in task.model.parameters()] + moments


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_stop_and_resume_equals_the_uninterrupted_run(tmp_path):
    full, ftask = _fit(tmp_path / "full", 6)
    with pytest.raises(Stop):
        _fit(tmp_path / "cut", 6, stop_at=3, ckpt_every=3)
    st = json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())
    assert st["step"] == 3 and st["world_size"] == 1 and st["ranks"][0]["data"] == {"pos": 9}
    assert st["task"] == {"phase": 2} and [h["step"] for h in st["history"]] == [1, 2, 3]
    cut, ctask = _fit(tmp_path / "cut", 6, resume=True)  # the checkpoint of step 3 written by ckpt_every
    assert cut.step == 6 and ctask.pos == ftask.pos and ctask.phase == ftask.phase
    assert _same(_state(cut, ctask), _state(full, ftask))
    strip = lambda h: [{k: v for k, v in r.items() if k != "time_s"} for r in h]
    assert strip(cut.history) == strip(full.history) and len(cut.history) == 6
    assert cut.elapsed >= st["elapsed_s"] > 0
    # the checkpoint written at the end holds the resumed run's state
    assert json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())["step"] == 6


def test_checkpoint_holds_every_rng_and_round_trips_it(tmp_path):
    from unitok.training.loop import decode_rng_state, encode_rng_state

    t = torch.Generator().manual_seed(7).get_state()
    assert torch.equal(decode_rng_state(encode_rng_state(t)), t) and decode_rng_state(encode_rng_state(t)).dtype == t.dtype
    _fit(tmp_path / "a", 2)
    rank = json.loads((tmp_path / "a" / "checkpoint" / "state.json").read_text())["ranks"][0]
    assert set(rank) == {"torch", "python", "numpy", "data"}  # "cuda" only on a GPU
    assert rank["numpy"][0] == "MT19937" and len(rank["numpy"][1]) == 624


def test_numpy_gaussian_cache_and_a_gpu_checkpoint_resume_on_cpu(tmp_path):
    """NumPy's state includes a cached Gaussian (after an odd number of randn draws) that must come back;
    a checkpoint written on a GPU (with a CUDA RNG state) resumes on the CPU, which has no CUDA RNG."""
    full, ftask = _fit(tmp_path / "full", 6)
    with pytest.raises(Stop):
        _fit(tmp_path / "cut", 6, stop_at=3, ckpt_every=3)
    state = tmp_path / "cut" / "checkpoint" / "state.json"
    st = json.loads(state.read_text())
    has_gauss, gauss = st["ranks"][0]["numpy"][3:]
    assert has_gauss == 1 and 0 < abs(gauss) < 1  # 3 draws from seed 4: 0.69 cached (int() of it is 0)
    st["ranks"][0]["cuda"] = st["ranks"][0]["torch"]
    state.write_text(json.dumps(st))
    cut, ctask = _fit(tmp_path / "cut", 6, resume=True)
    assert _same(_state(cut, ctask), _state(full, ftask))


def test_resume_refusals_are_one_line_checkpoint_errors(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match="--resume: no checkpoint in"):
        _fit(out, 2, resume=True)
    _fit(out, 2)
    with pytest.raises(CheckpointError, match="already holds a checkpoint; pass --resume"):
        _fit(out, 2)
    with pytest.raises(CheckpointError, match=r"different recipe \(lr: 0.05 -> 0.1\); resume with the same"):
        _fit(out, 4, resume=True, recipe={"run": {"max_steps": 4}, "lr": 0.1})
    for n, tail in ((3, r"k2: '<missing>' -> 2\); resume"), (4, r"k2: '<missing>' -> 2; and 1 more\); resume")):
        with pytest.raises(CheckpointError, match=tail):  # the first three differences, then a count
            _fit(out, 4, resume=True, recipe={"run": {"max_steps": 4}, "lr": 0.05, **{f"k{i}": i for i in range(n)}})
    state = out / "checkpoint" / "state.json"
    good = json.loads(state.read_text())
    state.write_text(json.dumps({**good, "ranks": good["ranks"] * 2}))
    with pytest.raises(CheckpointError, match="saved by 2 ranks, resumed with 1"):
        _fit(out, 4, resume=True)
    for broken in ({**good, "ranks": [{**good["ranks"][0], "numpy": "x"}]}, {k: v for k, v in good.items() if k != "step"}):
        state.write_text(json.dumps(broken))
        with pytest.raises(CheckpointError, match="corrupt training state"):
            _fit(out, 4, resume=True)


def test_a_changed_recipe_on_purpose_keeps_what_the_checkpoint_has(tmp_path, capsys):
    """allow_recipe_change: the changed recipe resumes; a module (and its optimizer) the checkpoint
    lacks starts afresh, the rest is restored."""
    out = tmp_path / "run"
    eng, task = _fit(out, 2)
    saved = _state(eng, task)
    torch.manual_seed(0)
    fresh = Toy(extra=True)
    ema = [p.detach().clone() for p in fresh.ema.parameters()]
    eng2 = Engine(RunConfig(max_steps=2, seed=5, device="cpu"), OPTIM, out, recipe={"lr": 0.2}, resume=True,
                  allow_recipe_change=True, progress=False)
    eng2.optimizers = {"model": eng2.make_optimizer(fresh.param_groups), **fresh.extra_optimizers}
    eng2.restore(fresh)
    assert eng2.step == 2 and fresh.pos == task.pos
    assert _same(_state(eng2, fresh), saved)
    assert _same([p.detach() for p in fresh.ema.parameters()], ema)  # not in the checkpoint: untouched
    assert "ema is not in" in capsys.readouterr().out
    strict = Engine(RunConfig(max_steps=2, seed=5, device="cpu"), OPTIM, out, recipe={"run": {}, "lr": 0.05}, resume=True,
                    progress=False)
    strict.optimizers = {"model": strict.make_optimizer(task.param_groups), **fresh.extra_optimizers}
    with pytest.raises(CheckpointError, match="corrupt training state"):  # without the flag: the missing optimizer
        strict.restore(Toy())
