"""lm-evaluation-harness on tcompress's models as they are in memory.

A compressed model is handed to the harness's `HFLM` as the Python object it is, so its packed
modules (the low-bit kernels, the activation quantizers) run as they do in tcompress; an
export dequantized for the harness would measure something else. Tasks are the harness's own
by name, local task YAML files (their folders are searched for further tasks), and the task
shipped here, `wikitext2_local`: WikiText-2's test articles from the local copy, scored by
rolling log-likelihood on the raw text. For that task tcompress computes the same figures with
its own forward (`eval.lm.rolling_nll`, on the harness's tokens and windows), and the
token-level perplexity both imply, so the two can be held against each other.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from tcompress.data.text import load_text, wikitext_pages
from tcompress.eval.lm import rolling_nll
from tcompress.eval.lm_eval_tasks.wikitext2_local import words_and_bytes

TASKS = Path(__file__).with_name("lm_eval_tasks")
WIKITEXT = "wikitext2_local"


def harness() -> Any:
    """The `lm_eval` package, or a clear error naming what to install."""
    try:
        import lm_eval
        import lm_eval.models.huggingface  # noqa: F401
    except ImportError as error:
        raise ImportError(f"lm-evaluation-harness is not installed ({error}): pip install 'lm-eval[hf]'") from None
    return lm_eval


def task_names(tasks: list[str]) -> tuple[list[str], list[str]]:
    """The task names to run and the folders to search for tasks: a YAML file names the task
    it defines and adds its folder; a name is looked up as it is."""
    names, folders = [], [str(TASKS)]
    for task in tasks:
        path = Path(task).expanduser()
        if path.suffix in (".yaml", ".yml"):
            if not path.is_file():
                raise FileNotFoundError(f"task file not found: {str(path)!r}")
            names.append(task_name(path))
            folders.append(str(path.parent.resolve()))
        else:
            names.append(task)
    return names, list(dict.fromkeys(folders))


def task_name(path: Path) -> str:
    """The `task:` a YAML task file defines (its `!function` and other tags left unread)."""
    loader = type("TagsLeftAlone", (yaml.SafeLoader,), {})
    loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    spec = yaml.load(path.read_text(), Loader=loader)  # noqa: S506 - a SafeLoader that ignores tags
    if not isinstance(spec, dict) or not isinstance(spec.get("task"), str):
        raise ValueError(f"{str(path)!r}: not an lm-evaluation-harness task file (no `task:` name)")
    return spec["task"]


def language_model(model: nn.Module, tokenizer: Any, max_length: int, batch_size: int = 1) -> Any:
    """The harness's `HFLM` around the model object itself (packed modules and all)."""
    lm_eval = harness()
    device = str(next(model.parameters()).device)
    return lm_eval.models.huggingface.HFLM(pretrained=model, tokenizer=tokenizer, max_length=max_length,
                                           batch_size=batch_size, device=device)


def evaluate(model: nn.Module, tokenizer: Any, tasks: list[str], *, limit: int | None = None, max_length: int = 2048,
             batch_size: int = 1) -> tuple[dict, Any]:
    """The harness's results for `tasks` on `model`, and its `HFLM` (for `wikitext_check`)."""
    lm_eval = harness()
    from lm_eval.tasks import TaskManager

    names, folders = task_names(tasks)
    manager = TaskManager(include_path=folders, include_defaults=False)  # indexing the harness's own tasks takes long
    if any(name not in manager.all_tasks for name in names):
        manager = TaskManager(include_path=folders)
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        raise ValueError(f"unknown lm-eval task(s) {unknown}: give a task name the harness knows, a task YAML file, "
                         f"or {WIKITEXT}")
    lm = language_model(model, tokenizer, max_length, batch_size)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit,
                                      log_samples=False, bootstrap_iters=0)
    return results, lm


def table(results: dict) -> str:
    from lm_eval.utils import make_table

    return make_table(results)


def wikitext_check(model: nn.Module, lm: Any, results: dict, limit: int | None = None) -> dict[str, float]:
    """`wikitext2_local`'s figures computed by tcompress's own forward on the harness's tokens
    and windows, beside the harness's; and the token-level perplexity both imply."""
    pages = wikitext_pages(load_text("wikitext2", "test"))[:limit]
    tokens = [lm.tok_encode(page) for page in pages]
    nll = sum(rolling_nll(model, ids, lm.prefix_token_id, lm.max_length) for ids in tokens)
    words, size = (sum(units) for units in zip(*map(words_and_bytes, pages)))
    count = sum(len(ids) for ids in tokens)
    theirs = results["results"][WIKITEXT]
    their_nll = math.log(theirs["word_perplexity,none"]) * words
    return {"tcompress word_perplexity": math.exp(nll / words),
            "lm-eval word_perplexity": theirs["word_perplexity,none"],
            "tcompress byte_perplexity": math.exp(nll / size),
            "lm-eval byte_perplexity": theirs["byte_perplexity,none"],
            "tcompress token_perplexity": math.exp(nll / count),
            "lm-eval token_perplexity": math.exp(their_nll / count), "tokens": count}
