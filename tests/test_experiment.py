"""Tests of the experiment runner: data-efficiency maths, run planning, a micro experiment."""

import json
import math
import os

import pytest

from cyb_jax import experiment
from cyb_jax.configs import experiment as experiment_config
from cyb_jax.experiment import efficiency
from cyb_jax.experiment import plan as experiment_plan
from cyb_jax.experiment import results as experiment_results
from cyb_jax.experiment import results_md


def test_tokens_to_reach_interpolates_the_first_crossing():
  curve = [(100, 3.0), (200, 2.0), (300, 2.5), (400, 1.0)]
  assert efficiency.tokens_to_reach(curve, 2.5) == pytest.approx(150.0)
  assert efficiency.tokens_to_reach(curve, 2.0) == pytest.approx(200.0)
  assert efficiency.tokens_to_reach(curve, 3.5) == pytest.approx(100.0)
  assert efficiency.tokens_to_reach(curve, 1.5) == pytest.approx(366.666, rel=1e-4)
  assert efficiency.tokens_to_reach(curve, 0.5) is None


def test_data_efficiency_ratio_and_lower_bound():
  fast = [(100, 2.0), (200, 1.0)]
  slow = [(100, 3.0), (200, 2.5), (300, 2.0), (400, 1.5), (600, 1.0)]
  e = efficiency.data_efficiency(fast, slow)
  assert e["better"] == "a" and e["target_loss"] == 1.0
  assert e["ratio_at_worse_final"] == pytest.approx(600 / 200)
  assert e["ratio"] == pytest.approx(600 / 200) and not e["lower_bound"]
  never = [(100, 3.0), (400, 2.0)]
  e = efficiency.data_efficiency(never, fast)
  assert e["better"] == "b" and e["lower_bound"] and e["ratio"] == pytest.approx(400 / 200)


def test_token_ratio_is_the_baselines_tokens_over_the_models_at_the_worse_final_loss():
  baseline = [(100, 3.0), (200, 2.0), (300, 1.5)]
  model = [(100, 2.0), (200, 1.0)]  # reaches the baseline's final 1.5 at 150 tokens
  assert efficiency.token_ratio(baseline, model) == pytest.approx(300 / 150)
  # Swapped, the model is the slower one: the baseline reaches its final 1.5 at 150 tokens.
  assert efficiency.token_ratio(model, baseline) == pytest.approx(150 / 300)
  assert efficiency.token_ratio(baseline, baseline) == pytest.approx(1.0)


def test_paired_by_seed_compares_the_seeds_both_rows_ran():
  p = efficiency.paired_by_seed({0: 3.0, 1: 3.5, 2: 2.0}, {0: 3.25, 1: 3.0, 3: 9.0})
  assert p == {"seeds": [0, 1], "differences": [-0.25, 0.5], "mean": 0.125, "a_better": 1}
  none = efficiency.paired_by_seed({0: 1.0}, {1: 1.0})
  assert none["seeds"] == [] and none["a_better"] == 0 and math.isnan(none["mean"])


def test_paired_section_lists_each_seeds_difference_and_skips_one_seed_rows():
  paired = {
    "cyb_dp_K1 vs ce": efficiency.paired_by_seed({0: 3.0, 1: 3.5}, {0: 3.25, 1: 3.0}),
    "cyb_ap_K1 vs ce": efficiency.paired_by_seed({0: 3.0}, {0: 3.25}),
  }
  text = "\n".join(results_md._paired_lines(paired))
  assert "| cyb_dp_K1 vs ce | 2 | +0.125 | -0.250 / +0.500 | 1 of 2 |" in text
  assert "cyb_ap_K1" not in text
  assert results_md._paired_lines({"cyb_ap_K1 vs ce": paired["cyb_ap_K1 vs ce"]}) == []


def test_tokens_by_budget_reads_the_longer_runs_beyond_the_grid_curve_in_log_tokens():
  grid = [(100, 3.0), (200, 2.5)]  # the ce run of the grid's budget
  frontier = efficiency.budget_frontier(grid, [(800, 2.0), (400, 2.2)])
  assert frontier == [(100, 3.0), (200, 2.5), (400, 2.2), (800, 2.0)]
  with pytest.raises(ValueError, match=r"finals at tokens \[150\] are within the grid run's curve \(up to 200\)"):
    efficiency.budget_frontier(grid, [(150, 9.0), (400, 2.2)])
  # A model at 2.1 after 200 tokens: halfway from 2.2 at 400 to 2.0 at 800 tokens in log tokens,
  # i.e. 400 * 2 ** 0.5 (not 600: linear in tokens would overstate ce's tokens).
  assert efficiency.tokens_by_budget(frontier, 200, 2.1) == {
    "tokens_baseline": pytest.approx(400 * 2**0.5),
    "ratio": pytest.approx(2 * 2**0.5),
    "lower_bound": False,
  }
  # On the grid curve: 2.75 is halfway from 3.0 at 100 to 2.5 at 200 tokens.
  assert efficiency.tokens_by_budget(frontier, 200, 2.75)["ratio"] == pytest.approx(100 * 2**0.5 / 200)
  never = efficiency.tokens_by_budget(frontier, 200, 1.5)
  assert never["lower_bound"] and never["tokens_baseline"] is None and never["ratio"] == pytest.approx(800 / 200)


def _row(loss, steps, seeds, curve, budget=None):
  return {
    "loss": loss,
    "K": 0 if loss == "ce" else 1,
    "steps": steps,
    "budget": budget,
    "seeds": seeds,
    "train_tokens": curve[-1][0],
    "nll_mix": {"mean": curve[-1][1], "std": 0.0, "n": len(seeds)},
    "curve": curve,
  }


def test_ce_by_budget_keeps_budgets_of_every_seed_and_reports_the_fall_per_doubling():
  rows = {
    "ce": _row("ce", 8, [0, 1], [(100, 3.0), (200, 2.5)]),
    "cyb_dp_K1": _row("cyb_dp", 8, [0, 1], [(100, 2.8), (200, 2.1)]),
    "ce_steps16": _row("ce", 16, [0, 1], [(400, 2.2)], budget=16),
    "ce_steps32": _row("ce", 32, [0, 1], [(800, 2.0)], budget=32),
    "ce_steps64": _row("ce", 64, [0], [(1600, 1.0)], budget=64),  # seed 1 unfinished: left out
  }
  by_budget = experiment_results._ce_by_budget(rows)
  assert [p["row"] for p in by_budget["points"]] == ["ce", "ce_steps16", "ce_steps32"]
  assert by_budget["partial"] == ["ce_steps64"]
  assert by_budget["frontier"][-1] == (800, 2.0)
  assert set(by_budget["vs"]) == {"cyb_dp_K1"} and by_budget["vs"]["cyb_dp_K1"]["ratio"] == pytest.approx(2 * 2**0.5)
  text = "\n".join(results_md._ce_budget_lines(by_budget))
  # 2.5 -> 2.2 over a doubling of tokens (200 -> 400), 2.2 -> 2.0 over one more.
  assert (
    "| ce_steps16 | 16 | 400 | 2 | 2.200 ± 0.000 | 0.3000 |" in text
    and "| ce_steps32 | 32 | 800 | 2 | 2.000 ± 0.000 | 0.2000 |" in text
  )
  assert (
    "| cyb_dp_K1 | 2.1000 | 200 | 566 | 2.83 |" in text
    and "Left out (not finished for every seed of `ce`): `ce_steps64`" in text
  )
  assert experiment_results._ce_by_budget({k: rows[k] for k in ("ce", "cyb_dp_K1", "ce_steps64")}) == {}


def test_plan_adds_a_longer_ce_run_per_budget_and_seed_with_its_own_schedule():
  c = experiment_config.get_config("text")
  c.seeds = (0, 1)
  c.ce_budgets = (1600, 3200)
  runs = {r.name: r for r in experiment_plan.plan_runs(c)}
  longer = [r for r in runs.values() if r.budget is not None]
  assert sorted(r.name for r in longer) == ["ce_steps1600_s0", "ce_steps1600_s1", "ce_steps3200_s0", "ce_steps3200_s1"]
  spec = runs["ce_steps3200_s1"]
  assert (spec.loss, spec.max_pauses, spec.seed, spec.group, spec.sweep) == ("ce", 0, 1, "ce_steps3200", "")
  assert experiment_plan.run_config(c, spec).num_train_steps == 3200
  assert experiment_plan.run_config(c, runs["ce_s1"]).num_train_steps == 800
  c.run.optimizer.schedule_steps = 800  # one schedule for every run: no budget could have its own
  with pytest.raises(ValueError, match=r"run.optimizer.schedule_steps=800 fixes one for every run"):
    experiment_plan.plan_runs(c)
  c.run.optimizer.schedule_steps = None
  for bad in ((800,), (1600, 1600), (True,), (2400.0,)):
    c.ce_budgets = bad
    with pytest.raises(ValueError, match=r"must be distinct ints above run.num_train_steps=800"):
      experiment_plan.plan_runs(c)
  c.ce_budgets, c.losses = (1600,), ("pause_ce", "cyb_dp")
  with pytest.raises(ValueError, match=r"has no 'ce'"):
    experiment_plan.plan_runs(c)


def test_plan_covers_the_grid_and_the_sweeps():
  c = experiment_config.get_config("main")
  c.sweep.gamma = (0.5, 0.99)
  runs = experiment_plan.plan_runs(c)
  names = [r.name for r in runs]
  assert names.count("ce_s0") == 1 and "cyb_dp_K3_s2" in names and "pause_ce_K1_s1" in names
  assert len([r for r in runs if not r.sweep]) == 3 * (1 + 2 * (1 + 3 * 2))  # CYB with and without warm-up
  sweep = [r for r in runs if r.sweep]
  assert {r.name for r in sweep} == {
    "cyb_ap_K1_s0_gamma0.5",
    "cyb_ap_K3_s0_gamma0.5",
    "cyb_ap_K1_s0_gamma0.99",
    "cyb_ap_K3_s0_gamma0.99",
  }
  assert experiment_plan.run_config(c, sweep[0]).loss.gamma == 0.5
  c.losses = ("ce", "hinge")
  with pytest.raises(ValueError, match=r"losses \['hinge'\] are unknown"):
    experiment_plan.plan_runs(c)


def test_plan_trains_every_cyb_loss_with_and_without_the_pause_warmup():
  c = experiment_config.get_config("main")
  c.pause_warmup = (0, 200)
  runs = {r.name: r for r in experiment_plan.plan_runs(c)}
  assert len(runs) == 3 * (1 + 2 * (1 + 3 * 2))  # ce; per K: pause_ce and 3 CYB losses x 2
  warm = runs["cyb_va_w200_K3_s1"]
  assert (warm.loss, warm.max_pauses, warm.seed, warm.group) == ("cyb_va", 3, 1, "cyb_va_w200_K3")
  assert experiment_plan.run_config(c, warm).loss.pause_warmup_steps == 200
  assert experiment_plan.run_config(c, runs["cyb_va_K3_s1"]).loss.pause_warmup_steps == 0
  assert "pause_ce_w200_K1_s0" not in runs and "ce_w200_s0" not in runs  # baselines: no warm-up
  c.pause_warmup = (0, -5)
  with pytest.raises(ValueError, match=r"pause_warmup=\(0, -5\) must be"):
    experiment_plan.plan_runs(c)


@pytest.mark.slow
def test_a_micro_experiment_writes_results(tmp_path):
  c = experiment_config.get_config("smoke")
  c.out_dir = str(tmp_path)
  c.losses = ("ce", "cyb_ap")
  c.run.num_train_steps = 4
  c.run.eval_every_steps = 2
  c.run.checkpoint_every_steps = 4
  c.run.data.seq_len = 16
  c.run.data.batch_size = 4
  c.sweep.gamma = (0.5,)
  c.ce_budgets = (8,)
  results = experiment.run_experiment(c)
  assert set(results["rows"]) == {"ce", "ce_steps8", "cyb_ap_K1"}
  assert results["rows"]["ce_steps8"]["steps"] == 8 and results["rows"]["ce"]["steps"] == 4
  tokens = results["rows"]["ce"]["train_tokens"]
  assert results["rows"]["ce_steps8"]["train_tokens"] > 1.5 * tokens  # target tokens: 4 vs 8 batches
  by_budget = results["ce_budgets"]
  assert [p["row"] for p in by_budget["points"]] == ["ce", "ce_steps8"]
  assert by_budget["frontier"][-1] == (
    results["rows"]["ce_steps8"]["train_tokens"],
    results["rows"]["ce_steps8"]["nll_mix"]["mean"],
  )
  assert set(by_budget["vs"]) == {"cyb_ap_K1"} and by_budget["vs"]["cyb_ap_K1"]["tokens"] == tokens
  assert "ce_steps8" not in results["pauses"]  # pauses are analysed for the grid's rows only
  assert "cyb_ap_K1 vs ce" in results["efficiency"]
  paired = results["paired"]["cyb_ap_K1 vs ce"]
  rows = results["rows"]
  assert paired["seeds"] == [0] and paired["differences"] == [
    rows["cyb_ap_K1"]["nll_mix_per_seed"][0] - rows["ce"]["nll_mix_per_seed"][0]
  ]
  assert rows["ce"]["nll_mix_per_seed"] == [rows["ce"]["nll_mix"]["mean"]]
  assert results["pauses"]["cyb_ap_K1"]["difficulty"]["levels"]
  with open(tmp_path / "results.json") as f:
    saved = json.load(f)
  assert saved["rows"]["ce"]["K"] == 0 and saved["rows"]["ce"]["seeds"] == [0]
  assert saved["rows"]["ce"]["nll_mix_per_seed"] == rows["ce"]["nll_mix_per_seed"]
  assert saved["paired"]["cyb_ap_K1 vs ce"]["differences"] == paired["differences"]
  text = (tmp_path / "results.md").read_text()
  assert "| cyb_ap_K1 |" in text and "Data efficiency" in text and "## ce by budget" in text
  assert "| ce_steps8 | 8 |" in text
  # The sweep lists its run beside the same seed's ce and default-gamma runs.
  assert [e["name"] for e in results["sweeps"]] == ["ce_s0", "cyb_ap_K1_s0", "cyb_ap_K1_s0_gamma0.5"]
  assert [e["value"] for e in results["sweeps"]] == [None, None, 0.5]
  assert all(len(e["mean_pauses_by_level"]) == 5 for e in results["sweeps"])
  assert "| cyb_ap_K1_s0_gamma0.5 | loss.gamma | 0.5 |" in text
  assert os.path.getsize(tmp_path / "plots" / "eval_loss_vs_tokens.png") > 1000
  assert os.path.getsize(tmp_path / "plots" / "ce_by_budget.png") > 1000
  # Running it again reuses the finished runs and keeps the seconds they took.
  with open(tmp_path / "timings.json") as f:
    seconds = json.load(f)
  assert set(seconds) >= {"ce_s0", "cyb_ap_K1_s0"}
  experiment.run_experiment(c)
  with open(tmp_path / "timings.json") as f:
    assert json.load(f) == seconds
  # A finished run of another config is not silently reused.
  c.run.loss.gamma = 0.7
  with pytest.raises(ValueError, match=r"holds a run of another config \(loss.gamma: 0.9 there, 0.7 here\)"):
    experiment.run_experiment(c)


def test_a_preempted_run_ends_the_experiment(tmp_path, monkeypatch):
  c = experiment_config.get_config("smoke")
  c.out_dir = str(tmp_path)
  started = []

  def preempted(config, workdir):
    started.append(os.path.basename(workdir))
    return {"stopped": "preempted"}

  monkeypatch.setattr(experiment.train, "train_and_evaluate", preempted)
  assert experiment.run_experiment(c) == {"stopped": "preempted", "run": "ce_s0"}
  assert started == ["ce_s0"]  # the next run does not start
  assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_the_gpu_preset_runs_as_its_smoke_variant_on_a_cpu(tmp_path):
  gpu, smoke = experiment_config.get_config("gpu"), experiment_config.get_config("gpu_smoke")
  assert gpu.run.model.dtype == smoke.run.model.dtype == "bfloat16"
  assert gpu.run.data.synthetic.max_digits == smoke.run.data.synthetic.max_digits == 4
  assert gpu.losses == smoke.losses
  smoke.out_dir = str(tmp_path)
  results = experiment.run_experiment(smoke)
  assert set(results["rows"]) == {"ce", "pause_ce_K1", "cyb_ap_K1", "cyb_va_K1", "cyb_dp_K1"}
  assert (tmp_path / "results.md").exists()


def test_the_default_config_is_the_recommended_cyb_dp_with_a_half_run_warmup():
  """docs/RESULTS.md's recommendation; the baseline configs train their own loss throughout,
  and the experiment's no-warm-up rows override the template's W."""
  from cyb_jax.configs import ce as ce_config  # pylint: disable=g-import-not-at-top
  from cyb_jax.configs import default as default_config  # pylint: disable=g-import-not-at-top
  from cyb_jax.configs import pause_ce as pause_ce_config  # pylint: disable=g-import-not-at-top

  c = default_config.get_config()
  assert (c.loss.name, c.loss.budget, c.model.max_pauses) == ("cyb_dp", 1.0, 3)
  assert c.loss.pause_warmup_steps == c.num_train_steps // 2
  assert ce_config.get_config().loss.pause_warmup_steps == 0
  assert pause_ce_config.get_config().loss.pause_warmup_steps == 0
  e = experiment_config.get_config("main")
  assert tuple(e.pause_warmup) == (0, e.run.num_train_steps // 2)
  runs = {r.name: r for r in experiment_plan.plan_runs(e)}
  assert experiment_plan.run_config(e, runs["cyb_dp_K3_s0"]).loss.pause_warmup_steps == 0
  assert experiment_plan.run_config(e, runs["pause_ce_K3_s0"]).loss.pause_warmup_steps == 0
  assert experiment_plan.run_config(e, runs["cyb_dp_w400_K3_s0"]).loss.pause_warmup_steps == 400


def _finetune_text(tmp_path) -> str:
  """A small English-like text of 60 paragraphs (the fine-tuning data of the smoke tests)."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  words = ["the", "cat", "cats", "sat", "on", "mats", "dog", "ran", "won't", "didn't"]
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n\n".join(" ".join(rng.choice(words, size=20)) for _ in range(60)))
  return f"text:{corpus}"


def test_the_finetune_presets_fine_tune_every_loss_from_one_base():
  c = experiment_config.get_config("finetune")
  assert c.run.init_from is None and c.run.data.source is None  # both required
  assert all(c.run.model[f] is None for f in ("num_layers", "d_model", "vocab_size", "tie_embeddings"))
  steps = c.run.num_train_steps
  assert tuple(c.pauses) == (1,) and tuple(c.seeds) == (0, 1, 2)
  assert tuple(c.pause_warmup) == (0, steps // 2) and tuple(c.ce_budgets) == (2 * steps, 4 * steps)
  assert (c.run.model.dtype, c.run.loss.vocab_chunk, c.run.optimizer.weight_decay) == ("bfloat16", 8192, 0.0)
  c.run.init_from = "hf:/models/base"
  names = [r.name for r in experiment_plan.plan_runs(c) if r.seed == 0]
  w = steps // 2
  assert names == [
    "ce_s0",
    "pause_ce_K1_s0",
    "cyb_ap_K1_s0",
    f"cyb_ap_w{w}_K1_s0",
    "cyb_va_K1_s0",
    f"cyb_va_w{w}_K1_s0",
    "cyb_dp_K1_s0",
    f"cyb_dp_w{w}_K1_s0",
    f"ce_steps{2 * steps}_s0",
    f"ce_steps{4 * steps}_s0",
  ]
  for preset in ("finetune_gpu", "finetune_smoke"):
    other = experiment_config.get_config(preset)
    assert tuple(other.losses) == tuple(c.losses) and tuple(other.seeds) == (0,)
    assert tuple(other.ce_budgets) == (2 * other.run.num_train_steps, 4 * other.run.num_train_steps)
  assert experiment_config.get_config("finetune_smoke").run.init_from.startswith("hf:")


def test_the_base_is_evaluated_alike_whatever_the_grids_seeds():
  """Grids of other seeds in one out_dir (seeds 0, then 1 and 2) share the base's evaluation."""
  from cyb_jax.experiment import base as base_lib  # noqa: PLC0415

  first, later = experiment_config.get_config("finetune_smoke"), experiment_config.get_config("finetune_smoke")
  first.seeds, later.seeds = (0,), (1, 2)
  assert base_lib._eval_config(first).to_dict() == base_lib._eval_config(later).to_dict()


def test_the_finetune_preset_refuses_a_missing_base_and_a_second_one(tmp_path):
  c = experiment_config.get_config("finetune")
  c.out_dir = str(tmp_path / "out")
  c.run.data.source = "text:/x.txt"
  with pytest.raises(ValueError, match=r"run.init_from is required by the 'finetune' preset"):
    experiment.run_experiment(c)
  c.run.init_from = "hf:/models/base"
  c.from_ce = True
  with pytest.raises(ValueError, match=r"from_ce=True .* but run.init_from='hf:/models/base' names another base"):
    experiment.run_experiment(c)
  assert not (tmp_path / "out").exists()


def test_a_run_folder_base_gives_the_runs_its_tokenizer_and_architecture(tmp_path):
  from cyb_jax.configs import default as default_config  # pylint: disable=g-import-not-at-top
  from cyb_jax.experiment import base as base_lib  # pylint: disable=g-import-not-at-top
  from cyb_jax.training import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top

  base = tmp_path / "base_run"
  saved = default_config.get_config()
  saved.model.num_layers, saved.model.d_model, saved.model.vocab_size = 3, 96, 300
  base.mkdir()
  ckpt_lib.save_config(str(base), saved)
  (base / "tokenizer.model").write_bytes(b"")
  c = experiment_config.get_config("finetune")
  c.run.init_from, c.run.data.source = str(base), "text:/corpus_b.txt"
  done = base_lib.with_base(c)
  assert (done.run.model.num_layers, done.run.model.d_model, done.run.model.vocab_size) == (3, 96, 300)
  assert done.run.model.max_pauses == c.run.model.max_pauses and done.run.model.dtype == "bfloat16"  # the run's
  assert done.run.data.tokenizer == str(base / "tokenizer.model") and c.run.data.tokenizer == ""
  c.run.data.tokenizer = "/own.model"  # a tokenizer given is kept
  assert base_lib.with_base(c).run.data.tokenizer == "/own.model"
  c.run.init_from = "hf:/models/base"  # the trainer takes both from an hf: folder
  assert base_lib.with_base(c) is c
  c.run.init_from = str(tmp_path)
  with pytest.raises(ValueError, match=r"is not a cyb_jax run folder"):
    base_lib.with_base(c)


@pytest.mark.slow
def test_the_finetune_smoke_preset_runs_end_to_end_with_the_base_row(tmp_path):
  """The fine-tuning comparison on the tiny fixture: two seeds (for the paired table), ce, the
  pause losses and one longer ce budget; the base is evaluated once, before any fine-tuning."""
  c = experiment_config.get_config("finetune_smoke")
  c.out_dir = str(tmp_path / "out")
  c.run.data.source = _finetune_text(tmp_path)
  c.losses = ("ce", "pause_ce", "cyb_dp")
  c.seeds = (0, 1)
  c.ce_budgets = (8,)
  c.tagged_text = "/data/tagged.txt"
  results = experiment.run_experiment(c)
  assert set(results["rows"]) == {"ce", "pause_ce_K1", "cyb_dp_K1", "cyb_dp_w2_K1", "ce_steps8"}
  base = results["base"]
  assert base["label"] == "base (no fine-tuning)" and base["init_from"] == c.run.init_from
  assert base["train_tokens"] == 0 and base["expected_pauses"]["mean"] == 0
  assert base["nll_mix"]["mean"] == base["step0_nll"]["mean"] == base["threshold_nll"]["mean"]
  for key, r in results["rows"].items():
    gain = r["step0_nll"]["mean"] - r["threshold_nll"]["mean"]
    assert r["pausing_gain_threshold"]["mean"] == pytest.approx(gain, abs=1e-5), key
  assert results["rows"]["ce"]["pausing_gain_mix"]["mean"] == 0
  # The base row is the base LM's loss on the ce run's eval set: the fixture's own tensors,
  # evaluated outside the trainer's programs, agree.
  from cyb_jax import pretrained  # pylint: disable=g-import-not-at-top
  from cyb_jax.analysis import evaluation  # pylint: disable=g-import-not-at-top
  from cyb_jax.experiment import base as base_lib  # pylint: disable=g-import-not-at-top
  from cyb_jax.training import components  # pylint: disable=g-import-not-at-top

  ce_run = components.load_run(str(tmp_path / "out" / "runs" / "ce_s0"))
  base_params = pretrained.load_params(components.pretrained_path(ce_run.config), ce_run.model_cfg)
  again = evaluation.summarize(
    evaluation.eval_set_stats(ce_run.model_cfg, base_params, ce_run.data.eval_batches, ce_run.protocol).stats
  )
  assert base["nll_mix"]["mean"] == pytest.approx(again["nll_mix"], abs=1e-5)
  assert base_lib.read_base_eval(c.out_dir)["nll_mix"] == base["nll_mix"]["mean"]  # cached in out/base
  text = (tmp_path / "out" / "results.md").read_text()
  assert f"every run fine-tuned from `{c.run.init_from}`" in text
  assert "| base (no fine-tuning) | - |" in text
  assert "| step-0 nll | step-0 − threshold | step-0 − mix |" in text
  assert "## Data efficiency" in text and "| cyb_dp_w2_K1 vs ce |" in text
  assert "### Paired by seed" in text and "## ce by budget" in text
  assert "## Where each model pauses: words and part-of-speech tags" in text
  assert "--tagged_text=/data/tagged.txt" in text
