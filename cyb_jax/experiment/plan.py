"""The runs of the CYB comparison: which (loss, K, seed) runs, with which training config.

:func:`plan_runs` lists the main grid, the longer ``ce`` runs of ``ce_budgets`` and the
one-seed sweeps of an experiment config,
:func:`run_config` gives one run's training config, and :func:`check_same_run` refuses to
reuse a run folder trained with another config.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import ml_collections

from cyb_jax import losses

CYB_LOSSES = ("cyb_ap", "cyb_va", "cyb_dp")
BASELINES = ("ce", "pause_ce")


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One training run of the experiment."""

  name: str
  loss: str
  max_pauses: int
  seed: int
  overrides: tuple[tuple[str, Any], ...] = ()  # a sweep's (dotted config field, value)
  sweep: str = ""  # "" for the main comparison, else the swept field
  warmup: int = 0  # loss.pause_warmup_steps of the run (0: none; baselines and sweeps: 0)
  budget: int | None = None  # num_train_steps of a longer ce run (ce_budgets); None: the grid's

  @property
  def group(self) -> str:
    """The row of the results this run is a seed of: ``ce``, ``{loss}_K{k}`` or, with a pause
    warm-up of W steps, ``{loss}_w{W}_K{k}``; a longer ce run of B steps: ``ce_steps{B}``."""
    if self.budget is not None:
      return f"ce_steps{self.budget}"
    if self.loss == "ce":
      return "ce"
    return f"{self.loss}_w{self.warmup}_K{self.max_pauses}" if self.warmup else (f"{self.loss}_K{self.max_pauses}")


def _fmt(value: Any) -> str:
  return f"{value:g}" if isinstance(value, float) else str(value)


def plan_runs(config: ml_collections.ConfigDict) -> list[RunSpec]:
  """Every run of the experiment: the main grid, the longer ce runs, then the one-seed sweeps."""
  unknown = sorted(set(config.losses) - set(losses.LOSSES))
  if unknown:
    raise ValueError(f"losses {unknown} are unknown; allowed: {sorted(losses.LOSSES)}.")
  if not config.seeds:
    raise ValueError("seeds is empty: give at least one seed.")
  init_from = config.run.get("init_from", "")
  if init_from is None:
    raise ValueError(
      f"run.init_from is required by the {config.name!r} preset: the base every run fine-tunes from, "
      "--config.run.init_from=hf:PATH (a Hugging Face-format folder, local or gs://) or a cyb_jax run folder."
    )
  if config.from_ce and init_from:
    raise ValueError(
      f"from_ce=True fine-tunes every run from a shared ce checkpoint per seed, but run.init_from={init_from!r} "
      "names another base: set one of them (from_ce=False to fine-tune from run.init_from)."
    )
  if any(k < 1 for k in config.pauses):
    raise ValueError(f"pauses={tuple(config.pauses)} must all be >= 1 (ce is the K = 0 run).")
  warmups = tuple(config.pause_warmup)
  if not warmups or any(isinstance(w, bool) or not isinstance(w, int) or w < 0 for w in warmups):
    raise ValueError(
      f"pause_warmup={warmups} must be a non-empty tuple of ints >= 0 (0: the CYB losses without a warm-up)."
    )
  budgets = tuple(config.ce_budgets)
  steps = config.run.num_train_steps
  if any(isinstance(b, bool) or not isinstance(b, int) or b <= steps for b in budgets) or len(set(budgets)) < len(
    budgets
  ):
    raise ValueError(
      f"ce_budgets={budgets} must be distinct ints above run.num_train_steps={steps} "
      f"(longer ce runs, e.g. ({2 * steps}, {4 * steps})), or () for none."
    )
  if budgets and config.run.optimizer.schedule_steps is not None:
    raise ValueError(
      f"ce_budgets={budgets} gives each longer ce run its own schedule, but "
      f"run.optimizer.schedule_steps={config.run.optimizer.schedule_steps} fixes one for every run: "
      "set it to None, or ce_budgets to ()."
    )
  if budgets and "ce" not in config.losses:
    raise ValueError(f"ce_budgets={budgets} are longer ce runs, but losses={tuple(config.losses)} has no 'ce'.")
  runs = []
  for seed in config.seeds:
    if "ce" in config.losses:
      runs.append(RunSpec(f"ce_s{seed}", "ce", 0, seed))
    for k in config.pauses:
      for loss in config.losses:
        if loss == "ce":
          continue
        for w in warmups if loss in CYB_LOSSES else (0,):
          spec = RunSpec("", loss, k, seed, warmup=w)
          runs.append(dataclasses.replace(spec, name=f"{spec.group}_s{seed}"))
  for seed in config.seeds:
    for budget in budgets:
      # Its own learning-rate schedule over B steps (schedule_steps is None), the grid's
      # evaluation and checkpoint intervals: ce's final loss at B steps, and its curve to there.
      runs.append(RunSpec(f"ce_steps{budget}_s{seed}", "ce", 0, seed, budget=budget))
  seed = config.seeds[0]
  for field, values in (
    ("loss.gamma", config.sweep.gamma),
    ("loss.prior_continuation", config.sweep.prior_continuation),
    ("loss.budget", config.sweep.budget),
  ):
    loss = {"loss.gamma": "cyb_ap", "loss.prior_continuation": "cyb_va", "loss.budget": "cyb_dp"}[field]
    for value in values:
      for k in config.pauses:
        runs.append(
          RunSpec(
            f"{loss}_K{k}_s{seed}_{field.split('.')[1]}{_fmt(value)}", loss, k, seed, ((field, value),), sweep=field
          )
        )
  return runs


def num_train_steps(config: ml_collections.ConfigDict, spec: RunSpec) -> int:
  """The steps ``spec`` trains for: its budget (a longer ce run), else the template's."""
  return config.run.num_train_steps if spec.budget is None else spec.budget


def run_config(config: ml_collections.ConfigDict, spec: RunSpec) -> ml_collections.ConfigDict:
  """The training config of one run: the shared template plus the run's loss, K, seed,
  warm-up, steps and sweep value."""
  c = copy.deepcopy(config.run)
  c.unlock()
  c.seed = spec.seed
  c.num_train_steps = num_train_steps(config, spec)
  c.loss.name = spec.loss
  c.loss.pause_warmup_steps = spec.warmup  # the run's own W, whatever the template says
  c.model.max_pauses = spec.max_pauses
  c.update_from_flattened_dict(dict(spec.overrides))
  return c


# Run fields that do not change what a run computes: a finished run may be reused with others.
_PRESENTATION_FIELDS = ("progress_bar", "write_report", "keep_checkpoints", "log_every_steps")


def _flat(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Dotted path -> JSON value of every leaf (tuples as lists, as config.json stores them)."""
  out = {}

  def walk(node, prefix):
    for key, value in node.items():
      if isinstance(value, dict):
        walk(value, f"{prefix}{key}.")
      else:
        out[prefix + key] = value

  walk(json.loads(config.to_json_best_effort()), "")
  return out


def check_same_run(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises ValueError if ``workdir`` holds a run of another config (it would be reused).

  Fields only one side has (added to the config since the run was made) are not compared.
  """
  old, new = _flat(saved), _flat(config)
  diffs = [
    f"{k}: {old[k]!r} there, {new[k]!r} here"
    for k in sorted(set(old) & set(new))
    if old[k] != new[k] and k not in _PRESENTATION_FIELDS
  ]
  if diffs:
    raise ValueError(
      f"{workdir} holds a run of another config ({'; '.join(diffs)}): "
      "use another out_dir, or delete that run to retrain it."
    )
