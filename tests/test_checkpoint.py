"""Checkpoints: round trip of weights, optimizer, RNG and counters; corrupt files are UserErrors."""

import json

import pytest
import torch
from torch import nn

from worldmodels.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from worldmodels.errors import UserError
from worldmodels.seeding import global_rng_state, seed_everything, set_global_rng_state


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self.gen = torch.Generator().manual_seed(0)

    def get_extra_state(self):
        return {"gen": self.gen.get_state(), "note": "hello"}

    def set_extra_state(self, state):
        self.gen.set_state(state["gen"])
        self.note = state["note"]


def _trained():
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model.lin(torch.randn(4, 3)).pow(2).mean().backward()
        opt.step()
    model.count += 7
    torch.rand(1, generator=model.gen)
    return model, opt


def test_round_trip_restores_everything(tmp_path):
    model, opt = _trained()
    seed_everything(1)
    rng = global_rng_state()
    save_checkpoint(
        tmp_path,
        "epoch_000001",
        modules={"agent": model},
        state={"optim": opt.state_dict(), "rng": rng, "counters": {"epoch": 1, "env_steps": 500}},
        meta={"agent": "tiny"},
    )
    expected_next = torch.rand(3)  # what the global RNG draws next after the save

    fresh = Tiny()
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    state, meta = load_checkpoint(latest_checkpoint(tmp_path), {"agent": fresh})
    fresh_opt.load_state_dict(state["optim"])
    set_global_rng_state(state["rng"])

    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)
    assert fresh.note == "hello"
    assert torch.equal(fresh.gen.get_state(), model.gen.get_state())
    assert state["counters"] == {"epoch": 1, "env_steps": 500}
    assert meta["agent"] == "tiny" and meta["modules"] == ["agent"]
    assert torch.equal(torch.rand(3), expected_next)
    # the optimizer continues identically
    x = torch.randn(4, 3)
    for m, o in ((model, opt), (fresh, fresh_opt)):
        o.zero_grad()
        m.lin(x).pow(2).mean().backward()
        o.step()
    assert torch.equal(model.lin.weight, fresh.lin.weight)


def test_latest_pointer_and_pruning(tmp_path):
    model, _ = _trained()
    for epoch in range(1, 5):
        save_checkpoint(
            tmp_path, f"epoch_{epoch:06d}", modules={"m": model}, state={}, meta={}, keep=2
        )
    kept = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert kept == ["epoch_000003", "epoch_000004"]
    assert latest_checkpoint(tmp_path).name == "epoch_000004"


def _saved(tmp_path):
    model, _ = _trained()
    return save_checkpoint(
        tmp_path, "epoch_000001", modules={"agent": model}, state={"x": 1}, meta={}
    )


def test_truncated_weights_are_a_user_error(tmp_path):
    path = _saved(tmp_path)
    data = (path / "weights.safetensors").read_bytes()
    (path / "weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="weights.safetensors is corrupt"):
        load_checkpoint(path, {"agent": Tiny()})


def test_garbage_state_is_a_user_error(tmp_path):
    path = _saved(tmp_path)
    (path / "state.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="state.pt is corrupt"):
        load_checkpoint(path, {"agent": Tiny()})


def test_pickled_code_is_refused(tmp_path):
    """weights_only=True: a state file that would run code on load is rejected, not executed."""
    path = _saved(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state": Evil()}, path / "state.pt")
    with pytest.raises(UserError, match="state.pt is corrupt"):
        load_checkpoint(path, {"agent": Tiny()})


def test_missing_and_mismatched(tmp_path):
    path = _saved(tmp_path)
    with pytest.raises(UserError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "epoch_000009", {"agent": Tiny()})
    (path / "meta.json").write_text("{broken")
    with pytest.raises(UserError, match="meta.json is corrupt"):
        load_checkpoint(path, {"agent": Tiny()})
    path = _saved(tmp_path)
    with pytest.raises(UserError, match="does not fit 'agent'"):
        load_checkpoint(path, {"agent": nn.Linear(5, 5)})
    (path / "state.pt").unlink()
    with pytest.raises(UserError, match="state.pt is missing"):
        load_checkpoint(path, {"agent": Tiny()})
    assert json.loads((path / "meta.json").read_text())["format_version"] == 1
