"""``bench/world_speed.py``, the timing script that ``bench/gpu_check.sh`` runs on a GPU: it writes
every figure it promises, and a part that fails (on a GPU, a capture that CUDA refuses) is
recorded in the JSON and the summary while every other part is still measured."""

import json

import torch
from test_vs_published import ROOT, _module  # loads a bench script by its path

from worldmodels.graphs import CapturedCall


def test_a_failed_capture_costs_only_its_own_figures(tmp_path, monkeypatch, capsys):
    def refuse(self, *args):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(CapturedCall, "_capture", refuse)
    out = tmp_path / "vae.json"
    argv = ["--world", "vae", "--preset", "smoke", "--device", "cpu", "--precision", "fp32",
            "--threads", str(torch.get_num_threads()), "--steps", "1", "--batch-size", "2",
            "--graphs", "both", "--no-check-fullgraph", "--out", str(out)]  # fmt: skip
    assert _module(ROOT / "bench" / "world_speed.py").main(argv) == 1
    d = json.loads(out.read_text())
    for key in ("vae_train_s_per_step", "mdn_rnn_train_s_per_step", "imagination_trajectory_s",
                "agent_update_s", "vae_flops_per_step", "agent_flops_per_update"):  # fmt: skip
        assert d[key] > 0, key  # eager: every part measured
    parts = ("vae", "mdn_rnn", "imagination", "agent")
    for part in parts:  # graphed: every part tried, each failure recorded on its own
        assert d[f"error_{part}_graphs"].startswith("RuntimeError: operation not permitted"), part
    assert not [k for k in d if k.endswith("_graphs") and not k.startswith("error_")]
    err = capsys.readouterr().err
    assert "4 part(s) failed: error_vae_graphs, error_mdn_rnn_graphs" in err

    _module(ROOT / "bench" / "gpu_summary.py").main([str(out)])
    summary = capsys.readouterr().out
    for part in parts:
        assert f"FAILED {part}_graphs: RuntimeError: operation not permitted" in summary
