"""The OBS column sweep of GPTQ and SparseGPT in the compiled kernel gives the torch loop's
codes and masks."""

from __future__ import annotations

import pytest
import torch

from tcompress import kernels
from tcompress.packed.grid import Grid
from tcompress.prune.sparsegpt import sparsegpt_prune
from tcompress.quantize.gptq import gptq_quantize
from tcompress.solvers import obs

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="no C compiler: the kernels are not built")


def obs_case(n_in: int = 192, out: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(n_in + out)
    x = torch.randn(2048, n_in) @ (torch.randn(n_in, n_in) / n_in**0.5 + torch.eye(n_in)) * torch.linspace(0.1, 3, n_in)
    return torch.randn(out, n_in), 2 * x.t() @ x / len(x)


def compiled_and_torch(monkeypatch, solve):
    """`solve()` with the column sweep in the compiled kernel, then in torch."""
    ran = []
    native = obs.obs_sweep

    def spy(*args):
        ran.append(native(*args))
        return ran[-1]

    monkeypatch.setattr(obs, "obs_sweep", spy)
    compiled = solve()
    assert ran and all(ran)  # the kernel did every sweep
    monkeypatch.setattr(obs, "obs_sweep", lambda *args: False)
    return compiled, solve()


@needs_kernels
@pytest.mark.parametrize("act_order", [True, False])
@pytest.mark.parametrize("bits, group", [(4, 64), (3, 32), (2, None)])
def test_gptq_sweep_in_the_kernel_gives_the_torch_codes(monkeypatch, act_order, bits, group):
    w, h = obs_case()
    solve = lambda: gptq_quantize(w, h, Grid(bits, group), act_order=act_order)  # noqa: E731
    compiled, reference = compiled_and_torch(monkeypatch, solve)
    for fast, slow in zip(compiled, reference):
        assert torch.equal(fast, slow)


@needs_kernels
@pytest.mark.parametrize("nm, grid", [(None, None), ((2, 4), None), (None, Grid(4, 64)), ((2, 4), Grid(3, 32))])
def test_sparsegpt_sweep_in_the_kernel_gives_the_torch_result(monkeypatch, nm, grid):
    w, h = obs_case()
    fast, slow = compiled_and_torch(monkeypatch, lambda: sparsegpt_prune(w, h, 0.5, nm=nm, grid=grid))
    assert torch.equal(fast.kept, slow.kept)
    torch.testing.assert_close(fast.weight, slow.weight, rtol=0, atol=1e-5 * w.abs().max().item())
    if grid is not None:
        assert torch.equal(fast.codes, slow.codes) and torch.equal(fast.scales, slow.scales)
