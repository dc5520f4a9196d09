"""drl/perf.py: each performance switch against the plain path (same seeds), and the Langevin update
against eq. 17 as written; drl/power_iteration.py: the spectral-norm schedules (energy.sn_power_iteration)."""
import copy
import dataclasses
import os

import jsonschema
import numpy as np
import pytest
import torch
import yaml
from torch.nn.utils import parametrize
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from drl import perf
from drl.config import SCHEMA_PATH
from drl.mcmc import langevin
from drl.train import Objective, build_model, train
from drl.noise import Replay, from_generator
from test_train import tiny_cfg, train_until_first_checkpoint
from rounding import reordered
from test_wrn import perturbed, small_ebm

TINY_WRN = {"kind": "wrn", "resolution": 8, "in_channels": 3, "ch": 8, "ch_mult": [1, 2], "n_blocks": 1,
            "temb_dim": 16, "spectral_norm": True}


def _cfg(net: str, perf_cfg: dict | None = None, sn: str | None = None, **train_overrides) -> dict:
    """test_train's tiny run with the MLP (spectral norm on: torch's parametrisation) or a tiny WRN;
    ``sn``: its energy.sn_power_iteration."""
    cfg = tiny_cfg(**train_overrides)
    if sn is not None:
        cfg["energy"]["sn_power_iteration"] = sn
    if net == "wrn":
        cfg["energy"]["net"] = dict(TINY_WRN)
    else:
        cfg["energy"]["net"]["spectral_norm"] = True
    if perf_cfg is not None:
        cfg["perf"] = perf_cfg
    return cfg


def _data(net: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    if net == "wrn":
        return rng.integers(0, 256, (256, 8, 8, 3), dtype=np.uint8)
    return rng.standard_normal((2000, 2)).astype(np.float32)


def _chain_inputs(ebm, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (3, 8, 8) if hasattr(ebm.net, "blocks") and hasattr(ebm.net, "conv_in") else (2,)
    return torch.randn(n, *shape, generator=g), torch.randint(ebm.T, (n,), generator=g)


def _buffers(module):
    return {k: v.clone() for k, v in module.named_buffers()}


def _same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _under(p: perf.Perf, fn, *args, **kwargs):
    """fn(*args, **kwargs) inside ``perf.execution(p)``."""
    with perf.execution(p):
        return fn(*args, **kwargs)


# -- the Langevin update --------------------------------------------------------------------------

# Eq. 17 as written, independently of drl/mcmc.py and drl/energy.py's eq. 16.
def _eq17(ebm, x_next, t, K, noise_scale, generator=None, noise=None):
    y = x_next.detach().clone()
    delta = ebm.per_level("delta", t, y)
    inv_var = ebm.per_level("tether_inv_var", t, y)
    ctx = ebm.time_context(t)
    for k in range(K):
        _, grad = ebm.score(y, t, ctx=ctx)
        eps = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device) if noise is None else noise[k]
        y = y + 0.5 * delta**2 * (grad + inv_var * (x_next - y)) + noise_scale * delta * eps
    return y.detach()


@pytest.mark.parametrize("net", ["mlp", "wrn"])
def test_langevin_is_eq17_bitwise(net):
    """Same y bitwise, with drawn and with supplied noise; for the WRN in training mode with spectral
    norm per call, also the same power-iteration vectors afterwards."""
    torch.manual_seed(0)
    ebm = build_model(_cfg(net)).train()
    x, t = _chain_inputs(ebm)
    for noise in (None, [torch.randn_like(x) for _ in range(4)]):
        ref = copy.deepcopy(ebm)
        y_ref = _eq17(ref, x, t, 4, 0.7, torch.Generator().manual_seed(1), noise)
        y = langevin(ebm, x, t, 4, 0.7, from_generator(torch.Generator().manual_seed(1)) if noise is None
                     else Replay(noise))
        assert torch.equal(y, y_ref)
        _same(_buffers(ebm), _buffers(ref))


# -- energy.sn_power_iteration --------------------------------------------------------------------

def _sn_layers(ebm):
    """(W as a matrix, its SpectralNorm) of every spectrally normalised layer."""
    return [(m.parametrizations.weight.original.detach().flatten(1), m.parametrizations.weight[0])
            for m in ebm.modules() if parametrize.is_parametrized(m)]


def test_per_iteration_is_one_power_iteration_then_fixed_weights():
    """One training iteration under per_iteration equals, bitwise (loss, parameter gradients, u and
    v), one power iteration of every layer followed by the same iteration with u, v frozen; per_call
    advances u, v further (K + 1 times for the convolutions)."""
    torch.manual_seed(0)
    base = perturbed(small_ebm()).train()
    ocfg, scfg = {"name": "recovery_likelihood", "loss_weights": "released"}, {"K": 3, "noise_scale": 1.0}
    g = torch.Generator().manual_seed(2)
    x_next, t = torch.randn(6, 3, 8, 8, generator=g), torch.randint(base.T, (6,), generator=g)
    y_pos = torch.randn(6, 3, 8, 8, generator=g)

    def iteration(ebm):
        loss, _ = Objective(ebm, ocfg, scfg)(y_pos, x_next, t, torch.Generator().manual_seed(3))
        loss.mean().backward()
        return loss.detach(), {n: p.grad for n, p in ebm.named_parameters() if p.grad is not None}

    fast = copy.deepcopy(base)
    fast.sn_power_iteration = "per_iteration"
    loss, grads = iteration(fast)

    ref = copy.deepcopy(base)
    for w, sn in _sn_layers(ref):
        sn._power_iterations(w, 1)
        sn.eval()
    ref_loss, ref_grads = iteration(ref)
    assert torch.equal(loss, ref_loss)
    _same(grads, ref_grads)
    _same(_buffers(fast), _buffers(ref))

    slow = copy.deepcopy(base)
    iteration(slow)
    assert all(not torch.equal(a._u, b._u) for (_, a), (_, b) in zip(_sn_layers(slow), _sn_layers(fast)))


@pytest.mark.parametrize("net, perf_cfg, sn", [("mlp", None, "per_iteration"), ("wrn", None, "per_iteration"),
                                               ("wrn", {"channels_last": True}, None)])
def test_perf_runs_resume_bitwise(tmp_path, monkeypatch, net, perf_cfg, sn):
    """As tests/test_train.py's resume test, under the settings that keep state (u, v) or layouts."""
    cfg, data = _cfg(net, perf_cfg, sn), _data(net)
    full = torch.load(train(cfg, data, tmp_path / "full", progress=False), weights_only=True)
    train_until_first_checkpoint(cfg, data, tmp_path / "resumed", monkeypatch)
    resumed = torch.load(train(cfg, data, tmp_path / "resumed", progress=False), weights_only=True)
    _same(full["model"], resumed["model"])
    _same(full["ema"], resumed["ema"])
    assert [r["loss"] for r in full["log"]] == [r["loss"] for r in resumed["log"]]


def test_resume_refuses_a_changed_function_and_names_it(tmp_path, monkeypatch):
    """A switch that computes the same function may change between sessions; the spectral-norm
    schedule changes the function trained, so it may not (nor may any model or training setting)."""
    data = _data("mlp")
    train_until_first_checkpoint(_cfg("mlp", sn="per_iteration"), data, tmp_path, monkeypatch)
    with pytest.raises(RuntimeError, match=r"\(train\.lr changed\)"):
        train(_cfg("mlp", sn="per_iteration", lr=2e-3), data, tmp_path, progress=False)
    with pytest.raises(RuntimeError, match=r"\(energy\.sn_power_iteration changed\)"):
        train(_cfg("mlp", sn="per_call"), data, tmp_path, progress=False)
    ckpt = torch.load(train(_cfg("mlp", {"channels_last": True}, sn="per_iteration"), data,
                            tmp_path, progress=False), weights_only=True)
    assert ckpt["iteration"] == 20 and ckpt["cfg"]["perf"]["channels_last"]


# -- channels_last --------------------------------------------------------------------------------

@pytest.mark.rounding
def test_channels_last_computes_the_same_chain_and_training(tmp_path):
    """Convolutions in channels-last order sum in another order (other kernels): not bitwise.

    * A K = 10 chain of O(1) values, each step a forward and backward through 6 convolutions: about
      100 reordered reductions, so atol 100 eps = 1.2e-5 (measured: 2.4e-7 on AVX2).
    * 5 training iterations: Adam passes each coordinate's relative gradient error into its step,
      so a coordinate whose gradient nearly cancels can move by a sizeable part of its own step
      (one weight of 144 differed by 1.3e-5 on an AVX-512 CPU).  The comparison is therefore of the
      whole update: |w_cl - w| / |w - w_init| over all parameters <= 1e-4 (measured: 1.9e-7 on AVX2
      and on the no-AVX path); a wrong convolution moves it to O(1)."""
    torch.manual_seed(0)
    plain = perturbed(small_ebm())
    fast = copy.deepcopy(plain)
    assert perf.configure(fast, {"channels_last": True}, "cpu") == perf.Perf(channels_last=True)
    conv = fast.net.blocks[0].conv1.parametrizations.weight.original
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x, t = _chain_inputs(plain)
    y = langevin(plain, x, t, 10, randn_like=from_generator(torch.Generator().manual_seed(1)))
    y_fast = langevin(fast, x, t, 10, randn_like=from_generator(torch.Generator().manual_seed(1)))
    torch.testing.assert_close(y_fast, y, rtol=0, atol=reordered(1.0, 100))
    cfg = _cfg("wrn", iterations=5)
    a = torch.load(train(cfg, _data("wrn"), tmp_path / "plain", progress=False), weights_only=True)
    b = torch.load(train({**cfg, "perf": {"channels_last": True}}, _data("wrn"), tmp_path / "cl", progress=False),
                   weights_only=True)
    torch.manual_seed(cfg["train"]["seed"])   # the initial weights, as train builds them
    init = build_model({k: cfg[k] for k in ("diffusion", "energy", "sampler")}).state_dict()
    params = [k for k, _ in build_model({k: cfg[k] for k in ("diffusion", "energy", "sampler")}).named_parameters()]
    diff = torch.cat([(b["model"][k] - a["model"][k]).flatten() for k in params]).double().norm()
    update = torch.cat([(a["model"][k] - init[k]).flatten() for k in params]).double().norm()
    assert update > 0 and diff / update <= 1e-4, (diff / update).item()


# -- compile --------------------------------------------------------------------------------------

def _fresh_compile():
    """Reset dynamo (every model is a recompile of drl.perf's one compiled function, and past the
    recompile limit it silently runs eager); returns a function giving the graphs compiled since."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    start = counters["stats"]["unique_graphs"]
    return lambda: counters["stats"]["unique_graphs"] - start


@pytest.mark.rounding
@pytest.mark.parametrize("net", ["mlp", "wrn"])
def test_compiled_chain_matches_the_eager_chain(net):
    """The compiled score (parameters detached, spectral norms frozen) in a K = 10 chain, in training
    mode under per_iteration and in eval mode: y agrees with the eager chain to 1e-5 (measured: 0 for
    the MLP, 2.4e-7 for the WRN); compile with per_call spectral norm in training mode is refused."""
    if os.environ.get("ATEN_CPU_CAPABILITY") == "default":   # make test-isa's generic path on an AVX2 CPU
        pytest.skip("inductor's C++ for the forced generic path does not compile here (it emits at::vec code with "
                    "no vector ISA; also at the previous commit with a fresh cache); checked on the machine's own path")
    graphs = _fresh_compile()
    torch.manual_seed(0)
    ebm = build_model(_cfg(net))
    x, t = _chain_inputs(ebm)
    for training in (True, False):
        ebm.train(training)
        eager, comp = copy.deepcopy(ebm), copy.deepcopy(ebm)
        eager.sn_power_iteration = comp.sn_power_iteration = "per_iteration"
        y = langevin(eager, x, t, 10, randn_like=from_generator(torch.Generator().manual_seed(1)))
        y_comp = _under(perf.Perf(compile=True), langevin, comp, x, t, 10,
                        randn_like=from_generator(torch.Generator().manual_seed(1)))
        torch.testing.assert_close(y_comp, y, rtol=0, atol=1e-5)
        _same(_buffers(comp), _buffers(eager))   # one power iteration each (training), none in eval
    assert graphs() >= 1   # compiled indeed (past dynamo's recompile limit it would run eager silently)
    ebm.train()   # per_call
    with pytest.raises(ValueError, match="per_iteration"):
        _under(perf.Perf(compile=True), langevin, ebm, x, t, 2)


_NO_CXX = """
import copy, sys, warnings
import torch, torch._inductor.config as inductor
inductor.cpp.cxx = ("/nonexistent/g++",)
inductor.fx_graph_cache = False   # a cached graph would need no compiler
sys.path.insert(0, "tests")
from test_perf import _cfg, _chain_inputs, _under
from drl import perf
from drl.mcmc import langevin
from drl.noise import from_generator
from drl.train import build_model
torch.manual_seed(0)
ebm = build_model(_cfg("mlp", sn="per_iteration"))
x, t = _chain_inputs(ebm)
y = langevin(copy.deepcopy(ebm), x, t, 5, randn_like=from_generator(torch.Generator().manual_seed(1)))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    y_comp = _under(perf.Perf(compile=True), langevin, ebm, x, t, 5,
                    randn_like=from_generator(torch.Generator().manual_seed(1)))
print("WARNINGS", [str(w.message) for w in caught if "perf.compile" in str(w.message)])
print("EQUAL", torch.equal(y_comp, y))
"""


def test_compile_without_a_cpp_compiler_runs_eager_with_a_warning():
    """Where inductor finds no working C++ compiler, ``compile`` chains run the eager score (bitwise the
    eager chain: the same computation) after one warning that names the cause and the fix.  In a
    subprocess: a compiler that does not exist leaves inductor's caches unusable for the rest of a process."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _NO_CXX], capture_output=True, text=True, timeout=600,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-3000:]
    warned = [line for line in out.stdout.splitlines() if line.startswith("WARNINGS")]
    assert warned and "No working C++ compiler" in warned[0] and "chains run eager" in warned[0], out.stdout
    assert warned[0].count("does not work here") == 1, out.stdout   # once per process
    assert "EQUAL True" in out.stdout, out.stdout


@pytest.mark.parametrize("net", ["mlp", "wrn"])
def test_compiled_hmc_and_ais_match_eager(net):
    """HMC (eq. 16 with its tether) and AIS transitions through the compiled energy and score, eval
    mode: the same acceptances and states as eager to 1e-5 (the Metropolis test sees f to rounding),
    and the compiled chain's f equals the eager energy."""
    from drl.evaluate.ais import ais_levels
    from drl.hmc import hmc

    graphs = _fresh_compile()
    torch.manual_seed(0)
    ebm = build_model(_cfg(net)).eval()
    x, t = _chain_inputs(ebm)
    eager, comp = copy.deepcopy(ebm), copy.deepcopy(ebm)
    plain, fast = perf.Perf(), perf.Perf(compile=True)
    y0 = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    runs = [_under(p, hmc, m, y0, x, t, 0.05, 3, generator=torch.Generator().manual_seed(1))
            for m, p in ((eager, plain), (comp, fast))]
    torch.testing.assert_close(runs[1][1], runs[0][1], rtol=0, atol=1e-5)   # acceptance probabilities
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=0, atol=1e-5)
    assert 0 < runs[0][1].mean() < 1   # some proposals accepted, some not: the test sees the energies
    ais = [_under(p, lambda m: list(ais_levels(m, 8, tuple(x.shape[1:]), 2, [0.05] * ebm.T,
                                                generator=torch.Generator().manual_seed(3))), m)
           for m, p in ((eager, plain), (comp, fast))]
    for (xe, re), (xc, rc) in zip(*ais):
        torch.testing.assert_close(xc, xe, rtol=0, atol=1e-5)
        torch.testing.assert_close(rc, re, rtol=0, atol=1e-5, equal_nan=True)
    with perf.execution(fast), perf.chain_score(comp) as score:
        f, _ = score(x, t, comp.time_context(t))
    torch.testing.assert_close(f, eager(x, t).detach(), rtol=1e-5, atol=1e-5)
    assert graphs() >= 2   # the HMC chains' shape and the AIS chains' shape


# -- cuda_graphs ----------------------------------------------------------------------------------

class _Recorder(TorchDispatchMode):
    """Records every aten op a step runs; as CUDA graph capture, refuses host synchronisation and
    random draws, and remembers what each op overwrites so that capture can undo it."""

    def __init__(self):
        super().__init__()
        self.tape, self.overwritten = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            raise RuntimeError("host synchronisation in a captured step")
        if torch.Tag.nondeterministic_seeded in func.tags:
            raise RuntimeError(f"random draw {func} in a captured step")
        for i, arg in enumerate(func._schema.arguments):
            if arg.alias_info is not None and arg.alias_info.is_write:
                value = args[i] if i < len(args) else kwargs.get(arg.name)
                if isinstance(value, torch.Tensor):
                    self.overwritten.append((value, value.clone()))
        out = func(*args, **kwargs)
        self.tape.append((func, args, kwargs, out))
        return out


class TapeGraph:
    """A CPU stand-in for ``perf.CudaGraph`` with a CUDA graph's semantics: ``capture`` runs nothing
    (what the step overwrote is restored) and keeps the op sequence with the tensors it used;
    ``replay`` reruns those ops on those tensors, writing each result where the captured one lived.
    Python in the step runs once, at capture, as under CUDA."""

    def warmup(self, step):
        step()

    def capture(self, step):
        rec = _Recorder()
        with rec:
            step()
        for tensor, old in reversed(rec.overwritten):
            if tensor.shape == old.shape:   # else an op's out= buffer, resized: it held nothing
                tensor.copy_(old)
        self.tape = rec.tape

    @torch.no_grad()
    def replay(self):
        for func, args, kwargs, out in self.tape:
            new = func(*args, **kwargs)
            for o, n in zip(tree_flatten(out)[0], tree_flatten(new)[0]):
                if isinstance(o, torch.Tensor) and o.untyped_storage().data_ptr() != n.untyped_storage().data_ptr():
                    o.copy_(n.reshape(o.shape))   # o may have been reshaped in place since (squeeze_)


@pytest.mark.parametrize("net, training", [("mlp", False), ("wrn", False), ("wrn", True)])
def test_graphed_chain_replays_the_eager_chain_bitwise(monkeypatch, net, training):
    """The chain with its score on a graph (``GraphedScore``: warm-up, one capture, replays) gives the
    eager chain's y bitwise, with drawn and replayed noise; for the WRN in training mode under per_call
    the replayed power iterations leave the same u, v."""
    monkeypatch.setattr(perf, "CudaGraph", TapeGraph)
    torch.manual_seed(0)
    ebm = build_model(_cfg(net)).train(training)
    x, t = _chain_inputs(ebm)
    for noise in (None, [torch.randn_like(x) for _ in range(5)]):
        eager, graphed = copy.deepcopy(ebm), copy.deepcopy(ebm)
        source = lambda: from_generator(torch.Generator().manual_seed(1)) if noise is None else Replay(noise)
        y = langevin(eager, x, t, 5, randn_like=source())
        y_graphed = _under(perf.Perf(cuda_graphs=True), langevin, graphed, x, t, 5, randn_like=source())
        assert torch.equal(y_graphed, y)
        _same(_buffers(graphed), _buffers(eager))


def test_tape_graph_has_cuda_graph_semantics():
    """The stand-in itself: capture runs nothing, replay reruns the captured ops on the captured
    tensors (a Python value is frozen at capture), host synchronisation and random draws fail."""
    y, scale = torch.zeros(3), [1.0]
    graph = TapeGraph()
    graph.capture(lambda: y.add_(scale[0]))
    assert torch.equal(y, torch.zeros(3))
    scale[0] = 5.0
    graph.replay()
    graph.replay()
    assert torch.equal(y, torch.full((3,), 2.0))
    with pytest.raises(RuntimeError, match="host synchronisation"):
        TapeGraph().capture(lambda: y.sum().item())
    with pytest.raises(RuntimeError, match="random draw"):
        TapeGraph().capture(lambda: y.add_(torch.randn(3)))


def test_cuda_graphs_off_cuda_warn_and_are_ignored():
    with pytest.warns(UserWarning, match="ignored on cpu"):
        p = perf.configure(build_model(_cfg("mlp")), {"cuda_graphs": True}, "cpu")
    assert p == perf.Perf()


def test_perf_holds_no_function_changing_setting():
    """The spectral-norm schedule is the model's (energy.sn_power_iteration): under perf it is refused,
    naming where it went (validation: tests/test_config.py); the model holds no perf or precision."""
    with pytest.raises(ValueError, match="energy.sn_power_iteration"):
        perf.configure(build_model(_cfg("mlp")), {"sn_power_iteration": "per_iteration"}, "cpu")
    assert not any(hasattr(build_model(_cfg(net)), a) for net in ("mlp", "wrn") for a in ("perf", "precision"))


# -- bf16 (train.precision) -----------------------------------------------------------------------

def test_bf16_langevin_update_is_fp32_arithmetic():
    """Under bf16 autocast only the network runs in bf16: a Langevin step equals eq. 17 evaluated in
    float32 on the (float32) score the bf16 network gives, bitwise, and differs from the same step
    evaluated in bf16 (so the check can fail)."""
    torch.manual_seed(0)
    ebm = perturbed(small_ebm())
    x, t = _chain_inputs(ebm)
    with perf.execution(precision="bf16"):
        y = langevin(ebm, x, t, 1, randn_like=from_generator(torch.Generator().manual_seed(1)))
        f, grad = ebm.score(x, t, ctx=ebm.time_context(t))
    assert y.dtype == f.dtype == grad.dtype == torch.float32
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    delta, inv_var = ebm.per_level("delta", t, x), ebm.per_level("tether_inv_var", t, x)

    def step(dtype):
        x_, g_, e_, d_, v_ = (a.to(dtype) for a in (x, grad, eps, delta, inv_var))
        return (x_ + 0.5 * d_**2 * (g_ + v_ * (x_ - x_)) + d_ * e_).float()

    assert torch.equal(y, step(torch.float32))
    assert not torch.equal(y, step(torch.bfloat16))


# -- schema ---------------------------------------------------------------------------------------

def test_schema_perf_section_is_strict():
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema["$defs"]["run"]["properties"]["perf"])
    ok = {"channels_last": True, "compile": False, "cuda_graphs": True}
    assert list(validator.iter_errors(ok)) == []
    assert list(validator.iter_errors({"sn_power_iteration": "per_iteration"}))   # the model's, not perf's
    assert list(validator.iter_errors({"fast": True}))
    keys = set(schema["$defs"]["run"]["properties"]["perf"]["properties"])
    assert {f.name for f in dataclasses.fields(perf.Perf)} == keys
