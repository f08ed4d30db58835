"""Checkpoints: round trip of weights, optimizer, RNG and counters; corrupt files are UserErrors;
NaN never written; a damaged checkpoint reported, never deleted; a full disk names the file."""

import errno
import json
import shutil

import pytest
import torch
from torch import nn

from worldmodels import fileio
from worldmodels.checkpoint import (
    NonFiniteCheckpoint,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from worldmodels.errors import DiskFull, UserError
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


def _save(directory, name, model, state=None, keep=2):
    return save_checkpoint(directory, name, modules={"agent": model}, state=state or {}, meta={},
                           keep=keep)  # fmt: skip


@pytest.mark.parametrize("where", ["weights", "state"])
def test_nan_is_never_checkpointed_and_the_last_good_one_survives_rotation(tmp_path, where):
    model, opt = _trained()
    _save(tmp_path, "epoch_000001", model, keep=1)
    if where == "weights":
        with torch.no_grad():
            model.lin.weight[0, 0] = float("nan")
        state = {}
    else:
        state = {"optim": opt.state_dict(), "bad": [torch.tensor([1.0, float("inf")])]}
    with pytest.raises(NonFiniteCheckpoint, match="tensors hold NaN or inf") as err:
        _save(tmp_path, "epoch_000002", model, state, keep=1)
    assert ("agent.lin.weight" if where == "weights" else "state.bad.0") in str(err.value)
    assert "epoch_000001" in str(err.value)  # the one that stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_000001", "latest"]
    assert latest_checkpoint(tmp_path).name == "epoch_000001"


def test_checksums_catch_a_flipped_byte_in_either_file(tmp_path):
    for fname in ("weights.safetensors", "state.pt"):
        path = _saved(tmp_path / fname)
        meta = json.loads((path / "meta.json").read_text())
        assert set(meta["files"]) == {"weights.safetensors", "state.pt"}
        data = bytearray((path / fname).read_bytes())
        data[len(data) // 2] ^= 1
        (path / fname).write_bytes(bytes(data))
        with pytest.raises(UserError, match=f"{fname} is corrupt: its sha256 differs"):
            load_checkpoint(path, {"agent": Tiny()})


def test_a_checkpoint_without_meta_json_is_reported_never_deleted_or_overwritten(tmp_path):
    model, _ = _trained()
    _save(tmp_path, "epoch_000001", model)
    damaged = _save(tmp_path, "epoch_000002", model)
    (damaged / "meta.json").unlink()
    for pointer in (True, False):  # named by `latest`, or only the newest by name
        if not pointer:
            (tmp_path / "latest").unlink()
        with pytest.raises(UserError, match="epoch_000002 has no meta.json"):
            latest_checkpoint(tmp_path)
    with pytest.raises(UserError, match="has no meta.json"):
        _save(tmp_path, "epoch_000002", model)
    for epoch in (3, 4, 5):  # pruning to 2 never touches it
        _save(tmp_path, f"epoch_{epoch:06d}", model)
    assert sorted(p.name for p in damaged.iterdir()) == ["state.pt", "weights.safetensors"]
    assert latest_checkpoint(tmp_path).name == "epoch_000005"


def test_a_pointer_to_a_deleted_checkpoint_falls_back_to_the_newest_complete_one(tmp_path):
    model, _ = _trained()
    _save(tmp_path, "epoch_000001", model)
    newest = _save(tmp_path, "epoch_000002", model)
    shutil.rmtree(newest)
    assert latest_checkpoint(tmp_path).name == "epoch_000001"


def test_disk_full_names_the_checkpoint_file_and_keeps_the_previous_one(tmp_path, monkeypatch):
    model, _ = _trained()
    _save(tmp_path, "epoch_000001", model)
    real = fileio._write_all

    def full(f, data, path):
        if path.name == "state.pt":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, data, path)

    monkeypatch.setattr(fileio, "_write_all", full)
    with pytest.raises(DiskFull, match=r"while writing .*epoch_000002/state\.pt"):
        _save(tmp_path, "epoch_000002", model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_000001", "latest"]
    load_checkpoint(latest_checkpoint(tmp_path), {"agent": Tiny()})
