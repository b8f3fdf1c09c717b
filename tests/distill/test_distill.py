"""Distillation: each loss against a hand computation (value and gradient), the trainer
(learning, resuming, errors), students built from a teacher, teacher-generated data."""

from __future__ import annotations

import copy
import http.server
import json
import threading

import pytest
import torch
from torch import nn

import tcompress as tc
from tcompress.distill import (
    AttentionKD,
    HiddenKD,
    LanguageModelLoss,
    LogitKD,
    Outputs,
    TrainConfig,
    ValueRelationKD,
    distill,
    kl_loss,
    layer_map,
    parse_losses,
    student_from,
)
from tcompress.distill.attention import distribution_kl, value_relation
from tcompress.distill.hidden import hidden_loss
from tcompress.distill.trainer import batch_ids

from helpers import VOCAB, tiny_llama


def teacher_and_data(layers: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    teacher = tiny_llama(num_hidden_layers=layers).eval()
    data = torch.randint(0, VOCAB, (24, 16), generator=torch.Generator().manual_seed(seed))
    return teacher, data


# --- losses against hand computations ---------------------------------------------------------------------------

def test_kl_forward_and_reverse_by_hand():
    s = torch.tensor([[1.0, 2.0, 0.5]], requires_grad=True)
    t = torch.tensor([[0.2, 1.0, 3.0]])
    temperature = 2.0
    p_s = torch.softmax(s.detach() / temperature, -1)
    p_t = torch.softmax(t / temperature, -1)
    forward = (p_t * (p_t.log() - p_s.log())).sum() * temperature**2
    reverse = (p_s * (p_s.log() - p_t.log())).sum() * temperature**2
    loss = kl_loss(s, t, temperature, "forward")
    torch.testing.assert_close(loss, forward)
    torch.testing.assert_close(kl_loss(s, t, temperature, "reverse"), reverse)
    loss.backward()
    # d/ds of T^2 KL(p_t || softmax(s/T)) = T (p_s - p_t)
    torch.testing.assert_close(s.grad, temperature * (p_s - p_t))


def test_kl_is_zero_for_equal_logits_and_hard_label_adds_cross_entropy():
    logits = torch.randn(2, 5, VOCAB)
    ids = torch.randint(0, VOCAB, (2, 5))
    out = Outputs(logits=logits)
    assert LogitKD()(out, out, ids).item() == pytest.approx(0.0, abs=1e-6)
    expected = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(LogitKD(hard_label=0.5)(out, out, ids), 0.5 * expected)
    torch.testing.assert_close(LanguageModelLoss()(out, None, ids), expected)


def test_hidden_loss_mse_and_cosine_by_hand():
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0]], requires_grad=True)
    b = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    mse = hidden_loss(a, b, "mse")
    assert mse.item() == pytest.approx((0 + 16 + 1 + 4) / 4)
    mse.backward()
    torch.testing.assert_close(a.grad, 2 * (a.detach() - b) / 4)
    assert hidden_loss(a, b, "cosine").item() == pytest.approx(((1 - 3 / 5) + (1 - 0)) / 2)


def test_hidden_kd_learns_a_projection_when_widths_differ():
    teacher, _ = teacher_and_data()
    student = tiny_llama(hidden_size=32, num_hidden_layers=2)
    loss = HiddenKD(layers="uniform")
    loss.bind(student, teacher)
    assert loss.pairs == [(1, 2), (2, 4)]
    assert [p.weight.shape for p in loss.projections] == [torch.Size([64, 32])] * 2


def test_attention_distribution_kl_by_hand():
    t = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    s = torch.tensor([[0.25, 0.75, 0.0], [0.2, 0.3, 0.5]])
    expected = (0.5 * torch.log(torch.tensor(0.5 / 0.25)) + 0.5 * torch.log(torch.tensor(0.5 / 0.75))) / 2
    torch.testing.assert_close(distribution_kl(t, s), expected)


def test_value_relation_by_hand():
    v = torch.randn(1, 3, 4)
    heads = 2
    expected = []
    for h in range(heads):
        part = v[0, :, 2 * h: 2 * h + 2]
        expected.append(torch.softmax(part @ part.T / 2**0.5, dim=-1))
    torch.testing.assert_close(value_relation(v, heads)[0], torch.stack(expected))


def test_attention_and_value_losses_are_zero_between_a_model_and_itself():
    teacher, data = teacher_and_data()
    for loss in (AttentionKD(), ValueRelationKD()):
        loss.bind(teacher, teacher)
        tc.distill.forward.use_eager_attention(teacher)
        out = tc.distill.forward.forward(teacher, data[:2], set(loss.needs), loss.value_layers()[0])
        assert loss(out, out, data[:2]).item() == pytest.approx(0.0, abs=1e-6)


def test_layer_maps():
    assert layer_map("uniform", 2, 4, "hidden") == [(1, 2), (2, 4)]
    assert layer_map("uniform", 3, 6, "attention", first=0) == [(0, 1), (1, 3), (2, 5)]
    assert layer_map("last", 2, 4, "value", first=0) == [(1, 3)]
    assert layer_map("1:2,2:3", 2, 4, "hidden") == [(1, 2), (2, 3)]
    with pytest.raises(ValueError, match="teacher layer 9"):
        layer_map({1: 9}, 2, 4, "hidden")
    with pytest.raises(ValueError, match="student layer 3"):
        layer_map([(3, 1)], 2, 4, "hidden")


def test_parse_losses():
    losses = parse_losses("kl:1.0,hidden:0.5", hidden={"metric": "cosine"})
    assert [(type(x), x.weight) for x in losses] == [(LogitKD, 1.0), (HiddenKD, 0.5)]
    assert losses[1].metric == "cosine"
    with pytest.raises(ValueError, match="unknown loss 'kd'"):
        parse_losses("kd:1")
    with pytest.raises(ValueError, match="must be a number"):
        parse_losses("kl:x")
    with pytest.raises(ValueError, match="weight must be positive"):
        parse_losses("kl:0")


# --- the trainer --------------------------------------------------------------------------------------------------

def test_a_student_learns_from_its_teacher():
    teacher, data = teacher_and_data()
    student = student_from(teacher, blocks=2)
    config = TrainConfig(steps=30, batch_size=8, lr=3e-3, schedule="constant")

    def kd(model):
        outs = [tc.distill.forward.forward(m, data, {"logits"}) for m in (model, teacher)]
        return {"kl": kl_loss(outs[0].logits, outs[1].logits).item()}

    history = distill(student, data, [LogitKD()], config, teacher=teacher, evaluate=kd, progress=False)
    assert [e["step"] for e in history.evals] == [0, 30]
    assert history.evals[-1]["kl"] < 0.5 * history.evals[0]["kl"]
    assert history.tokens == 30 * 8 * 16


def test_batches_cover_each_epoch_once():
    seen = torch.cat([batch_ids(10, 4, step, seed=0) for step in range(5)])  # 2 epochs
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    teacher, data = teacher_and_data()
    initial = student_from(teacher, blocks=2)
    config = TrainConfig(steps=6, batch_size=4, micro_batch_size=2, lr=1e-3, warmup_steps=2, save_every=2)
    losses = lambda: [LogitKD(), HiddenKD(weight=0.1, metric="cosine")]  # noqa: E731

    straight = copy.deepcopy(initial)
    distill(straight, data, losses(), config, teacher=teacher, out=tmp_path / "a", progress=False)

    interrupted = copy.deepcopy(initial)
    calls = {"n": 0}

    def stop_at_fifth_step(module, args):
        calls["n"] += 1
        if calls["n"] > 8:  # two micro-batches a step: step 5 dies
            raise KeyboardInterrupt

    handle = interrupted.register_forward_pre_hook(stop_at_fifth_step)
    with pytest.raises(KeyboardInterrupt):
        distill(interrupted, data, losses(), config, teacher=teacher, out=tmp_path / "b", progress=False)
    handle.remove()
    assert (tmp_path / "b" / "checkpoint" / "state.json").is_file()

    resumed = copy.deepcopy(initial)  # the user reruns the same command
    history = distill(resumed, data, losses(), config, teacher=teacher, out=tmp_path / "b", progress=False)
    assert [row["step"] for row in history.steps] == list(range(1, 7))
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (tmp_path / "b" / "log.json").is_file() and (tmp_path / "b" / "loss.png").is_file()
    assert not (tmp_path / "b" / "checkpoint").exists()


def test_resume_refuses_other_settings(tmp_path):
    teacher, data = teacher_and_data()
    student = student_from(teacher, blocks=2)
    config = TrainConfig(steps=4, batch_size=4, save_every=2)
    handle = student.register_forward_pre_hook(lambda m, a: (_ for _ in ()).throw(KeyboardInterrupt)
                                               if m.training and getattr(m, "_calls", 0) > 2 else
                                               setattr(m, "_calls", getattr(m, "_calls", 0) + 1))
    with pytest.raises(KeyboardInterrupt):
        distill(student, data, [LogitKD()], config, teacher=teacher, out=tmp_path, progress=False)
    handle.remove()
    with pytest.raises(ValueError, match="other settings"):
        distill(student, data, [LogitKD()], TrainConfig(steps=5, batch_size=4, save_every=2), teacher=teacher,
                out=tmp_path, progress=False)


def test_bad_input_gives_clear_errors():
    teacher, data = teacher_and_data()
    student = student_from(teacher, blocks=2)
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        TrainConfig(steps=0)
    other_vocab = tiny_llama(vocab_size=VOCAB + 5, num_hidden_layers=2)
    with pytest.raises(ValueError, match="vocabulary"):
        distill(other_vocab, data, [LogitKD()], TrainConfig(steps=1), teacher=teacher, progress=False)
    with pytest.raises(ValueError, match="teacher layer 7"):
        distill(student, data, [HiddenKD(layers="1:7")], TrainConfig(steps=1), teacher=teacher, progress=False)
    with pytest.raises(ValueError, match="teacher is None"):
        distill(student, data, [LogitKD()], TrainConfig(steps=1), progress=False)
    with pytest.raises(ValueError, match=r"data must be token ids \[n, seqlen\] \(seqlen >= 2\) or images"):
        distill(student, data[0], [LogitKD()], TrainConfig(steps=1), teacher=teacher, progress=False)
    with pytest.raises(ValueError, match="losses is empty"):
        distill(student, data, [], TrainConfig(steps=1), teacher=teacher, progress=False)


# --- students and data --------------------------------------------------------------------------------------------

def test_student_from_teacher_keeps_its_weights():
    teacher, data = teacher_and_data(layers=4)
    student = student_from(teacher, blocks=2, ffn=48)
    assert student.config.num_hidden_layers == 2 and student.config.intermediate_size == 48
    kept = [0, 3]  # evenly spread, first and last
    assert torch.equal(student.model.layers[1].self_attn.q_proj.weight, teacher.model.layers[kept[1]].self_attn.q_proj.weight)
    assert student.model.layers[0].mlp.down_proj.weight.shape == (64, 48)
    assert student(input_ids=data[:1]).logits.shape == (1, 16, VOCAB)
    assert teacher.config.num_hidden_layers == 4  # the teacher is untouched
    with pytest.raises(ValueError, match="blocks must be between 1 and the teacher's 4"):
        student_from(teacher, blocks=5)
    with pytest.raises(ValueError, match="ffn must be between"):
        student_from(teacher, ffn=0)


def test_teacher_generated_data_from_a_model_and_from_a_callable(tokenizer):
    torch.manual_seed(0)
    teacher = tiny_llama(vocab_size=len(tokenizer)).eval()
    texts = tc.distill.generate_texts(teacher, tokenizer, n=3, max_new_tokens=20, batch_size=2, progress=False)
    assert len(texts) == 3 and all(isinstance(text, str) for text in texts)
    echo = lambda prompts: [p[::-1] for p in prompts]  # noqa: E731
    texts = tc.distill.generate_texts(echo, tokenizer, prompts=["abc", "hello"], progress=False)
    assert texts == ["abccba", "helloolleh"]
    blocks = tc.distill.blocks_of_texts(texts * 4, tokenizer, seqlen=8)
    assert blocks.shape[1] == 8 and blocks.dtype == torch.long
    with pytest.raises(ValueError, match="returned 1 texts for 2 prompts"):
        tc.distill.generate_texts(lambda p: ["x"], tokenizer, prompts=["a", "b"], progress=False)


def test_completions_api_teacher():
    received = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received["path"] = self.path
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received["body"] = body
            choices = [{"index": i, "text": f" <{p}>"} for i, p in reversed(list(enumerate(body["prompt"])))]
            payload = json.dumps({"choices": choices}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        api = tc.distill.CompletionsAPI(f"http://127.0.0.1:{server.server_port}/v1", model="m", max_tokens=7)
        assert api(["a", "b"]) == [" <a>", " <b>"]
    finally:
        server.shutdown()
    assert received["path"] == "/v1/completions" and received["body"]["max_tokens"] == 7


def test_an_image_student_learns_from_a_vit_teacher():
    import transformers

    torch.manual_seed(0)
    teacher = transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=28, patch_size=7, num_channels=1, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_labels=10)).eval()
    student = student_from(teacher, blocks=2, ffn=48)
    images = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    def kd(model):
        return {"kl": kl_loss(model(pixel_values=images).logits, teacher(pixel_values=images).logits).item()}

    history = distill(student, images, [LogitKD(temperature=2.0), HiddenKD(weight=0.1)],
                      TrainConfig(steps=20, batch_size=8, lr=3e-3), teacher=teacher, evaluate=kd, progress=False)
    assert history.evals[-1]["kl"] < 0.5 * history.evals[0]["kl"]
    assert history.samples == 160 and history.tokens == 0
    with pytest.raises(ValueError, match="hard_label"):
        distill(student, images, [LogitKD(hard_label=1.0)], TrainConfig(steps=1), teacher=teacher, progress=False)


def test_every_loss_gradient_matches_finite_differences():
    torch.manual_seed(0)
    s_logits, t_logits = torch.randn(2, 3, 5, dtype=torch.double, requires_grad=True), torch.randn(2, 3, 5).double()
    for direction in ("forward", "reverse"):
        assert torch.autograd.gradcheck(lambda s: kl_loss(s, t_logits, 2.0, direction), (s_logits,))
    s_hidden, t_hidden = torch.randn(2, 3, 4, dtype=torch.double, requires_grad=True), torch.randn(2, 3, 4).double()
    for metric in ("mse", "cosine"):
        assert torch.autograd.gradcheck(lambda s: hidden_loss(s, t_hidden, metric), (s_hidden,))
    t_probs = torch.softmax(torch.randn(2, 4, 4).double(), -1)
    s_scores = torch.randn(2, 4, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: distribution_kl(t_probs, torch.softmax(s, -1)), (s_scores,))
    values = torch.randn(1, 3, 4, dtype=torch.double, requires_grad=True)
    target = value_relation(torch.randn(1, 3, 4).double(), 2)
    assert torch.autograd.gradcheck(lambda v: distribution_kl(target, value_relation(v, 2)), (values,))
