"""Exports: GGUF (Q8_0, Q4_0; lossless from Q4_0-grid codes) and plain HF float, each loaded
back and compared; corrupted or truncated files give clear errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import tcompress as tc
from tcompress.cli import main
from tcompress.export.gguf import export_gguf, q4_0_blocks
from tcompress.export.plain import export_hf
from tcompress.export.verify import compare

from helpers import byte_tokenizer, needs_default, tiny_llama


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    return tiny_llama(vocab_size=257).eval(), byte_tokenizer()


def test_q4_0_blocks_match_the_gguf_reference():
    import gguf

    torch.manual_seed(0)
    weight = torch.randn(3, 64)
    codes, scales, _ = tc.packed.grid.quantize_weight(weight, tc.packed.Grid(4, 32, symmetric=True))
    ours = q4_0_blocks(codes, scales)
    dequantized = gguf.quants.dequantize(ours, gguf.GGMLQuantizationType.Q4_0)
    expected = (codes.float() - 8) * scales.repeat_interleave(32, dim=1)
    torch.testing.assert_close(torch.from_numpy(dequantized).reshape(3, 64), expected, rtol=0, atol=0)


@pytest.mark.parametrize("qtype, bits", [("q8_0", 8), ("q4_0", 4)])
def test_gguf_written_from_codes_is_lossless(pair, tmp_path, qtype, bits):
    model, tok = pair
    quantized = tc.apply(copy.deepcopy(model), tc.quantize.RTN(bits=bits, group_size=32, symmetric=True))
    result = export_gguf(quantized, tok, tmp_path / "m.gguf", qtype)  # the float table stays F32
    assert result.tensors == 2 + 2 * 9 + 1  # embeddings, 9 per block, final norm, head
    assert result.from_codes == 14 and result.requantized == 0 and result.embeddings == "f32"
    loaded, loaded_tok = tc.load(tmp_path / "m.gguf")
    layer, ours = loaded.model.layers[1], quantized.model.layers[1]
    for name in ("self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj"):
        torch.testing.assert_close(layer.get_submodule(name).weight, ours.get_submodule(name).dequantize(),
                                   rtol=0, atol=0)
    check = compare(quantized, loaded, tok)
    assert check.top1 == 1.0 and check.kl < 1e-7  # the same weights; fp32 sums in another order
    assert loaded_tok("hello world")["input_ids"] == tok("hello world")["input_ids"]


def test_gguf_requantizes_other_grids(pair, tmp_path):
    model, tok = pair
    quantized = tc.apply(copy.deepcopy(model), tc.quantize.RTN(bits=4, group_size=16))
    result = export_gguf(quantized, tok, tmp_path / "m.gguf", "q4_0")
    assert result.from_codes == 0 and result.requantized == 14
    check = compare(quantized, tc.load(tmp_path / "m.gguf")[0], tok)
    assert check.kl < 0.01


def test_gguf_embedding_table_type(pair, tmp_path):
    model, tok = pair
    rounded = export_gguf(model, tok, tmp_path / "q.gguf", "q8_0", embeddings="q8_0")
    assert rounded.requantized == 2 and rounded.embeddings == "q8_0"  # float table and head rounded: said so
    table = tc.load(tmp_path / "q.gguf")[0].get_input_embeddings().weight
    assert not torch.equal(table, model.get_input_embeddings().weight)
    eight_bit = tc.apply(copy.deepcopy(model), tc.quantize.RTN(bits=8, group_size=32, symmetric=True, head=True))
    tc.apply(eight_bit, tc.quantize.EmbeddingQuant(bits=8, group_size=32, symmetric=True))
    result = export_gguf(eight_bit, tok, tmp_path / "e.gguf", "q8_0")
    assert result.embeddings == "q8_0" and result.requantized == 0  # 8-bit table and head on Q8_0's grid, as they are
    torch.testing.assert_close(tc.load(tmp_path / "e.gguf")[0].get_input_embeddings().weight,
                               eight_bit.get_input_embeddings().dequantize(torch.float32), rtol=0, atol=0)


def test_float_gguf_holds_the_weights_as_they_are(pair, tmp_path):
    model, tok = pair
    result = export_gguf(model, tok, tmp_path / "m.gguf", "f32", embeddings="f32")
    assert result.from_codes == 0 and result.requantized == 0
    loaded, _ = tc.load(tmp_path / "m.gguf")
    torch.testing.assert_close(loaded.model.layers[0].mlp.down_proj.weight, model.model.layers[0].mlp.down_proj.weight,
                               rtol=0, atol=0)
    assert compare(model, loaded, tok).top1 == 1.0


def test_plain_hf_export_of_a_packed_model(pair, tmp_path):
    model, tok = pair
    quantized = tc.apply(copy.deepcopy(model), tc.quantize.RTN(bits=3, group_size=32))
    export_hf(quantized, tok, tmp_path / "plain")
    assert not (tmp_path / "plain" / "tcompress.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "plain")
    ids = torch.randint(0, 257, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, quantized(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_corrupted_and_truncated_gguf_give_clear_errors(pair, tmp_path):
    model, tok = pair
    export_gguf(model, tok, tmp_path / "m.gguf", "q8_0")
    data = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    (tmp_path / "bad.gguf").write_bytes(b"XXXX" + data[4:])
    for name in ("cut.gguf", "bad.gguf"):
        with pytest.raises(ValueError, match="cannot read GGUF file .*corrupted, truncated"):
            tc.load(tmp_path / name)


def test_gguf_export_refuses_other_families(tmp_path):
    from helpers import build

    with pytest.raises(ValueError, match="writes llama and gemma3 models; this is a gpt2 model"):
        export_gguf(build("gpt2"), byte_tokenizer(), tmp_path / "m.gguf")
    with pytest.raises(ValueError, match="qtype must be one of"):
        export_gguf(tiny_llama(), byte_tokenizer(), tmp_path / "m.gguf", "q5_k")
    with pytest.raises(ValueError, match="embeddings must be one of"):
        export_gguf(tiny_llama(), byte_tokenizer(), tmp_path / "m.gguf", "q8_0", embeddings="q2")


def test_export_command(pair, tmp_path, capsys):
    model, tok = pair
    tc.save(model, tmp_path / "model", tok)
    argv = ["-q", "export", str(tmp_path / "model"), "--format", "gguf-q8_0", "--out", str(tmp_path / "m.gguf")]
    assert main([*argv, "--min-agreement", "1.01"]) == 2
    assert "below 101%; nothing was written" in capsys.readouterr().err
    assert not (tmp_path / "m.gguf").exists() and not list(tmp_path.glob(".m*"))  # no refused file left at --out
    assert main([*argv, "--min-agreement", "0.95"]) == 0
    out = capsys.readouterr().out
    assert "top-1 agreement" in out and "wrote" in out
    assert main(["-q", "export", str(tmp_path / "model"), "--format", "hf", "--out", str(tmp_path / "plain")]) == 0
    assert main(["-q", "export", str(tmp_path / "model"), "--format", "compressed-tensors", "--out",
                 str(tmp_path / "ct")]) == 2
    assert "no quantized linears" in capsys.readouterr().err
    assert main(["-q", "export", str(tmp_path / "model"), "--format", "gguf-q4_0", "--out", str(tmp_path / "m")]) == 2
    assert "ending in .gguf" in capsys.readouterr().err


@needs_default
@pytest.mark.slow
def test_default_model_gguf_q8_0_agrees_on_99_percent(tmp_path):
    model, tok = tc.load("default")
    tc.apply(model, tc.quantize.RTN(bits=8, group_size=32, symmetric=True))
    assert export_gguf(model, tok, tmp_path / "m.gguf", "q8_0").from_codes == 30 * 7
    loaded, loaded_tok = tc.load(tmp_path / "m.gguf")
    assert loaded_tok("def f(x):")["input_ids"] == tok("def f(x):")["input_ids"]
    check = compare(model, loaded, tok)
    assert check.top1 >= 0.99, check


@pytest.mark.parametrize("symmetric", [True, False])
def test_compressed_tensors_export_holds_our_codes(pair, tmp_path, symmetric):
    from tcompress.export.compressed import export_compressed_tensors, load_compressed_tensors

    model, tok = pair
    quantized = tc.apply(copy.deepcopy(model), tc.quantize.RTN(bits=3, group_size=32, symmetric=symmetric))
    result = export_compressed_tensors(quantized, tok, tmp_path / "ct")
    assert (result.from_codes, result.requantized) == (14, 0)
    config = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert config["format"] == "pack-quantized" and config["quant_method"] == "compressed-tensors"
    loaded, packed = load_compressed_tensors(tmp_path / "ct")
    assert packed == symmetric
    if packed:  # held as int32-packed codes until the first forward
        assert loaded.model.layers[0].mlp.down_proj.weight_packed.dtype == torch.int32
    ids = torch.randint(0, 257, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, quantized(input_ids=ids).logits, rtol=0, atol=1e-5)


def test_compressed_tensors_zero_points_and_codes_are_ours(pair, tmp_path):
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from safetensors.torch import load_file

    from tcompress.export.compressed import export_compressed_tensors

    model, tok = pair
    quantized = tc.apply(copy.deepcopy(model), tc.quantize.RTN(bits=4, group_size=32))
    export_compressed_tensors(quantized, tok, tmp_path / "ct")
    state = load_file(tmp_path / "ct" / "model.safetensors")
    ours = quantized.model.layers[1].self_attn.k_proj
    name = "model.layers.1.self_attn.k_proj"
    codes = unpack_from_int32(state[f"{name}.weight_packed"], 4, torch.Size(ours.codes().shape))
    zeros = unpack_from_int32(state[f"{name}.weight_zero_point"], 4, torch.Size(ours.zeros.shape), packed_dim=0)
    assert torch.equal(codes.long() + 8, ours.codes().long())
    assert torch.equal(zeros.float() + 8, ours.zeros.float())
    assert torch.equal(state[f"{name}.weight_scale"], ours.scales.float())


def test_compressed_tensors_w8a8_and_requantized_layers(pair, tmp_path):
    from tcompress.export.compressed import export_compressed_tensors, load_compressed_tensors

    model, tok = pair
    calib = torch.randint(0, 257, (4, 32), generator=torch.Generator().manual_seed(0))
    smooth = tc.apply(copy.deepcopy(model), tc.quantize.SmoothQuant(), calib)
    result = export_compressed_tensors(smooth, tok, tmp_path / "w8a8")
    assert result.from_codes + result.requantized == 14
    config = json.loads((tmp_path / "w8a8" / "config.json").read_text())["quantization_config"]
    group = next(iter(config["config_groups"].values()))
    assert group["input_activations"]["strategy"] == "token" and group["input_activations"]["dynamic"]
    check = compare(smooth, load_compressed_tensors(tmp_path / "w8a8")[0], tok)
    assert check.top1 > 0.95

    weight_only = tc.apply(copy.deepcopy(model), tc.quantize.SmoothQuant(activations=False), calib)
    export_compressed_tensors(weight_only, tok, tmp_path / "w8")
    config = json.loads((tmp_path / "w8" / "config.json").read_text())["quantization_config"]
    assert next(iter(config["config_groups"].values()))["input_activations"] is None
    assert compare(weight_only, load_compressed_tensors(tmp_path / "w8")[0], tok).top1 > 0.95

    hqq = tc.apply(copy.deepcopy(model), tc.quantize.HQQ(bits=4, group_size=32))
    result = export_compressed_tensors(hqq, tok, tmp_path / "hqq")
    assert result.requantized == 14  # fractional zero points: requantized on the same grid
    assert compare(hqq, load_compressed_tensors(tmp_path / "hqq")[0], tok).kl < 0.05


def test_compressed_tensors_export_refuses_a_float_model(pair, tmp_path):
    from tcompress.export.compressed import export_compressed_tensors

    model, tok = pair
    with pytest.raises(ValueError, match="no quantized linears .* use --format hf"):
        export_compressed_tensors(model, tok, tmp_path / "ct")


@needs_default
@pytest.mark.slow
def test_default_model_compressed_tensors_w4_loads_quantized_and_agrees(tmp_path):
    from tcompress.export.compressed import export_compressed_tensors, load_compressed_tensors

    model, tok = tc.load("default")
    tc.apply(model, tc.quantize.RTN(bits=4, group_size=64, symmetric=True))
    assert export_compressed_tensors(model, tok, tmp_path / "ct").from_codes == 30 * 7
    loaded, packed = load_compressed_tensors(tmp_path / "ct")
    assert packed
    check = compare(model, loaded, tok)
    assert check.top1 >= 0.99, check


@pytest.mark.parametrize("qtype, bits", [("q8_0", 8), ("q4_0", 4)])
def test_llama_cpp_runs_the_gguf_export_as_our_model_computes(tmp_path, qtype, bits):
    pytest.importorskip("llama_cpp")  # a benchmark dependency (a source build), not a test one
    from tcompress.export.verify import compare_in_llama_cpp

    tok = merging_tokenizer()  # llama.cpp insists on a merges list; the byte tokenizer has none
    torch.manual_seed(0)
    model = tiny_llama(vocab_size=len(tok)).eval()
    quantized = tc.apply(model, tc.quantize.RTN(bits=bits, group_size=32, symmetric=True))
    export_gguf(quantized, tok, tmp_path / "m.gguf", qtype, embeddings="f32")
    check = compare_in_llama_cpp(quantized, tmp_path / "m.gguf", tok)
    assert check.top1 > 0.97 and check.kl < 1e-3  # llama.cpp rounds activations to 8 bits in its dot products


def merging_tokenizer():
    """Byte-level BPE with one merge ("t" + "h")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    vocab["th"] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[("t", "h")]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<eos>")


@pytest.mark.parametrize("target", ["gguf-q4_0", "gguf-q8_0", "compressed-tensors"])
def test_quantizing_for_a_format_exports_every_code_as_it_is(target, pair, tmp_path, capsys):
    model, tok = pair
    tc.save(model, tmp_path / "float", tok)
    quantized = tmp_path / "q"
    group = ["--group-size", "32"] if target == "compressed-tensors" else []  # the FFN is 96 wide
    assert main(["-q", "quantize", str(tmp_path / "float"), "--method", "rtn", "--for", target, *group,
                 "--out", str(quantized)]) == 0
    assert f"--for {target}: quantizing on its grid" in capsys.readouterr().out
    out = tmp_path / ("m.gguf" if target.startswith("gguf") else "m")
    assert main(["-q", "export", str(quantized), "--format", target, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "note:" not in printed and " 0 requantized" in printed.replace("0 tensors requantized", " 0 requantized")
    if target == "compressed-tensors":
        assert "loaded back quantized" in printed  # symmetric: transformers builds it packed


def test_an_export_that_requantizes_says_which_for_would_not(pair, tmp_path, capsys):
    model, tok = pair
    tc.save(model, tmp_path / "float", tok)
    assert main(["-q", "quantize", str(tmp_path / "float"), "--method", "rtn:group_size=32",
                 "--out", str(tmp_path / "q")]) == 0
    capsys.readouterr()
    assert main(["-q", "export", str(tmp_path / "q"), "--format", "gguf-q4_0", "--out", str(tmp_path / "m.gguf"),
                 "--min-agreement", "0"]) == 0
    assert "will be requantized; quantize with --for gguf-q4_0 (4 bits, groups of 32, symmetric)" in \
        capsys.readouterr().out


@pytest.mark.parametrize("flags, match", [
    (["--for", "gguf-q4_0", "--group-size", "64"], "--group-size 64 conflicts with --for gguf-q4_0, which needs 32"),
    (["--for", "gguf-q8_0", "--method", "rtn:bits=4"], "--bits 4 conflicts with --for gguf-q8_0, which needs 8"),
    (["--for", "gguf-q8_0", "--method", "smoothquant"], "--for gguf-q8_0: --method smoothquant has no --bits"),
])
def test_for_refuses_settings_the_format_cannot_hold(flags, match, pair, tmp_path, capsys):
    model, tok = pair
    tc.save(model, tmp_path / "float", tok)
    assert main(["-q", "quantize", str(tmp_path / "float"), *flags, "--out", str(tmp_path / "q")]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("qtype", ["q8_0", "f32"])
def test_gemma3_exports_to_gguf_and_loads_back(qtype, tmp_path):
    from helpers import tiny_gemma3

    torch.manual_seed(0)
    layers = ["sliding_attention"] * 5 + ["full_attention"]  # the pattern GGUF's gemma3 holds
    # GGUF holds no query scale: readers take 1/sqrt(head_dim), as Gemma 3's own head_dim of 256 gives
    model = tiny_gemma3(vocab_size=257, num_hidden_layers=6, layer_types=layers, head_dim=256,
                        query_pre_attn_scalar=256).eval()
    tok = byte_tokenizer()
    if qtype == "q8_0":
        tc.apply(model, tc.quantize.RTN(bits=8, group_size=32, symmetric=True), progress=False)
    result = export_gguf(model, tok, tmp_path / "g.gguf", qtype)
    assert result.requantized == 0 and result.from_codes == (42 if qtype == "q8_0" else 0)
    loaded, _ = tc.load(tmp_path / "g.gguf")
    assert loaded.config.model_type == "gemma3_text" and loaded.config.layer_types == model.config.layer_types
    assert compare(model, loaded, tok).top1 > 0.99


def test_gguf_refuses_gemma3_layer_types_it_cannot_hold(tmp_path):
    from helpers import tiny_gemma3

    with pytest.raises(ValueError, match="attends fully in every 6th layer"):
        export_gguf(tiny_gemma3(vocab_size=257).eval(), byte_tokenizer(), tmp_path / "g.gguf", "f32")


def test_gemma3_exports_to_compressed_tensors_and_loads_back_quantized(tmp_path):
    from tcompress.export.compressed import export_compressed_tensors, load_compressed_tensors

    from helpers import tiny_gemma3

    torch.manual_seed(0)
    model, tok = tiny_gemma3(vocab_size=257).eval(), byte_tokenizer()
    tc.apply(model, tc.quantize.RTN(bits=4, group_size=32, symmetric=True), progress=False)
    result = export_compressed_tensors(model, tok, tmp_path / "ct")
    assert result.requantized == 0 and result.from_codes == 14
    loaded, packed = load_compressed_tensors(tmp_path / "ct")
    assert packed and compare(model, loaded, tok).top1 > 0.99
