"""drl/sample.py per-sample seeding (sample i of a run depends on (seed, i) alone, not on the batch
it is drawn in), and the `drl sample` stage's outputs: samples.npy and samples.png."""
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from drl.cli import main
from drl.diffusion import linear_sigma2_schedule
from drl.energy import ConditionalEBM
from drl.interpolate import draw_noise, sample_with_noise
from drl.noise import from_generator, per_sample, sample_generators
from drl.sample import progressive_sample
from oracles import GaussianMixtureData, OracleNet, tiny_mlp_ebm, tiny_wrn_ebm
from rounding import reordered

# every test here compares samples drawn in batches of other sizes (other kernel sequences)
pytestmark = pytest.mark.rounding

MIXTURE = GaussianMixtureData([[1.0, 0.0], [-1.0, 0.5], [0.0, -1.0]], [0.2, 0.3, 0.25])
N, SEED = 10, 7


def _oracle_ebm():
    sched = linear_sigma2_schedule(3, 0.05, 0.3)
    return ConditionalEBM(OracleNet(MIXTURE, sched), sched, "paper", 0.3, "plain").eval()


# The draws are bitwise the same in any batch; the oracle's closed-form score too (elementwise
# arithmetic: atol 0), but CPU matmuls and convolutions round differently with the batch size (~1 ulp
# per level seen for the MLP).  Samples are O(1); a chain of T <= 6 levels of K <= 3 steps, each a
# network forward and backward through a few layers: at most ~128 reordered operations, atol 1.5e-5.
CHAIN_ATOL = reordered(1.0, 128)
MODELS = [(_oracle_ebm, (2,), 0.0), (tiny_mlp_ebm, (2,), CHAIN_ATOL), (tiny_wrn_ebm, (3, 8, 8), CHAIN_ATOL)]


def _in_batches(ebm, shape, K, batch, keep_levels=True):
    """Samples 0..N-1 of seed SEED, drawn in consecutive batches of ``batch``: levels [T + 1, N, *shape]."""
    parts = [torch.stack(progressive_sample(ebm, len(idx), shape, K, 0.9, per_sample(sample_generators(SEED, idx)),
                                            keep_levels=keep_levels))
             for idx in (range(s, min(s + batch, N)) for s in range(0, N, batch))]
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize("K", [0, 3])
@pytest.mark.parametrize("make_ebm,shape,atol", MODELS)
def test_per_sample_draws_do_not_depend_on_the_batch_size(make_ebm, shape, atol, K):
    ebm = make_ebm()
    whole = _in_batches(ebm, shape, K, N)
    assert whole.shape == (ebm.T + 1, N, *shape) and torch.isfinite(whole).all()
    for batch in (1, 3, 7):
        levels = _in_batches(ebm, shape, K, batch)
        assert torch.equal(levels[0], whole[0])  # x_T
        torch.testing.assert_close(levels, whole, rtol=0, atol=atol)
    x0 = _in_batches(ebm, shape, K, 4, keep_levels=False)  # only x_0 kept: the same x_0
    torch.testing.assert_close(x0[0], whole[-1], rtol=0, atol=atol)


@pytest.mark.parametrize("K", [0, 3])
@pytest.mark.parametrize("make_ebm,shape,atol", MODELS)
def test_sample_i_is_a_single_sample_draw_from_its_own_generator(make_ebm, shape, atol, K):
    """Sample i = progressive_sample of one sample from the generator seeded from SeedSequence([seed, i])
    (per-batch code path), = Algorithm 2 on interpolate.draw_noise's draws from it."""
    ebm = make_ebm()
    whole = _in_batches(ebm, shape, K, N)[-1]
    for i in (0, 4, N - 1):
        seed = int(np.random.SeedSequence([SEED, i]).generate_state(1, np.uint64)[0])
        assert sample_generators(SEED, [i])[0].initial_seed() == seed
        alone = progressive_sample(ebm, 1, shape, K, 0.9, from_generator(torch.Generator().manual_seed(seed)))[-1]
        torch.testing.assert_close(alone[0], whole[i], rtol=0, atol=atol)
        noise = draw_noise(ebm, 1, shape, K, from_generator(torch.Generator().manual_seed(seed)))
        torch.testing.assert_close(sample_with_noise(ebm, noise, K, 0.9)[0], whole[i], rtol=0, atol=atol)


@pytest.mark.parametrize("K", [0, 3])
def test_different_indices_and_seeds_give_different_samples(K):
    ebm = tiny_mlp_ebm()
    levels = _in_batches(ebm, (2,), K, N)
    for x in levels:  # x_T and every level: no two samples alike
        assert len(torch.unique(x, dim=0)) == N
    other = progressive_sample(ebm, N, (2,), K, 0.9, per_sample(sample_generators(SEED + 1, range(N))))[-1]
    assert not torch.isclose(other, levels[-1]).all(dim=1).any()


def test_per_sample_generators_must_match_the_batch():
    with pytest.raises(ValueError, match="3 per-sample generators for a batch of 4"):
        progressive_sample(tiny_mlp_ebm(), 4, (2,), 3, randn_like=per_sample(sample_generators(0, range(3))))


# ------------------------------------------------------------------------------------ drl sample
TOY = {"diffusion": {"schedule": "linear_sigma2", "T": 3, "sigma2_min": 0.02, "sigma2_max": 0.3,
                     "top_level": "conditional"},
       "energy": {"parameterisation": "plain", "net": {"kind": "mlp", "dim": 2, "width": 16, "depth": 1,
                                                         "temb_dim": 8, "activation": "silu", "spectral_norm": False}},
       "sampler": {"K": 5, "step_size": "paper", "b": 0.5, "noise_scale": 1.0},
       "objective": {"name": "recovery_likelihood", "loss_weights": "uniform"},
       "train": {"iterations": 4, "batch_size": 32, "lr": 0.002, "beta1": 0.9, "beta2": 0.999, "eps": 1.0e-8,
                 "warmup": 1, "ema": 0.9, "seed": 0, "checkpoint_every": 2, "log_every": 2,
                 "max_abs_energy": 1.0e+6},
       "sample": {"n": 50, "batch_size": 20, "K": 5, "noise_scale": 1.0, "seed": 1},
       "evaluate": {"quadrature": {"extent": 4.0, "grid": 16}}}
DIGITS = {**TOY,
          "diffusion": {"schedule": "released", "T": 6, "top_level": "marginal"},
          "energy": {"parameterisation": "net_over_s2",
                     "net": {"kind": "wrn", "resolution": 8, "in_channels": 1, "ch": 8, "ch_mult": [1, 2],
                             "n_blocks": 1, "temb_dim": 16, "head": "temb", "spectral_norm": True}},
          "sampler": {"K": 2, "step_size": "released", "b": 0.0141421356, "noise_scale": 1.0},
          "objective": {"name": "recovery_likelihood", "loss_weights": "released"},
          "sample": {"n": 70, "batch_size": 32, "K": 2, "noise_scale": 0.99, "seed": 1},
          "evaluate": {"partition": {"n_samples": 8, "K": 1, "seed": 2}}}
PARAMS = {"datasets": {"checkerboard": {"source": "toy", "toy": "checkerboard", "n_train": 200, "n_test": 50,
                                        "seed": 0},
                       "digits": {"source": "digits", "test_fraction": 0.1, "seed": 0}},
          "runs": {"toy": {**TOY, "group": "demo", "dataset": "checkerboard"},
                   "digits": {**DIGITS, "group": "demo", "dataset": "digits"}}}


def _write_params(root, sample_overrides=None):
    params = yaml.safe_load(yaml.safe_dump(PARAMS))
    for run, overrides in (sample_overrides or {}).items():
        params["runs"][run]["sample"].update(overrides)
    (root / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A project with the two tiny runs trained (a few iterations)."""
    root = tmp_path_factory.mktemp("sample_project")
    _write_params(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for argv in (["prepare", "--dataset", "checkerboard"], ["prepare", "--dataset", "digits"],
                     ["train", "--run", "toy", "--device", "cpu"], ["train", "--run", "digits", "--device", "cpu"]):
            assert main(argv) == 0, argv
    return root


def _sample(root, run):
    assert main(["sample", "--run", run, "--device", "cpu"]) == 0
    out = root / "results/demo/runs" / run
    return np.load(out / "samples.npy"), Image.open(out / "samples.png")


def test_sample_stage_writes_samples_and_a_grid(trained, monkeypatch):
    monkeypatch.chdir(trained)
    levels, png = _sample(trained, "toy")
    assert levels.shape == (4, 50, 2) and levels.dtype == np.float32 and png.format == "PNG"
    images, png = _sample(trained, "digits")
    assert images.shape == (70, 8, 8, 1) and images.dtype == np.uint8 and images.std() > 0
    assert png.format == "PNG" and min(png.size) > 8 * 8
    # per-sample seeding (the default): other batch sizes give the same samples, within float32
    # rounding (matrix kernels sum in another order per batch shape); the toy's levels are O(1-4)
    _write_params(trained, {"toy": {"batch_size": 7}, "digits": {"batch_size": 70}})
    np.testing.assert_allclose(_sample(trained, "toy")[0], levels, rtol=0, atol=reordered(np.abs(levels).max(), 64))
    assert np.abs(_sample(trained, "digits")[0].astype(int) - images).max() <= 1  # 1/255: float rounding at a boundary
    # per-batch seeding: the old scheme, reproducible, but other samples
    _write_params(trained, {"toy": {"seeding": "per_batch"}})
    per_batch = _sample(trained, "toy")[0]
    assert np.array_equal(_sample(trained, "toy")[0], per_batch) and not np.array_equal(per_batch, levels)
