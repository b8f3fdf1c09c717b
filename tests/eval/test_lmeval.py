"""lm-evaluation-harness on tcompress's in-memory models: a local task file runs from the CLI,
and on the shipped WikiText-2 task the harness's figures equal tcompress's own forward on the
same tokens and windows (packed model included)."""

from __future__ import annotations

import json

import pytest

import tcompress as tc
from tcompress.cli import main

from helpers import build, byte_tokenizer

lm_eval = pytest.importorskip("lm_eval")
from tcompress.eval import lmeval  # noqa: E402

ARTICLES = [" = First Article = \n\n A small text about tests , written for the harness . \n\n = = Part = = \n\n"
            " It goes on a little longer , so that windows roll . \n",
            " = Second = \n\n Another page , shorter . \n"]


@pytest.fixture
def local_wikitext(tmp_path, monkeypatch):
    (tmp_path / "wikitext2").mkdir()
    (tmp_path / "wikitext2" / "wiki.test.raw").write_text("\n".join(ARTICLES))
    monkeypatch.setenv("TCOMPRESS_DATA", str(tmp_path))
    return tmp_path


def test_pages_are_the_articles():
    assert [page.splitlines()[0] for page in tc.data.text.wikitext_pages("\n".join(ARTICLES))] == \
        [" = First Article = ", " = Second = "]


@pytest.mark.parametrize("packed", [False, True])
def test_the_harness_and_tcompress_agree_on_the_wikitext_task(local_wikitext, packed):
    model = build("llama")
    if packed:
        tc.apply(model, tc.quantize.RTN(bits=4, group_size=32), progress=False)
    results, lm = lmeval.evaluate(model, byte_tokenizer(), ["wikitext2_local"], max_length=32)
    check = lmeval.wikitext_check(model, lm, results)
    for unit in ("word_perplexity", "byte_perplexity", "token_perplexity"):
        assert check[f"tcompress {unit}"] == pytest.approx(check[f"lm-eval {unit}"], rel=1e-4)
    assert check["tokens"] > 32  # more than one window: the rolling part is exercised


def test_a_local_task_file_runs_from_the_cli(local_wikitext, tiny_folder, tmp_path, capsys):
    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in ("one small document", "and a second one")))
    task = tmp_path / "tiny.yaml"
    task.write_text(f"task: tiny_rolling\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
                    "output_type: loglikelihood_rolling\ntest_split: test\ndoc_to_text: ''\n"
                    "doc_to_target: '{{text}}'\nmetric_list:\n  - metric: word_perplexity\n")
    out = tmp_path / "r.json"
    assert main(["-q", "eval", tiny_folder, "--tasks", f"{task},wikitext2_local", "--seqlen", "64",
                 "--limit", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tiny_rolling" in printed and "word_perplexity" in printed and "tcompress" in printed
    assert set(json.loads(out.read_text())["results"]) == {"tiny_rolling", "wikitext2_local"}


@pytest.mark.parametrize("argv, match", [
    (["--tasks", "no_such_task_anywhere"], "unknown lm-eval task"),
    (["--tasks", "missing.yaml"], "task file not found"),
    (["--limit", "3"], "--limit goes with --tasks"),
])
def test_bad_tasks_are_refused(tiny_folder, capsys, argv, match):
    assert main(["-q", "eval", tiny_folder, *argv]) == 2
    assert match in capsys.readouterr().err
