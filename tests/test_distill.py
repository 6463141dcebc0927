"""Knowledge distillation: the loss against its definition on hand-computed cases (T, α,
masked positions, the T² scaling), the top-k cache (round trip, key, and the top-k loss equal
to the full one at k = V), and `lmforge distill` on a tiny teacher and student (the loss
falls, cache = online at k = V, exact resume, errors)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import run_workdir, tiny_run_toml

from lmforge.adapt.distill import distill, load_config
from lmforge.adapt.distill_cache import TopK, cache_key, cached_topk, teacher_topk
from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.interop.load import load_weights
from lmforge.objectives.distillation import distill_loss, soft_kl
from lmforge.train.config import load_run_config
from lmforge.train.loop import train

STUDENT = {"max_steps": 16, "eval_every": 8, "warmup_steps": 2, "threads": 1}


def softmax(z: list[float]) -> list[float]:
    e = [math.exp(v - max(z)) for v in z]
    return [v / sum(e) for v in e]


def kl(q: list[float], p: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(q, p, strict=True))


S = [[1.0, -0.5, 2.0], [0.3, 0.1, -1.2], [9.0, -9.0, 0.0]]  # student logits, 3 positions
Z = [[0.5, 0.5, 1.5], [2.0, -1.0, 0.0], [-9.0, 9.0, 0.0]]  # teacher logits
Y = [2, 0, -100]  # the third position is masked


@pytest.mark.parametrize("t", [1.0, 2.0])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_loss_equals_its_definition_by_hand(t, alpha):
    scored = [i for i, y in enumerate(Y) if y != -100]
    kls = [kl(softmax([v / t for v in Z[i]]), softmax([v / t for v in S[i]])) for i in scored]
    ces = [-math.log(softmax(S[i])[Y[i]]) for i in scored]
    want_kl, want_ce = sum(kls) / len(kls), sum(ces) / len(ces)
    want = alpha * t * t * want_kl + (1 - alpha) * want_ce
    teacher = torch.log_softmax(torch.tensor(Z), -1)
    out = distill_loss(torch.tensor(S), torch.tensor(Y), teacher, None, t, alpha)
    assert out["loss"].item() == pytest.approx(want, rel=1e-6)
    assert out["kl"].item() == pytest.approx(want_kl, rel=1e-6)
    assert out["ce"].item() == pytest.approx(want_ce, rel=1e-6)
    # the masked position is ignored whatever its logits and teacher
    s2, z2 = torch.tensor(S), teacher.clone()
    s2[2], z2[2] = torch.tensor([50.0, 0.0, -50.0]), torch.log_softmax(torch.randn(3), -1)
    again = distill_loss(s2, torch.tensor(Y), z2, None, t, alpha)
    assert again["loss"].item() == pytest.approx(out["loss"].item(), rel=1e-6)


def test_temperature_squared_keeps_the_soft_gradient_scale():
    # Hinton et al. §2.1: for large T and zero-mean logits, ∂(T²·KL)/∂s_i → (s_i − z_i)/V
    s = torch.tensor([[0.4, -0.2, 0.9, -1.1]])
    z = torch.tensor([[1.0, 0.3, -0.6, -0.7]])
    s, z = s - s.mean(), z - z.mean()
    for t in (50.0, 200.0):
        leaf = s.clone().requires_grad_(True)
        loss = distill_loss(leaf, torch.tensor([0]), torch.log_softmax(z, -1), None, t, 1.0)
        assert loss["loss"].item() == pytest.approx(t * t * loss["kl"].item(), rel=1e-6)
        loss["loss"].backward()
        torch.testing.assert_close(leaf.grad, (s - z) / 4, rtol=2e-2, atol=1e-4)


def test_topk_with_every_id_is_the_full_kl_and_fewer_ids_renormalise():
    gen = torch.Generator().manual_seed(0)
    s, z = torch.randn(2, 5, 7, generator=gen), torch.randn(2, 5, 7, generator=gen)
    lp = torch.log_softmax(z, -1)
    top = lp.topk(7, -1)
    for t in (1.0, 2.0):
        torch.testing.assert_close(soft_kl(s, top.values, top.indices, t), soft_kl(s, lp, None, t))
    k3 = lp.topk(3, -1)  # by hand: q renormalised over the 3 ids, p the student's full softmax
    q = torch.softmax(k3.values / 2, -1)
    p = torch.log_softmax(s / 2, -1).gather(-1, k3.indices)
    torch.testing.assert_close(soft_kl(s, k3.values, k3.indices, 2.0),
                               (q * (q.log() - p)).sum(-1))
    assert (soft_kl(s, k3.values, k3.indices, 2.0) >= 0).all()


def test_bad_settings_are_refused():
    with pytest.raises(LmforgeError, match="temperature > 0"):
        distill_loss(torch.zeros(1, 3), torch.tensor([0]), torch.zeros(1, 3), None, 0.0, 0.5)
    with pytest.raises(LmforgeError, match="no scored position"):
        distill_loss(torch.zeros(1, 3), torch.tensor([-100]), torch.zeros(1, 3))


def test_topk_cache_round_trip_and_key(tmp_path):
    tokens = torch.randint(0, 11, (200,), generator=torch.Generator().manual_seed(1)).numpy()
    proj = torch.randn(11, 11, generator=torch.Generator().manual_seed(2))
    def logits_of(ids):
        return proj[ids]

    top = teacher_topk(logits_of, tokens, 16, 4, 5, 2, progress=False)
    full = torch.log_softmax(proj[torch.as_tensor(tokens[:80].astype("int64")).view(5, 16)], -1)
    torch.testing.assert_close(top.logprobs, full.topk(4, -1).values)
    key = cache_key("sha256:teacher", tokens, 16, 4, 5)
    calls = []
    first = cached_topk(tmp_path, key, lambda: calls.append(1) or top)
    again = cached_topk(tmp_path, key, lambda: calls.append(1) or top)
    assert calls == [1]
    assert torch.equal(again.ids, first.ids) and torch.equal(again.logprobs, first.logprobs)
    entry = tmp_path / key["key"]
    assert json.loads((entry / "meta.json").read_text())["teacher_hash"] == "sha256:teacher"
    assert sorted(p.name for p in tmp_path.iterdir()) == [key["key"]]  # no temporary left
    other = tokens.copy()
    other[3] = (other[3] + 1) % 11
    assert cache_key("sha256:teacher", other, 16, 4, 5)["key"] != key["key"]
    assert cache_key("sha256:other", tokens, 16, 4, 5)["key"] != key["key"]
    assert cache_key("sha256:teacher", tokens, 16, 8, 5)["key"] != key["key"]
    assert isinstance(again, TopK)


def student_toml(distill_table: str, **values) -> str:
    return tiny_run_toml(**{**STUDENT, **values}) + f"[distill]\n{distill_table}\n"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, shakespeare_char):
    table = 'teacher = "teacher"\ncache_dir = "cache"\nchunks = 64\ntemperature = 2.0\n'
    d = run_workdir(tmp_path_factory.mktemp("distill"), shakespeare_char, {
        "teacher.toml": tiny_run_toml(out_dir="teacher", threads=1, max_steps=40,
                                      eval_every=40),
        "student.toml": student_toml(table + "top_k = 65\n", out_dir="student"),
        "online.toml": student_toml(table + 'teacher_logits = "online"\n', out_dir="online"),
    })
    train(load_run_config(d / "teacher.toml"), progress=False)
    return d


def rows(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_distillation_lowers_the_loss_and_cache_equals_online(workdir):
    vocab = load_weights(workdir / "teacher")[0].vocab_size
    assert vocab == 65  # top_k = 65 in student.toml keeps every id: the full distribution
    run = distill(*load_config(workdir / "student.toml"), progress=False)
    evals = [r for r in rows(run) if "val_loss" in r]
    assert evals[-1]["val_kl"] < evals[0]["val_kl"] and evals[-1]["val_ce"] < 4.0
    online = distill(*load_config(workdir / "online.toml"), progress=False)
    a = [r["val_loss"] for r in rows(run) if "val_loss" in r]
    b = [r["val_loss"] for r in rows(online) if "val_loss" in r]
    assert a == pytest.approx(b, rel=1e-4)
    assert len(list((workdir / "cache").iterdir())) == 2  # train and val splits
    assert json.loads((run / "distill.json").read_text())["top_k"] == 65


def test_resume_is_exact(workdir):
    over = ["train.out_dir='straight'", "distill.top_k=8"]
    straight = distill(*load_config(workdir / "student.toml", over), progress=False)
    over = ["train.out_dir='paused'", "distill.top_k=8"]
    paused = distill(*load_config(workdir / "student.toml", over), stop_after=8,
                     progress=False)
    main(["distill", "--config", str(workdir / "student.toml"), "--resume",
          "--set", "train.out_dir='paused'", "--set", "distill.top_k=8"])
    loss = [r["loss"] for r in rows(straight) if "loss" in r]
    assert loss == [r["loss"] for r in rows(paused) if "loss" in r]
    _, a, _, _ = load_weights(straight / "checkpoints" / "step-16")
    _, b, _, _ = load_weights(paused / "checkpoints" / "step-16")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_errors_name_the_fix(workdir, tmp_path):
    with pytest.raises(LmforgeError, match="lmforge distill --config"):
        train(load_run_config(workdir / "teacher.toml", ["train.objective='distill'",
                                                          "train.out_dir='x'"]),
              progress=False)
    with pytest.raises(LmforgeError, match="student's vocabulary"):
        distill(*load_config(workdir / "student.toml", ["model.vocab_size=80",
                                                         "train.out_dir='v'"]),
                progress=False)
    with pytest.raises(LmforgeError, match="unknown distill setting"):
        load_config(workdir / "student.toml", ["distill.temp=3"])
    with pytest.raises(LmforgeError, match="lmforge distill trains with"):
        load_config(workdir / "student.toml", ["train.objective='causal_lm'"])


def test_the_shipped_config_reads():
    run, s = load_config(Path(__file__).resolve().parents[1] / "configs"
                         / "distill-smollm2-student.toml")
    assert run.train.objective == "distill" and s.teacher == "smollm2"
    assert (s.temperature, s.alpha, s.top_k, s.chunks) == (1.0, 0.5, 32, 384)
    assert run.model["max_seq_len"] == run.train.block_size == 64
