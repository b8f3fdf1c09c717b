import json

import pytest

import tcompress as tc
from tcompress.cli import main

from conftest import build


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    tc.save(build("llama"), folder, tokenizer)
    return str(folder)


@pytest.mark.parametrize("command", ["info", "eval", "bench"])
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
