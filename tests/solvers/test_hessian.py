"""The Hessians GPTQ and SparseGPT share: the Gram accumulation (BLAS's rank-k update, the
block strips) and H = 2 XᵀX / n."""

import pytest
import torch

from tcompress.solvers.hessian import HessianStats, add_gram, symmetric_from_upper


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # BLAS's rank-k update; the block strips
def test_gram_accumulation_covers_the_upper_triangle(dtype):
    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(n, 300, generator=g, dtype=dtype) for n in (17, 40)]
    total = torch.zeros(300, 300, dtype=dtype)
    for x in batches:
        add_gram(total, x.t().contiguous().t(), block=128)  # a strided input too
    x = torch.cat(batches)
    torch.testing.assert_close(symmetric_from_upper(total), x.t() @ x, rtol=1e-5, atol=1e-4)


def test_gram_blas_runs_on_torch_thread_count(monkeypatch):
    import threadpoolctl

    seen = []
    from_numpy = torch.from_numpy

    def spy(array):  # called on the product, while numpy's BLAS is limited
        seen.extend(lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas")
        return from_numpy(array)

    monkeypatch.setattr(torch, "from_numpy", spy)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        add_gram(torch.zeros(8, 8), torch.randn(4, 8))
    finally:
        torch.set_num_threads(threads)
    assert seen and set(seen) == {1}


def test_hessian_stats_are_twice_the_mean_gram_matrix():
    x = torch.randn(57, 40, generator=torch.Generator().manual_seed(4))
    stats = HessianStats(torch.zeros(40, 40))
    stats.add(x[:20])
    stats.add(x[20:])
    torch.testing.assert_close(stats.hessian(), 2 * x.t() @ x / 57, rtol=1e-5, atol=1e-5)
    assert stats.count == 57
