"""Times the published IRIS code (Micheli et al. 2023, github.com/eloialonso/iris) the way
``bench/world_speed.py`` times ours: random weights, synthetic 64x64 frames, 4 actions, the
published configs (``config/{tokenizer,world_model,actor_critic}/default.yaml`` and
``config/trainer.yaml``), built and stepped as its trainer does. Prints one JSON object.

    python bench/published/iris.py --src ~/src/iris --batch-size 8 --threads 1

Needs einops (the published code's requirement). Modules imported only by code paths not timed
here are stood in for where missing: gym (a type hint), torchvision (real-env resets), psutil
(a dataset class). The tokenizer is built without its LPIPS loss (``with_lpips=False``), which
needs VGG16 weights from the network and is used only by the tokenizer's own training step, not
timed here. Figures:

* ``transformer_step_s``: ``WorldModel.compute_loss`` on ``batch`` 20-frame segments (which
  tokenizes every frame of the batch with the frozen tokenizer, as the published trainer does
  on every step) + backward + clip + AdamW;
* ``imagination_trajectory_s``: ``WorldModelEnv`` with ``batch`` rows, reset from a real frame,
  then 20 steps, the last without a next frame (its reward only), as ``ActorCritic.imagine``
  does: 20 frames, of which ``ActorCritic.compute_loss`` trains on the first 19 transitions
  (``trained_transitions``); ``imagination_step_s``: the same per step;
* ``agent_update_s``: ``ActorCritic.compute_loss`` (the 20-frame burn-in through the tokenizer's
  reconstructions, then 20 imagined steps) + backward + clip + Adam.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, load_yaml, mean_time, stand_in, train_step, use_checkout  # noqa: E402

NUM_ACTIONS = 4  # Breakout


def load_config(src: Path) -> dict:
    """``config/trainer.yaml`` with its default groups and its ``${a.b}`` / ``${..b}`` references
    resolved, as hydra composes it."""
    cfg = load_yaml(src / "config/trainer.yaml")
    for group in ("tokenizer", "world_model", "actor_critic"):
        cfg[group] = load_yaml(src / f"config/{group}/default.yaml")
    cfg.pop("defaults", None)

    def resolve(node, path):
        if isinstance(node, dict):
            return {k: resolve(v, [*path, k]) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v, path) for v in node]
        m = re.fullmatch(r"\$\{([^}]+)\}", node) if isinstance(node, str) else None
        if m is None:
            return node
        ref = m.group(1)
        up = len(ref) - len(ref.lstrip("."))
        keys = (path[: len(path) - up] if up else []) + ref.lstrip(".").split(".")
        target = cfg
        for k in keys:
            target = target[k]
        return resolve(target, keys)

    return resolve(cfg, [])


def main() -> int:
    args = arguments(__doc__, "eloialonso/iris")
    use_checkout(args.src, "models/world_model.py")
    stood_in = stand_in("gym", "torchvision", "psutil", classes={"gym": ("Env",)})
    # LPIPS (VGG16 weights from the network) is not built: with_lpips=False below
    lpips = types.ModuleType("models.tokenizer.lpips")
    lpips.LPIPS = None  # type: ignore[attr-defined]
    sys.modules["models.tokenizer.lpips"] = lpips

    import torch

    from envs.world_model_env import WorldModelEnv
    from models.actor_critic import ActorCritic
    from models.tokenizer import Decoder, Encoder, EncoderDecoderConfig, Tokenizer
    from models.transformer import TransformerConfig
    from models.world_model import WorldModel
    from utils import configure_optimizer, set_seed

    torch.set_num_threads(args.threads)
    set_seed(0)
    b = args.batch_size
    cfg = load_config(args.src)
    training = cfg["training"]

    def fields(d: dict) -> dict:
        return {k: v for k, v in d.items() if k != "_target_"}

    t = cfg["tokenizer"]
    with contextlib.redirect_stdout(sys.stderr):  # the decoder prints its latent shape
        encoder = Encoder(EncoderDecoderConfig(**fields(t["encoder"]["config"])))
        decoder = Decoder(EncoderDecoderConfig(**fields(t["decoder"]["config"])))
    tokenizer = Tokenizer(t["vocab_size"], t["embed_dim"], encoder, decoder, with_lpips=False)
    world_model = WorldModel(tokenizer.vocab_size, NUM_ACTIONS,
                             TransformerConfig(**fields(cfg["world_model"])))  # fmt: skip
    actor_critic = ActorCritic(**fields(cfg["actor_critic"]), act_vocab_size=NUM_ACTIONS)
    lr = training["learning_rate"]
    opt_wm = configure_optimizer(world_model, lr, training["world_model"]["weight_decay"])
    opt_ac = torch.optim.Adam(actor_critic.parameters(), lr=lr)

    def batch(length: int) -> dict:
        return {
            "observations": torch.randint(0, 256, (b, length, 3, 64, 64)).float() / 255,
            "actions": torch.randint(0, NUM_ACTIONS, (b, length)),
            "rewards": torch.randint(-1, 2, (b, length)).float(),
            "ends": torch.zeros(b, length, dtype=torch.long),
            "mask_padding": torch.ones(b, length, dtype=torch.bool),
        }

    ac = training["actor_critic"]
    wm = training["world_model"]
    horizon, burn_in = ac["imagine_horizon"], ac["burn_in"]
    seq_len = cfg["common"]["sequence_length"]
    out: dict = {"code": "published IRIS", "src": str(args.src), "batch_size": b,
                 "threads": args.threads, "precision": "fp32", "torch": torch.__version__,
                 "stood_in": stood_in, "horizon": horizon, "burn_in": burn_in,
                 "transformer_seq_len": seq_len,
                 "params": {name: sum(p.numel() for p in m.parameters()) for name, m in
                            (("tokenizer", tokenizer), ("transformer", world_model),
                             ("agent", actor_critic))}}  # fmt: skip
    share = {}

    tokenizer.eval()
    world_model.train()
    x = batch(seq_len)
    out["transformer_step_s"], share["transformer"] = mean_time(lambda: train_step(
        lambda: world_model.compute_loss(x, tokenizer).loss_total, world_model, opt_wm,
        wm["max_grad_norm"]), args.repeats)  # fmt: skip

    world_model.eval()
    start = batch(1 + burn_in)["observations"][:, -1]
    zeros = torch.zeros(b, 1, dtype=torch.long)

    def trajectory():
        with torch.no_grad():
            env = WorldModelEnv(tokenizer, world_model, torch.device("cpu"))
            env.reset_from_initial_observations(start)
            for k in range(horizon):
                env.step(zeros, should_predict_next_obs=k < horizon - 1)

    sec, share["imagination"] = mean_time(trajectory, args.repeats)
    out["imagination_trajectory_s"] = sec
    out["imagination_step_s"] = sec / horizon
    out["trained_transitions"] = horizon - 1  # compute_loss drops the last action and reward

    actor_critic.train()
    x = batch(1 + burn_in)
    kwargs = {k: ac[k] for k in ("imagine_horizon", "gamma", "lambda_", "entropy_weight")}
    out["agent_update_s"], share["agent"] = mean_time(lambda: train_step(
        lambda: actor_critic.compute_loss(x, tokenizer, world_model, **kwargs).loss_total,
        actor_critic, opt_ac, ac["max_grad_norm"]), args.repeats)  # fmt: skip
    out["cpu_share"] = {k: round(v, 3) for k, v in share.items()}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
