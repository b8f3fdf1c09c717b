import json
import re

import pytest
import torch

import tcompress as tc
from tcompress.cli import main

from helpers import build


@pytest.mark.parametrize("command", ["info", "eval", "bench", "quantize", "prune", "distill", "qat"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    assert exit.value.code == 0
    assert "MODEL is a named offline model" in capsys.readouterr().out


def test_info(tiny_folder, capsys):
    assert main(["-q", "info", tiny_folder]) == 0
    out = capsys.readouterr().out
    assert "LlamaForCausalLM (causal-lm; family: llama)" in out
    assert "heads 4, KV heads 2, head dim 16" in out and "| linear" in out


def test_eval_perplexity(tiny_folder, tmp_path, capsys):
    result = tmp_path / "r.json"
    assert main(["-q", "eval", tiny_folder, "--data", "pydoc", "--seqlen", "64", "--windows", "2",
                 "--json", str(result)]) == 0
    assert "perplexity" in capsys.readouterr().out
    assert json.loads(result.read_text())["perplexity"] > 1


def test_bench_writes_json_and_plot(tiny_folder, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["-q", "bench", tiny_folder, "--batch-sizes", "1,2", "--seqlen", "8", "--new-tokens", "2",
                 "--repeats", "1", "--out", str(out)]) == 0
    assert (out / "bench.png").is_file() and len(json.loads((out / "bench.json").read_text())["rows"]) == 4
    assert "decode" in capsys.readouterr().out


def test_errors_are_one_clear_line_and_exit_code_2(tiny_folder, capsys):
    assert main(["-q", "info", "no-such-model"]) == 2
    assert "unknown model spec 'no-such-model'" in capsys.readouterr().err
    assert main(["-q", "eval", tiny_folder, "--data", "nosuchcorpus", "--seqlen", "64"]) == 2
    assert "unknown data set 'nosuchcorpus'" in capsys.readouterr().err
    assert main(["-q", "eval", tiny_folder, "--data", "pydoc", "--seqlen", "4096"]) == 2
    assert "exceeds the model's context" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["bench", "x", "--batch-sizes", "1,a"], ["eval", "x", "--seqlen", "0"]])
def test_bad_numbers_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2 and "expected" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_quantize_saves_a_packed_model_and_reports_sizes(method, tiny_folder, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["-q", "quantize", tiny_folder, "--method", method, "--bits", "4", "--group-size", "32",
                 "--calib-samples", "4", "--calib-seqlen", "32", "--eval", "pydoc", "--eval-windows", "1",
                 "--eval-seqlen", "64", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{method} W4 g32" in printed and "perplexity" in printed
    model, _ = tc.load(out)
    assert isinstance(model.model.layers[0].mlp.down_proj, tc.packed.QuantLinear)
    assert model.tc_record.applied[0]["method"] == method


def test_quantize_calibrates_in_chunks_of_the_tokens_asked_for(tiny_folder, tmp_path, monkeypatch, capsys):
    from tcompress.cli import compress

    seen = []
    monkeypatch.setattr(compress, "apply", lambda model, method, calib, chunk_tokens: seen.append(chunk_tokens))
    assert main(["-q", "quantize", tiny_folder, "--calib-samples", "2", "--calib-seqlen", "32", "--calib-chunk", "64",
                 "--out", str(tmp_path / "q")]) == 0
    assert seen == [64]
    with pytest.raises(SystemExit) as exit:
        main(["-q", "quantize", tiny_folder, "--calib-chunk", "0", "--out", str(tmp_path / "r")])
    assert exit.value.code == 2 and "expected a positive integer" in capsys.readouterr().err


def test_quantize_refuses_bad_settings_before_loading(tiny_folder, tmp_path, capsys):
    assert main(["-q", "quantize", tiny_folder, "--bits", "5", "--out", str(tmp_path / "q")]) == 2
    assert "bits must be one of" in capsys.readouterr().err
    assert main(["-q", "quantize", tiny_folder, "--group-size", "48", "--method", "rtn",
                 "--out", str(tmp_path / "q")]) == 2
    assert "does not divide" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_quantize_help_names_the_method_options(capsys):
    with pytest.raises(SystemExit):
        main(["quantize", "--help"])
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("smoothquant", "outliers", "--alpha", "--weight-only", "--threshold"))


@pytest.mark.parametrize("flags, label, module", [
    (["--method", "smoothquant", "--alpha", "0.6"], "smoothquant W8A8 alpha=0.6", "Int8Linear"),
    (["--method", "smoothquant", "--weight-only"], "smoothquant W8 alpha=0.5", "Int8Linear"),
    (["--method", "outliers", "--threshold", "2.5"], "outliers W8 per-channel threshold=2.5", "QuantLinear"),
])
def test_quantize_with_smoothquant_and_outliers(tiny_folder, tmp_path, capsys, flags, label, module):
    out = tmp_path / "q"
    assert main(["-q", "quantize", tiny_folder, *flags, "--calib-samples", "2", "--calib-seqlen", "32",
                 "--out", str(out)]) == 0
    assert label in capsys.readouterr().out
    model, _ = tc.load(out)
    assert type(model.model.layers[0].mlp.down_proj).__name__ == module
    applied = model.tc_record.applied[0]
    assert applied["method"] == flags[1] and applied.get("activations", True) == ("--weight-only" not in flags)


@pytest.mark.parametrize("flags, match", [
    (["--method", "smoothquant", "--bits", "4"], "--bits does not apply to --method smoothquant"),
    (["--method", "gptq", "--threshold", "3"], "--threshold does not apply to --method gptq"),
    (["--method", "smoothquant", "--alpha", "1.5"], r"alpha must be a number in \[0, 1\]"),
    (["--method", "outliers", "--threshold", "0"], "threshold must be a positive number"),
])
def test_quantize_refuses_options_of_other_methods_and_bad_values(tiny_folder, tmp_path, capsys, flags, match):
    assert main(["-q", "quantize", tiny_folder, *flags, "--out", str(tmp_path / "q")]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("flags, label, module", [
    (["--method", "wanda", "--sparsity", "0.6"], "wanda 60%", "SparseLinear"),
    (["--method", "sparsegpt", "--pattern", "2:4"], "sparsegpt 2:4", "SparseLinear"),
    (["--method", "magnitude"], "magnitude 50%", "SparseLinear"),
    (["--pattern", "2:4", "--bits", "4", "--group-size", "32"], "sparsegpt 2:4 W4 g32", "QuantLinear"),
])
def test_prune_saves_a_sparse_model(tiny_folder, tmp_path, capsys, flags, label, module):
    out = tmp_path / "p"
    assert main(["-q", "prune", tiny_folder, *flags, "--calib-samples", "2", "--calib-seqlen", "32",
                 "--eval", "pydoc", "--eval-windows", "1", "--eval-seqlen", "64", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert label in printed and "perplexity" in printed
    model, _ = tc.load(out)
    assert type(model.model.layers[0].mlp.down_proj).__name__ == module


@pytest.mark.parametrize("flags, match", [
    (["--sparsity", "1.2"], r"sparsity must be a fraction in \[0, 1\)"),
    (["--pattern", "4:2"], "need 0 < N < M"),
    (["--method", "wanda", "--bits", "4"], "--bits does not apply to --method wanda"),
])
def test_prune_refuses_bad_settings_before_loading(tiny_folder, tmp_path, capsys, flags, match):
    assert main(["-q", "prune", tiny_folder, *flags, "--out", str(tmp_path / "p")]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "p").exists()


def test_prune_structured_gives_a_smaller_plain_model(tiny_folder, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["-q", "prune", tiny_folder, "--structured", "--target-params", "0.8", "--channels", "--blocks",
                 "--calib-samples", "2", "--calib-seqlen", "32", "--out", str(out)]) == 0
    assert "structured 80% params, channels+blocks" in capsys.readouterr().out
    model, _ = tc.load(out)
    assert model.config.num_hidden_layers < 2 or model.config.intermediate_size < 96


def test_prune_structured_refuses_unstructured_options(tiny_folder, tmp_path, capsys):
    assert main(["-q", "prune", tiny_folder, "--structured", "--target-params", "0.8", "--sparsity", "0.5",
                 "--out", str(tmp_path / "s")]) == 2
    assert "--sparsity does not apply to --method structured" in capsys.readouterr().err


def test_distill_trains_a_student_cut_from_the_teacher(tiny_folder, tmp_path, capsys):
    out = tmp_path / "student"
    assert main(["-q", "distill", "--teacher", tiny_folder, "--student", "blocks=1,ffn=48", "--loss", "kl:1,hidden:0.5",
                 "--data", "pydoc", "--seqlen", "32", "--samples", "16", "--steps", "3", "--batch-size", "4",
                 "--eval", "pydoc", "--eval-seqlen", "64", "--eval-windows", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "perplexity" in text and "trained 3 steps on 384 tokens" in text
    model, _ = tc.load(out)
    assert model.config.num_hidden_layers == 1 and model.config.intermediate_size == 48
    log = json.loads((tmp_path / "student.training" / "log.json").read_text())
    assert [row["step"] for row in log["steps"]] == [1, 2, 3] and {"kl", "hidden"} <= set(log["steps"][0])
    assert (tmp_path / "student.training" / "loss.png").is_file()


def test_distill_on_text_the_teacher_writes(tiny_folder, tmp_path, capsys):
    out = tmp_path / "student"
    assert main(["-q", "distill", "--teacher", tiny_folder, "--student", tiny_folder, "--loss", "lm",
                 "--data", "teacher", "--generate", "4", "--max-new-tokens", "40", "--seqlen", "16",
                 "--steps", "2", "--batch-size", "2", "--out", str(out)]) == 0
    assert tc.load(out)[0].config.num_hidden_layers == 2


def test_qat_saves_a_packed_model(tiny_folder, tmp_path, capsys):
    out = tmp_path / "qat"
    assert main(["-q", "qat", tiny_folder, "--bits", "3", "--group-size", "32", "--data", "pydoc", "--seqlen", "32",
                 "--samples", "8", "--steps", "2", "--batch-size", "2", "--out", str(out)]) == 0
    model, _ = tc.load(out)
    assert isinstance(model.model.layers[0].mlp.down_proj, tc.packed.QuantLinear)
    assert model.model.layers[0].mlp.down_proj.grid.bits == 3


@pytest.mark.parametrize("argv, match", [
    (["distill", "--teacher", "T", "--student", "layers=2", "--steps", "1"], "expected a model, or sizes"),
    (["distill", "--teacher", "T", "--student", "blocks=1", "--loss", "kd", "--steps", "1"], "unknown loss 'kd'"),
    (["qat", "T", "--bits", "5", "--steps", "1"], "bits must be one of"),
])
def test_training_commands_refuse_bad_settings(tiny_folder, tmp_path, capsys, argv, match):
    argv = [tiny_folder if a == "T" else a for a in argv]
    assert main(["-q", *argv, "--out", str(tmp_path / "x")]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_generate_continues_the_prompt_through_the_lean_decoder(tiny_folder, tokenizer, capsys):
    import torch

    from tcompress.runtime import Decoder

    model, _ = tc.load(tiny_folder)
    prompt = tokenizer("def f(x):")["input_ids"]
    tokens = Decoder(model, max_length=len(prompt) + 6).generate(torch.tensor([prompt]), 6)[0, len(prompt):].tolist()
    eos = model.config.eos_token_id
    tokens = tokens[:tokens.index(eos)] if eos in tokens else tokens
    assert main(["-q", "generate", tiny_folder, "--prompt", "def f(x):", "--max-new-tokens", "6", "--stats"]) == 0
    captured = capsys.readouterr()
    assert captured.out == tokenizer.decode(tokens) + "\n"
    assert re.search(r"decode steps at [\d.]+ tokens/s; peak RSS \d+ MB", captured.err)


def test_generate_needs_a_folder_with_a_tokenizer(tmp_path, capsys):
    tc.save(build("llama"), tmp_path / "m")
    assert main(["-q", "generate", str(tmp_path / "m"), "--prompt", "x"]) == 2
    assert "expected a saved model folder with tokenizer.json" in capsys.readouterr().err


def test_method_fields_can_follow_the_method_name(tiny_folder, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["-q", "quantize", tiny_folder, "--method", "rtn:bits=3,group_size=32", "--out", str(out)]) == 0
    assert "rtn W3 g32" in capsys.readouterr().out
    assert tc.load(out)[0].tc_record.applied[0]["bits"] == 3


@pytest.mark.parametrize("argv, match", [
    (["quantize", "--method", "wanda"], "--method wanda is a prune method; expected one of awq,"),
    (["quantize", "--method", "nosuch"], "unknown method 'nosuch'"),
    (["quantize", "--method", "gptq:bits=x"], "bits: expected an integer"),
])
def test_methods_of_another_command_or_none_are_refused(tiny_folder, tmp_path, capsys, argv, match):
    assert main(["-q", argv[0], tiny_folder, *argv[1:], "--out", str(tmp_path / "q")]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "q").exists()


def test_generate_names_what_it_needs(capsys):
    assert main(["-q", "generate", "no-such-model", "--prompt", "x"]) == 2
    assert "expected a named model" in capsys.readouterr().err


def test_max_memory_below_the_prediction_refuses_before_work(tiny_folder, tmp_path, capsys):
    assert main(["-q", "quantize", tiny_folder, "--calib-samples", "2", "--calib-seqlen", "32", "--max-memory", "1MB",
                 "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err
    assert "predicted to peak at" in err and "above --max-memory 0.00 GB" in err and "--calib-samples" in err
    assert not (tmp_path / "q").exists()
    with pytest.raises(SystemExit) as exit:
        main(["-q", "quantize", tiny_folder, "--max-memory", "4", "--out", str(tmp_path / "q")])
    assert exit.value.code == 2 and "expected an amount of memory with its unit" in capsys.readouterr().err


def test_max_memory_streams_when_only_streaming_fits(tiny_folder, tmp_path, monkeypatch, capsys):
    from tcompress.cli import compress
    from tcompress.engine.peak import MemoryEstimate

    monkeypatch.setattr(compress, "predict_peak", lambda model, method, samples, seqlen, lazy, chunk_tokens:
                        MemoryEstimate({"weights": int(1e9 if lazy else 5e9)}))
    assert main(["-q", "quantize", tiny_folder, "--calib-samples", "2", "--calib-seqlen", "32", "--max-memory", "2GB",
                 "--method", "rtn", "--group-size", "16", "--out", str(tmp_path / "q")]) == 0
    out = capsys.readouterr().out
    assert "streaming the model from its files" in out and "(predicted 1.00 GB)" in out
    assert (tmp_path / "q" / "model.safetensors.index.json").is_file()  # written a shard a block
    assert main(["-q", "quantize", tiny_folder, "--calib-samples", "2", "--calib-seqlen", "32", "--max-memory", "0.5GB",
                 "--method", "rtn", "--group-size", "16", "--out", str(tmp_path / "r")]) == 2
    assert "lower --calib-samples" in capsys.readouterr().err


def test_lazy_quantize_saves_what_the_in_memory_run_saves(tiny_folder, tmp_path, capsys):
    from safetensors.torch import load_file

    def tensors(folder):
        state = {}
        for file in folder.glob("*.safetensors"):
            state.update(load_file(file))
        return state

    common = ["-q", "quantize", tiny_folder, "--calib-samples", "4", "--calib-seqlen", "32", "--bits", "4",
              "--group-size", "16"]
    assert main([*common, "--out", str(tmp_path / "mem")]) == 0
    assert main([*common, "--lazy", "--eval", "pydoc", "--eval-windows", "1", "--eval-seqlen", "64",
                 "--out", str(tmp_path / "lazy")]) == 0
    assert "peak memory" in capsys.readouterr().out
    a, b = tensors(tmp_path / "mem"), tensors(tmp_path / "lazy")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
