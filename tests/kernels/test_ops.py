"""The CPU kernels of QuantLinear against the dequantize-then-matmul reference, on the SIMD and
the portable build: float paths within 1e-5 of the output's scale (fp32 sums in another order);
the int8-activation GEMV equal to a float64 computation of what it defines (activations rounded
per block of 32) and within 1.5% of the float product. Without a compiler everything takes the reference path."""

from __future__ import annotations

import pytest
import torch

from tcompress import kernels
from tcompress.kernels import build, ops
from tcompress.packed.grid import Grid, quantize_weight
from tcompress.packed.quant_linear import QuantLinear
from tcompress.runtime.fused import SharedInputLinears

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="no C compiler: the kernels are not built")


def layer(bits: int, group: int | None, in_features: int, out_features: int, bias: bool = True, **extra) -> QuantLinear:
    torch.manual_seed(bits * 1000 + in_features + out_features)
    codes, scales, zeros = quantize_weight(torch.randn(out_features, in_features), Grid(bits, group))
    return QuantLinear.from_codes(codes, scales, zeros, Grid(bits, group), torch.randn(out_features) if bias else None,
                                  torch.float32, **extra)


def supports(module: QuantLinear, x: torch.Tensor) -> bool:
    return module.kernel_fits and kernels.input_fits(x)


def qgemm(module: QuantLinear, x: torch.Tensor, activations: str) -> torch.Tensor:
    return kernels.qgemm(x, module.qweight, module.scales, module.zeros, module.grid.bits, module.group, module.bias,
                         activations)


def assert_matches_reference(module: QuantLinear, x: torch.Tensor, out: torch.Tensor, int8: bool = False) -> None:
    expected = module.reference_forward(x)
    if module.outlier_index is not None:
        expected = expected + x[..., module.outlier_index] @ module.outlier_weight.float().t()
    if int8:  # activations rounded to 8 bits
        assert ((out - expected).norm() / expected.norm()).item() < 0.015
        return
    scale = expected.abs().max().item()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5 * scale)


def int8_gemv_reference(module: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """What the int8 GEMV defines, in float64: x rounded per block of 32 (scale max|x| / 127,
    in fp32 as the kernel does), times the exact dequantized codes."""
    blocks = x.float().reshape(x.shape[0], -1, 32)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    inverse = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))
    rounded = (torch.round(blocks * inverse) * (amax / 127)).reshape(x.shape).double()
    weight = module.dequantize(torch.float64) if module.input_scale is None else None
    bias = 0 if module.bias is None else module.bias.double()
    return (rounded @ weight.t() + bias).float()


@needs_kernels
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [32, 64, None])
@pytest.mark.parametrize("tokens", [1, 3, 4, 9, 16, 17, 70])  # 17 and 70: decoded weight and BLAS
def test_kernel_equals_reference(bits, group, tokens):
    module = layer(bits, group, 192, 40)
    x = torch.randn(2, tokens, 192)
    assert supports(module, x)
    assert_matches_reference(module, x, module(x), int8=2 * tokens <= ops.INT8_GEMV_TOKENS)


@needs_kernels
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("tokens", [1, 2, 3, 7])
@pytest.mark.parametrize("outputs", [40, 41])  # 41: the last of an odd count of weight rows goes alone
def test_int8_gemv_computes_what_it_defines(bits, tokens, outputs):
    module = layer(bits, 64, 256, outputs)
    x = torch.randn(tokens, 256) * torch.linspace(0.1, 3, 256)
    x[0, :32] = 0  # an all-zero block
    out = qgemm(module, x, "int8")
    expected = int8_gemv_reference(module, x)
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-5 * expected.abs().max().item())
    assert_matches_reference(module, x, out, int8=True)


@needs_kernels
def test_gemv_and_decoded_weight_paths_directly():
    module = layer(4, 64, 576, 96, bias=False)
    x = torch.randn(5, 576)
    assert_matches_reference(module, x, qgemm(module, x, "float"))
    weight, order = kernels.decoded_weight(module.qweight, module.scales, module.zeros, module.in_features, module.grid.bits,
                                           module.group)
    torch.testing.assert_close(weight, module.dequantize()[:, order], rtol=0, atol=1e-6)


@needs_kernels
def test_input_scale_and_outliers_with_the_kernel():
    codes, scales, zeros = quantize_weight(torch.randn(24, 64), Grid(4, 32))
    module = QuantLinear.from_codes(codes, scales, zeros, Grid(4, 32), None, torch.float32,
                                    input_scale=torch.rand(64) + 0.5, outlier_index=torch.tensor([3, 40], dtype=torch.int32),
                                    outlier_weight=torch.randn(24, 2).half())
    x = torch.randn(3, 64)
    assert supports(module, x)
    assert_matches_reference(module, x, module(x), int8=True)
    many = x.repeat(14, 1)  # 42 tokens: decoded weight and BLAS
    assert_matches_reference(module, many, module(many))


def test_unsupported_layers_and_inputs_take_the_reference_path():
    x = torch.randn(2, 96)
    assert not supports(layer(3, 32, 96, 8), x)  # 3 bits
    assert not supports(layer(4, 16, 96, 8), x)  # group of 16
    assert not supports(layer(4, None, 48, 8), torch.randn(2, 48))  # width not a multiple of 32
    assert not supports(layer(4, 32, 96, 8), x.double())
    assert not supports(layer(4, 32, 96, 8), x.requires_grad_())  # training needs the autograd path


@needs_kernels
def test_portable_build_without_simd_equals_reference(tmp_path):
    path = tmp_path / "portable.so"
    flags = [flag for flag in build.FLAGS if flag != "-march=native"] + ["-mno-avx2", "-mno-fma", "-mno-f16c"]
    assert build.build(build.compiler(), flags, path)
    lib = build.load(path)
    assert lib.tc_simd() == 0
    for bits in (4, 8):
        module = layer(bits, 64, 128, 24)
        x = torch.randn(6, 128)
        for kernel in (lib.tc_qgemm_f32, lib.tc_qgemv_i8):
            out = torch.empty(6, 24)
            status = kernel(x.data_ptr(), 6, 128, module.qweight.data_ptr(), 24, module.scales.data_ptr(),
                            module.zeros.data_ptr(), 64, bits, module.bias.data_ptr(), out.data_ptr(), 1)
            assert status == 0
            if kernel is lib.tc_qgemm_f32:
                assert_matches_reference(module, x, out)
            else:
                expected = int8_gemv_reference(module, x)
                torch.testing.assert_close(out, expected, rtol=0, atol=2e-5 * expected.abs().max().item())


def test_no_compiler_or_kernels_off_falls_back(monkeypatch):
    module = layer(4, 32, 96, 8)
    x = torch.randn(2, 96)
    expected = module.reference_forward(x)
    for patch in (lambda: monkeypatch.setattr(build, "compiler", lambda: None),
                  lambda: monkeypatch.setenv("TCOMPRESS_KERNELS", "0")):
        build.library.cache_clear()
        try:
            patch()
            assert not kernels.available() and not supports(module, x)
            assert torch.equal(module(x), expected)
        finally:
            monkeypatch.undo()
            build.library.cache_clear()


def test_a_failing_compiler_is_a_warning_not_an_error(tmp_path, caplog):
    assert not build.build("false", build.FLAGS, tmp_path / "k.so")
    assert "building the CPU kernels failed" in caplog.text and not (tmp_path / "k.so").exists()


@needs_kernels
@pytest.mark.parametrize("tokens", [1, 5, 64])
@pytest.mark.parametrize("in_features", [96, 1100])  # 1100: beyond one float-exact span and not a multiple of 32
def test_int8_kernel_is_bit_identical_to_the_reference(tokens, in_features):
    from tcompress.packed.int8 import Int8Linear, quantize_rows, simulated_int8_matmul

    torch.manual_seed(tokens)
    linear = torch.nn.Linear(in_features, 48)
    module = Int8Linear.from_linear(linear)
    x = torch.randn(2, tokens, in_features) * 3
    assert module.kernel_applies(x)
    codes, token_scale = quantize_rows(x.reshape(-1, in_features))
    expected = simulated_int8_matmul(codes, module.qweight.t()).float() * token_scale * module.scales + module.bias
    assert torch.equal(module(x).reshape(-1, 48), expected)


@needs_kernels
def test_layers_sharing_an_input_in_one_call_equal_their_own_calls():
    modules = [layer(4, 64, 128, n) for n in (40, 24, 24)]
    shared = SharedInputLinears(modules)
    assert shared.fused
    x = torch.randn(2, 128)
    for out, module in zip(shared(x), modules):
        assert torch.equal(out, qgemm(module, x, "int8"))
    mixed = SharedInputLinears([modules[0], layer(8, 64, 128, 8)])  # other grids: one by one
    assert not mixed.fused and torch.equal(mixed(x)[0], modules[0](x))


@needs_kernels
def test_decode_step_ops_equal_their_torch_definitions():
    torch.manual_seed(0)
    x, weight = torch.randn(3, 96), torch.rand(96) + 0.5
    expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight
    torch.testing.assert_close(kernels.rms_norm(x, weight, 1e-6), expected, rtol=1e-5, atol=1e-6)

    heads, dim = 3, 16
    q, angles = torch.randn(2, heads * dim), torch.rand(2, dim // 2) * 6
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    view = q.view(2, heads, dim)
    rotated = torch.cat([-view[..., dim // 2:], view[..., : dim // 2]], -1)
    expected = (view * cos[:, None] + rotated * sin[:, None]).reshape(2, -1)
    torch.testing.assert_close(kernels.rope_(q.clone(), heads, cos, sin), expected, rtol=1e-5, atol=1e-6)

    batch, kv, group, capacity, length = 2, 2, 3, 10, 7
    query = torch.randn(batch, kv * group, dim)
    keys, values = torch.randn(batch, kv, capacity, dim), torch.randn(batch, kv, capacity, dim)
    expected = torch.nn.functional.scaled_dot_product_attention(
        query[:, :, None], keys[:, :, :length], values[:, :, :length], scale=0.25, enable_gqa=True)[:, :, 0]
    torch.testing.assert_close(kernels.attention_step(query, keys, values, length, 0.25), expected,
                               rtol=1e-5, atol=1e-5)

    gate, up = torch.randn(40), torch.randn(40)
    torch.testing.assert_close(kernels.silu_mul(gate, up), torch.nn.functional.silu(gate) * up, rtol=1e-5, atol=1e-6)
