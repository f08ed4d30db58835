"""Static hot loops: imagination compiles once without graph breaks or recompiles and gives the
eager trajectories; CUDA-graph buffer semantics (simulated on CPU) change no result; the graphed
update trains like the eager one. The CPU stand-ins for CUDA graph capture:

* ``torch.compile(fullgraph=True, dynamic=False)`` fails on any graph break (a host sync, data-
  dependent Python control flow) and counts a recompile for any change of shapes, strides,
  Python values or aliasing from step to step;
* ``graphs="simulate"`` runs the captured code path with its static buffers (inputs copied in,
  outputs overwritten by the next call), eagerly, and audits the capture and every replay kernel
  by kernel for what CUDA capture refuses (host reads, host data, own generators) or a replay
  would not repeat (other kernels, other Python values, a reassigned tensor).
"""

import dataclasses

import pytest
import torch
import torch._dynamo

from worldmodels import config as C
from worldmodels import contract
from worldmodels.agents.actor_critic import ActorCritic
from worldmodels.build import build_world
from worldmodels.envs.dream import DreamEnv, _clone, swap_rows_
from worldmodels.envs.testing import BanditWorld, random_store
from worldmodels.errors import UserError
from worldmodels.graphs import CapturedCall, NotCapturable, eager_on_failure, graphs_enabled
from worldmodels.interfaces import EnvInfo
from worldmodels.nn.sampling import sample_categorical
from worldmodels.training import StageTrainer

ENV = EnvInfo(num_actions=4, obs_shape=(3, 64, 64))
# Smaller than the smoke preset where it keeps compile times short: 4 tokens per frame, a 3-frame
# IRIS context (so the cache is refreshed inside every trajectory).
TINY = {
    "diffusion": [],
    "iris": [
        "world.tokenizer.ch_mult=[1,1,1,1,1,1]",
        "world.dynamics.context_frames=3",
        "world.context_len=3",
        "world.transformer_training.seq_len=3",
        "world.transformer_training.pad_right=2",
    ],
    "vae": [],
}
HORIZON = 4


def _world(name, device="cpu"):
    torch.manual_seed(0)
    cfg = C.resolve(env="Breakout", world=name, preset="smoke", overrides=TINY[name])
    return build_world(cfg.world, ENV, device=torch.device(device)).eval()


def _agent():
    cfg = C.resolve(env="Breakout", world="diffusion", agent="actor_critic", preset="smoke")
    return ActorCritic(cfg.agent.config, ENV, seed=0).eval()


def _store():
    return random_store(num_episodes=4, length=24, obs_shape=ENV.obs_shape, num_actions=4)


def _policy(agent):
    """The agent's next action in imagination: a static function of (obs, h, c)."""

    def act(obs, h, c):
        with torch.no_grad():
            logits, _, (h, c) = agent(obs, (h, c))
            return sample_categorical(logits), h, c

    return act


class CountingBackend:
    """``aot_eager`` (the eager kernels, so results are bitwise those of eager mode) that counts
    the graphs it is asked to compile: one per function unless something recompiles."""

    def __init__(self):
        self.graphs = {}

    def wrap(self, fn, name):
        def backend(gm, example_inputs):
            self.graphs[name] = self.graphs.get(name, 0) + 1
            return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

        return torch.compile(fn, fullgraph=True, dynamic=False, backend=backend)


def _trajectories(
    world, *, capture=None, graphs=None, spares="fresh", act=None, n=3, swap=None
):  # fmt: skip
    """``n`` whole trajectories (a reset before each) of 3 rows, actions from ``act``; ``swap``:
    how finished rows restart (default: the world's own way, if it has one)."""
    torch.manual_seed(0)
    dream = DreamEnv(
        world, _store(), num_envs=3, horizon=HORIZON, device="cpu", seed=1, spares=spares,
        capture=capture, graphs=graphs,
    )  # fmt: skip
    if swap is not None:
        dream._swap_rows = swap
    agent = _agent()
    policy = act or _policy(agent)
    out = []
    for _ in range(n):
        obs, _ = dream.reset()
        h, c = agent.initial_state(3, "cpu")
        out.append(obs)
        for _ in range(HORIZON):
            action, h, c = policy(obs, h, c)
            obs, rew, term, trunc, info = dream.step(action)
            out += [action, obs, rew, term, trunc, info["final_obs"]]
    return out


def _equal(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.fixture
def allow_rnn():
    # nn.LSTM (the reward/end model, the MDN-RNN) needs dynamo's RNN support, which is off by
    # default; CUDA graphs capture cuDNN's LSTM as it is.
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=True):
        yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", ["diffusion", "iris", "vae"])
def test_imagined_step_compiles_once_and_gives_the_eager_trajectories(name, allow_rnn):
    """World step + DreamEnv bookkeeping (horizon, restarts from spares, outputs) and the
    agent's action: one graph each, no recompile over 3 trajectories (2 resets between them; for
    IRIS a cache refresh inside each), and bitwise the eager trajectories."""
    world = _world(name)
    eager = _trajectories(world)
    compiled = CountingBackend()
    agent = _agent()
    policy = compiled.wrap(_policy(agent), "policy")
    got = _trajectories(world, capture=compiled.wrap, act=policy)
    expected = {"imagine_step": 1, "policy": 1}
    if name == "iris":
        expected["imagine_refresh"] = 1
    assert compiled.graphs == expected
    assert _equal(eager, got)
    per_trajectory = 1 + 6 * HORIZON  # first obs, then (action, obs, rew, term, trunc, final)
    terms = [x for i, x in enumerate(eager) if i % per_trajectory % 6 == 4]
    assert torch.stack(terms).any()  # rows ended early and restarted from their spares


@pytest.mark.parametrize("spares", ["fresh", "shared"])
@pytest.mark.parametrize("name", ["diffusion", "iris", "vae"])
def test_captured_buffers_change_no_trajectory(name, spares):
    """The CUDA-graph code path (static inputs, in-place state, outputs overwritten by the next
    call), simulated on CPU, gives bitwise the trajectories of the plain eager path."""
    world = _world(name)
    eager = _trajectories(world, spares=spares, n=2)
    assert _equal(eager, _trajectories(world, graphs="simulate", spares=spares, n=2))


@pytest.mark.parametrize("graphs", [None, "simulate"])
@pytest.mark.parametrize("spares", ["fresh", "shared"])
def test_iris_restarts_rows_from_the_slots_its_spares_hold_alone(spares, graphs):
    """IRIS's own row swap copies only the key/value slots a spare can hold (the first
    ``start_fill``) and gives bitwise the trajectories of the swap that copies every slot, in
    trajectories whose rows end early, restart and pass a cache refresh."""
    world = _world("iris")
    assert contract.swap_rows(world) is not None
    own = _trajectories(world, spares=spares, graphs=graphs, n=2)
    assert _equal(own, _trajectories(world, spares=spares, graphs=graphs, n=2, swap=swap_rows_))

    torch.manual_seed(0)
    dream = DreamEnv(world, _store(), num_envs=3, horizon=HORIZON, device="cpu", spares=spares)
    dream.reset()
    dream.step(torch.zeros(3, dtype=torch.long))
    state, spare = _clone(dream._state), dream._spare
    slots = spare["start_fill"]
    assert 0 < slots < state["keys"].shape[3]
    mask = torch.tensor([True, False, True])
    out = world.imagine_swap_rows_(mask, spare, _clone(state))
    for key in ("keys", "values"):
        assert torch.equal(out[key][mask, ..., :slots, :], spare[key][mask, ..., :slots, :])
        assert torch.equal(out[key][:, ..., slots:, :], state[key][:, ..., slots:, :])
        assert torch.equal(out[key][~mask], state[key][~mask])
    for key in ("kv_valid", "tokens", "actions", "valid", "pos"):
        assert torch.equal(out[key], torch.where(mask.view(-1, *[1] * (out[key].ndim - 1)),
                                                 spare[key], state[key]))  # fmt: skip
    assert not out["kv_valid"][mask, slots:].any()  # the old row's keys: invalid for the new


def test_shared_spares_restart_from_their_own_context():
    world = BanditWorld(end_prob=0.0)
    dream = DreamEnv(world, random_store(), num_envs=4, horizon=2, device="cpu", spares="shared")
    first, info = dream.reset()
    assert info["next_context_obs"] is info["context_obs"]
    assert info["next_context_mask"] is info["context_mask"]
    assert dream.starts_per_reset == 4
    for _ in range(2):
        obs, *_ = dream.step(torch.zeros(4, dtype=torch.long))
    assert torch.equal(obs, first)  # truncated at the horizon: back to the start


def test_captured_call_semantics():
    """Static outputs are overwritten by the next call; a state passed back as it came out is
    not copied; nested calls run inline; Python values are part of the key."""
    calls = []

    def fn(x, scale):
        calls.append(scale)
        return {"y": x * scale, "x": x.add_(1)}

    cap = CapturedCall(fn, mode="simulate", warmup=1)
    x = torch.zeros(2)
    first = cap(x, 2.0)  # warm-up: eager, its own tensors
    x = first["x"]
    kept = cap(x, 2.0)  # capture
    y1 = kept["y"].clone()
    again = cap(kept["x"], 2.0)  # the static input itself: no copy, updated in place
    assert again is kept and not torch.equal(kept["y"], y1)  # overwritten, as by a replay
    assert torch.equal(again["x"], torch.full((2,), 3.0))
    cap(torch.zeros(2), 3.0)  # another Python value: another key (warm-up)
    assert cap.captures == 1 and calls == [2.0, 2.0, 2.0, 3.0]

    outer = CapturedCall(lambda v: cap(v, 5.0)["y"] + 1, mode="simulate", warmup=0)
    assert torch.equal(outer(torch.ones(2)), torch.full((2,), 6.0))  # 1 * 5 + 1
    assert cap.captures == 1  # the inner call ran inline


class _Counter:
    calls = 0


_HELD = {"t": torch.ones(4)}
_GEN = torch.Generator().manual_seed(0)


def _counting(v):
    _Counter.calls += 1
    return v * _Counter.calls


def _reassigning(v):
    out = v + _HELD["t"]
    _HELD["t"] = torch.ones(4, device=v.device)  # a new tensor: a replay reads the old one
    return out


def _alternating(v):
    _Counter.calls += 1
    return v.exp() if _Counter.calls % 2 else v.sin()


def _one_element(v):
    out = v.clone()
    out[0] = 1.0
    return out


@pytest.mark.parametrize(
    "fn, says",
    [
        (lambda v: v * 2 if v.sum() > 0 else v, "_local_scalar_dense reads a tensor's value"),
        (lambda v: v + v.max().item(), "_local_scalar_dense reads a tensor's value"),
        (lambda v: v + v.tolist()[0], r"\.tolist\(\) copies a tensor to the host"),
        (lambda v: v + v.cpu(), r"\.cpu\(\) copies a tensor to the host"),
        (lambda v: v[v > 0].sum(), "indexes with a boolean mask"),
        (lambda v: v.nonzero().sum(), "nonzero sizes its output by the values"),
        (lambda v: v + torch.tensor(1.0), "add.Tensor reads a tensor made from host data"),
        (_one_element, "copy_ reads a tensor made from host data"),
        (lambda v: v + torch.rand(4, generator=_GEN, device=v.device),
         "draws from a torch.Generator of its own"),
        (lambda v: v + torch.zeros(4), r"torch.zeros\(\.\.\.\) has no device="),
        (_counting, r"kernel 1 gives aten::mul.Tensor other arguments .*argument 1: 2 at "
                    "capture, 3 now"),
        (_reassigning, "a tensor from outside the call that is not the one the capture read"),
        (_alternating, "kernel 1 runs aten::exp where the capture ran aten::sin"),
    ],
)  # fmt: skip
def test_the_simulated_capture_refuses_what_cuda_graphs_would(fn, says):
    """Under ``mode="simulate"`` the capture and every replay are audited kernel by kernel: a host
    synchronisation, host data, a tensor made without a device, an own generator, or a replay
    that would not repeat the capture's kernels is one error naming the operation and the line
    that ran it."""
    _Counter.calls = 0
    cap = CapturedCall(fn, mode="simulate", warmup=1, name="probe")
    x = torch.randn(4).abs() + 0.5
    cap(x)  # the warm-up is eager, as on CUDA: host reads are allowed there
    with pytest.raises(NotCapturable, match=f"probe cannot be replayed as a CUDA graph: .*{says}"):
        for _ in range(3):
            cap(x)
    try:
        for _ in range(3):
            cap(x)
    except NotCapturable as e:
        assert "tests/test_graphs.py:" in str(e)  # the line that ran it


def test_the_audit_lets_static_steps_through():
    """What CUDA graphs replay passes the audit: in-place state, slices filled with a Python
    value, ``one_hot`` with its number of classes (the CPU's own value check is not a CUDA
    one), global RNG draws, and a whole fused-AdamW training step with its learning rate as a
    tensor."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(net.parameters(), lr=torch.tensor(1e-2), fused=True, capturable=True)
    mask = torch.zeros(2, 4, dtype=torch.bool)

    def step(v, a):
        opt.zero_grad(set_to_none=True)
        mask[:, 1] = True
        hot = torch.nn.functional.one_hot(a, 3).float()
        loss = ((net(v) - hot).square() * mask[0, :3]).mean() + torch.rand((), device=v.device) * 0
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        return loss.detach()

    cap = CapturedCall(step, mode="simulate", warmup=2)
    x, a = torch.randn(5, 4), torch.tensor([0, 1, 2, 1, 0])
    losses = [float(cap(x, a)) for _ in range(6)]
    assert cap.captures == 1 and cap.replays == 4
    assert losses[-1] < losses[0]


def test_a_failed_capture_runs_eagerly_under_auto_and_stops_under_on(monkeypatch):
    """``run.cuda_graphs: auto`` (``eager_on_failure``): a capture that fails (on CUDA, an
    operation capture refuses) is one line, and the function runs eagerly from then on with the
    eager results; without it (``on``) the failure is raised."""
    tries = []

    def refuse(self, *args):
        tries.append(self.name)
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(CapturedCall, "_capture", refuse)

    def fn(x):
        return x * 2 + 1

    strict = CapturedCall(fn, mode="simulate", warmup=2, name="probe")
    with pytest.raises(RuntimeError, match="not permitted"):
        for _ in range(3):  # two warm-ups, then the capture
            strict(torch.ones(2))
    lines = []
    cap = CapturedCall(fn, mode="simulate", warmup=2, name="probe")
    with eager_on_failure(lines.append):
        outs = [cap(torch.full((2,), float(i))) for i in range(6)]
    assert all(torch.equal(o, fn(torch.full((2,), float(i)))) for i, o in enumerate(outs))
    assert tries == ["probe", "probe"]  # one try each, never again after the fallback
    assert cap.failed.startswith("RuntimeError: operation not permitted") and cap.replays == 0
    assert lines == [
        "CUDA graphs off for probe: its capture failed (RuntimeError: operation not permitted "
        "when stream is capturing); it runs eagerly from now on (run.cuda_graphs=on would stop "
        "here)"
    ]
    # where the device does not run eager work after the failure, the capture's error stands
    monkeypatch.setattr(CapturedCall, "_recovered", lambda self: False)
    broken = CapturedCall(fn, mode="simulate", warmup=0, name="probe")
    with eager_on_failure(lines.append), pytest.raises(RuntimeError, match="not permitted"):
        broken(torch.ones(2))
    assert len(lines) == 1 and broken.failed is None


def test_a_graphed_stage_whose_capture_fails_trains_like_an_eager_one(monkeypatch):
    """The fallback of a stage's captured step: the eager step's weights, after one line."""
    eager, _ = _train("vae", False)

    def refuse(self, *args):
        raise RuntimeError("capture refused")

    monkeypatch.setattr(CapturedCall, "_capture", refuse)
    lines = []
    with eager_on_failure(lines.append):
        graphed, _ = _train("vae", "simulate")
    assert len(lines) == 2 and all("its capture failed (RuntimeError" in ln for ln in lines)
    for (k, a), b in zip(eager.state_dict().items(), graphed.state_dict().values(), strict=True):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)


def test_worlds_that_do_not_declare_capture_are_refused():
    with pytest.raises(ValueError, match="cannot be captured: it does not declare"):
        DreamEnv(BanditWorld(), random_store(), num_envs=2, horizon=2, device="cpu",
                 graphs="simulate")  # fmt: skip


def test_cuda_graphs_setting():
    cpu = torch.device("cpu")
    assert not graphs_enabled("auto", cpu) and not graphs_enabled("off", cpu)
    with pytest.raises(UserError, match="needs a CUDA device"):
        graphs_enabled("on", cpu)
    with pytest.raises(UserError, match="auto, on or off"):
        graphs_enabled("yes", cpu)


def _train(name, graphs, steps=4, lr=None, amp=False, device="cpu"):
    world = _world(name, device).train()
    torch.manual_seed(0)
    logs = []
    for stage in world.stages().values():
        training = dataclasses.replace(stage.training, batch_size=2, warmup_steps=2)
        if lr is not None:
            training = dataclasses.replace(training, lr=lr)
        trainer = StageTrainer(
            dataclasses.replace(stage, training=training), _store(), torch.device(device),
            seed=0, graphs=graphs, amp=amp,
        )  # fmt: skip
        logs.append(trainer.train(steps))
    return world, logs


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", ["diffusion", "iris", "vae"])
def test_graphed_stage_steps_train_like_eager_ones(name, amp):
    """Each stage's whole step (loss, backward, clipping, fused AdamW with the learning rate as
    a tensor) through the captured code path, audited for what CUDA capture refuses, in fp32 and
    under bf16 autocast: the same weights as eager steps, up to the rounding of the fused
    optimizer (and, in bf16, of the weights' casts)."""
    eager, eager_logs = _train(name, False, amp=amp)
    graphed, graphed_logs = _train(name, "simulate", amp=amp)
    tol = {"rtol": 2e-2, "atol": 2e-3} if amp else {"rtol": 1e-4, "atol": 1e-5}
    for (k, a), b in zip(eager.state_dict().items(), graphed.state_dict().values(), strict=True):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, **tol, msg=k)
    for a, b in zip(eager_logs, graphed_logs, strict=True):
        assert a.keys() == b.keys()
        assert a["loss"] == pytest.approx(b["loss"], rel=tol["rtol"])


@pytest.mark.parametrize("graphs", [False, "simulate"])
def test_non_finite_steps_change_nothing(graphs):
    """A step whose loss is not finite leaves every weight and the optimizer state as they were
    (on the device, with no host check, in the captured step), and the logs count it."""
    from worldmodels.training import StageTraining, Updater

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    up = Updater(net, StageTraining(lr=1e-2, warmup_steps=0), torch.device("cpu"), graphs=graphs)
    x = torch.randn(5, 3)

    def loss_fn(batch):
        loss = net(batch).square().mean()
        return loss, {"loss": loss.detach()}

    for _ in range(3):
        up.update(loss_fn, x)
    before = [p.detach().clone() for p in net.parameters()]
    state_before = {k: v.clone() for k, v in up.optimizer.state[net.weight].items()}
    logs = [up.update(loss_fn, x.clone().fill_(float("nan"))) for _ in range(3)]
    assert [entry["nonfinite"] for entry in logs] == [1.0, 1.0, 1.0]
    assert up.skipped == 3 and up.skipped_in_a_row == 3
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    for key, value in up.optimizer.state[net.weight].items():
        assert torch.equal(value, state_before[key]), key
    assert up.update(loss_fn, x)["nonfinite"] == 0.0 and up.skipped_in_a_row == 0
    assert not torch.equal(before[0], net.weight)


def _agent_updates(graphs, name="diffusion", n=3):
    world = _world(name)
    torch.manual_seed(0)
    agent = _agent().train()
    agent.config = dataclasses.replace(agent.config, num_envs=3, horizon=HORIZON)
    dream = DreamEnv(world, _store(), num_envs=3, horizon=HORIZON, device="cpu", seed=1,
                     graphs=graphs)  # fmt: skip
    logs = [agent.train_in_imagination(dream) for _ in range(n)]
    return agent, logs


@pytest.mark.parametrize("name", ["diffusion", "iris", "vae"])
def test_graphed_agent_update_trains_like_the_eager_one(name):
    """The actor-critic's whole update (the dream's reset from sampled contexts, the rollout, loss,
    backward, optimizer step) through the captured code path, audited for what CUDA capture
    refuses, gives the eager update's weights and logs."""
    eager, eager_logs = _agent_updates(None, name)
    graphed, graphed_logs = _agent_updates("simulate", name)
    for a, b in zip(eager.parameters(), graphed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(eager_logs, graphed_logs, strict=True):
        assert a["return_mean"] == pytest.approx(b["return_mean"], rel=1e-5, abs=1e-6)
    assert graphed._updater.graphs == "simulate" and graphed._updater._captured.captures == 1


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("name", ["diffusion", "iris", "vae"])
def test_cuda_graphs_give_the_eager_results_on_cuda(name):
    """On CUDA, the actor-critic's captured (replayed) updates, imagination included, against
    eager ones under the same seeds, in bf16, within bf16 tolerance."""
    device = torch.device("cuda")
    results = {}
    for graphs in (None, "cuda"):
        world = _world(name, device)
        torch.manual_seed(0)
        agent = _agent().to(device).train()
        agent.config = dataclasses.replace(agent.config, num_envs=8, horizon=HORIZON)
        dream = DreamEnv(world, _store(), num_envs=8, horizon=HORIZON, device=device, seed=1,
                         amp=True, graphs=graphs)  # fmt: skip
        logs = []
        for _ in range(4):
            torch.cuda.manual_seed(1)
            logs.append(agent.train_in_imagination(dream))
        results[graphs] = ([p.detach().float().cpu() for p in agent.parameters()], logs)
    (pa, la), (pb, lb) = results[None], results["cuda"]
    for a, b in zip(pa, pb, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)
    for a, b in zip(la, lb, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=5e-2, abs=1e-3)


@needs_cuda
@pytest.mark.parametrize("name", ["diffusion", "iris", "vae"])
def test_graphed_stage_steps_train_like_eager_ones_on_cuda(name):
    """On CUDA, every stage's step replayed from a CUDA graph (bf16) gives the eager steps'
    weights and losses, within bf16 tolerance."""
    eager, eager_logs = _train(name, False, amp=True, device="cuda")
    graphed, graphed_logs = _train(name, "cuda", amp=True, device="cuda")
    for (k, a), b in zip(eager.state_dict().items(), graphed.state_dict().values(), strict=True):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3, msg=k)
    for a, b in zip(eager_logs, graphed_logs, strict=True):
        assert a.keys() == b.keys()
        assert a["loss"] == pytest.approx(b["loss"], rel=2e-2)


@pytest.mark.parametrize("graphs", [None, "simulate"])
@pytest.mark.parametrize("name", ["diffusion", "iris", "vae"])
def test_bf16_imagination_keeps_its_dtypes(name, graphs):
    """Under bf16 autocast the state a step returns has the dtypes of the state it was given
    (else a captured step would need a second graph, and a compiled one would recompile, once
    the first step's state came back in other dtypes), and the step's outputs are what they
    always are."""
    world = _world(name)
    dream = DreamEnv(world, _store(), num_envs=3, horizon=HORIZON, device="cpu", seed=1,
                     amp=True, graphs=graphs)  # fmt: skip
    torch.manual_seed(0)
    for _ in range(2):
        dream.reset()
        start = {k: v.dtype for k, v in dream._state.items() if isinstance(v, torch.Tensor)}
        for t in range(HORIZON):
            obs, rew, term, trunc, info = dream.step(torch.tensor([t % 4, 1, 2]))
            assert obs.dtype == info["final_obs"].dtype == torch.uint8
            assert rew.dtype == torch.float32 and term.dtype == trunc.dtype == torch.bool
            now = {k: v.dtype for k, v in dream._state.items() if isinstance(v, torch.Tensor)}
            assert now == start
    if graphs:
        assert dream._step_fn.captures == 1  # one graph for every step of both trajectories


def _steps_in_an_outer_autocast(graphs, updates=3):
    """The dream stepped inside a bf16 autocast region of the caller's (an eager update's loss),
    with the world's weights changed between updates (as its stages train)."""
    world = _world("diffusion")
    dream = DreamEnv(world, _store(), num_envs=3, horizon=HORIZON, device="cpu", seed=1,
                     amp=True, graphs=graphs)  # fmt: skip
    torch.manual_seed(0)
    out = []
    for _ in range(updates):
        with torch.autocast("cpu", dtype=torch.bfloat16):  # its cache lives until the region ends
            out.append(dream.reset()[0])
            for t in range(HORIZON):
                obs, rew, term, trunc, info = dream.step(torch.tensor([t % 4, 1, 2]))
                out += [obs, rew, term, trunc, info["final_obs"]]
        with torch.no_grad():
            for p in world.parameters():
                p.mul_(1.05)
    return out, dream


def test_a_captured_step_casts_the_weights_itself_inside_a_callers_autocast():
    """Autocast keeps the bf16 copies of the weights it cast until its outermost region ends: a
    graph captured there from those copies would replay on freed, stale ones. The captured step
    gives the eager trajectories through weight changes, its replays audited, with one graph."""
    eager, _ = _steps_in_an_outer_autocast(None)
    graphed, dream = _steps_in_an_outer_autocast("simulate")
    assert _equal(eager, graphed)
    assert dream._step_fn.captures == 1 and dream._step_fn.replays >= 2 * HORIZON


def test_a_graphed_updater_takes_a_new_partial_of_its_loss_each_update():
    """``updater.update(functools.partial(loss, dream), ctx)`` written afresh in every update is
    one loss function; another function is refused."""
    import functools

    from worldmodels.training import StageTraining, Updater

    net = torch.nn.Linear(3, 1)
    up = Updater(
        net, StageTraining(lr=1e-2, warmup_steps=0), torch.device("cpu"), graphs="simulate"
    )
    scale = torch.ones(())

    def loss(s, x):
        out = (net(x) * s).square().mean()
        return out, {"loss": out.detach()}

    x = torch.randn(4, 3)
    for _ in range(4):
        up.update(functools.partial(loss, scale), x)
    assert up._captured.captures == 1
    with pytest.raises(ValueError, match="trains one loss function"):
        up.update(functools.partial(loss, scale.clone()), x)
