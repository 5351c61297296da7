"""The CYB comparison: train the five losses on the same data, evaluate alike, compare.

``run_experiment(config)`` trains every (loss, K, seed) run of ``config`` with
:func:`cyb_jax.training.train.train_and_evaluate` (each in ``<out_dir>/runs/<name>``; a finished
run is reused, an interrupted one resumes), optionally fine-tuning all of them from one
shared ``ce`` checkpoint per seed (the paper's setting), then writes
``results.json``, ``results.md`` and plots to ``out_dir``. With ``run.init_from`` (the
``finetune`` presets) every run fine-tunes from that base instead, and the base's own
evaluation at step 0 is a row of the results.

The plan of runs is :mod:`cyb_jax.experiment.plan`, the base model
:mod:`cyb_jax.experiment.base`, the data-efficiency maths
:mod:`cyb_jax.experiment.efficiency`, the figures :mod:`cyb_jax.experiment.results`, and
results.md :mod:`cyb_jax.experiment.results_md`.

The package `cyb_jax.experiment` is the loss comparison: `plan` (its runs), `base` (the base
model of a fine-tuning comparison), this module
(running them), `results`, `results_md` and `plots` (results.json, results.md, plots),
`efficiency` (data-efficiency maths) and `analyze_run` (a run folder analysed,
`cyb-analyze`). It may import everything but `cli`.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
from absl import logging

import cyb_jax
from cyb_jax import files
from cyb_jax import metrics_writer
from cyb_jax.experiment import base as base_lib
from cyb_jax.experiment import plan as plan_lib
from cyb_jax.experiment import results as results_lib
from cyb_jax.experiment import results_md
from cyb_jax.training import checkpoint as ckpt_lib
from cyb_jax.training import components
from cyb_jax.training import train


def _is_finished(workdir: str, num_train_steps: int) -> bool:
  """Whether the run in ``workdir`` has its final evaluation."""
  _, evals = metrics_writer.train_and_eval_rows(workdir)
  return bool(evals) and evals[-1]["step"] == num_train_steps


def _train(config: ml_collections.ConfigDict, workdir: str, name: str, timings: dict[str, float]) -> bool:
  """Trains (or resumes) one run; records its seconds in ``timings`` unless it was finished.

  A resumed run records the seconds of this resumption only.

  Returns:
    False when SIGTERM stopped the run (it saved a checkpoint), True when it completed.
  """
  if (files.resolve(workdir) / ckpt_lib.CONFIG_FILE).exists():
    plan_lib.check_same_run(components.upgrade_legacy_config(ckpt_lib.load_config(workdir)), config, workdir)
  finished = _is_finished(workdir, config.num_train_steps)
  start = time.perf_counter()
  completed = train.train_and_evaluate(config, workdir)["stopped"] == "completed"
  if not finished:
    timings[name] = time.perf_counter() - start
  return completed


def run_experiment(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Trains every run, then writes ``results.json``, ``results.md`` and plots to ``out_dir``.

  A SIGTERM (preemption) stops the run in progress with a checkpoint and ends the
  experiment there: the same command resumes it.

  Returns:
    The results dict written to ``results.json``, or ``{"stopped": "preempted", "run":
    name}`` when SIGTERM stopped run ``name``.
  """
  out_dir = os.fspath(files.resolve(config.out_dir))
  specs = plan_lib.plan_runs(config)
  config = base_lib.with_base(config)  # a run-folder init_from: its tokenizer and architecture
  if config.summarise_only:
    return write_results(config, specs, out_dir, {})
  for spec in specs:
    components.validate_all(plan_lib.run_config(config, spec))
  (files.resolve(out_dir) / "runs").mkdir(parents=True, exist_ok=True)
  base_lib.evaluate_base(config, out_dir)  # the base at step 0, once, before any fine-tuning
  timings = {}
  ce_init = {}
  if config.from_ce:
    for seed in config.seeds:
      base = ml_collections.ConfigDict(copy.deepcopy(config.run.to_dict()))
      base.seed = seed
      base.loss.name = "ce"
      base.loss.pause_warmup_steps = 0
      base.model.max_pauses = 0
      base.num_train_steps = config.ce_init_steps
      base.write_report = False
      workdir = os.path.join(out_dir, "runs", f"ce_init_s{seed}")
      if not _train(base, workdir, f"ce_init_s{seed}", timings):
        return _preempted(out_dir, timings, f"ce_init_s{seed}")
      ce_init[seed] = workdir
  for spec in specs:
    workdir = os.path.join(out_dir, "runs", spec.name)
    c = plan_lib.run_config(config, spec)
    if config.from_ce:
      c.init_from = ce_init[spec.seed]
    logging.info("Run %s -> %s", spec.name, workdir)
    if not _train(c, workdir, spec.name, timings):
      return _preempted(out_dir, timings, spec.name)
    _save_timings(out_dir, timings)
  return write_results(config, specs, out_dir, timings)


def _preempted(out_dir: str, timings: dict[str, float], name: str) -> dict[str, Any]:
  _save_timings(out_dir, timings)
  logging.warning("SIGTERM stopped run %s (checkpoint saved); run the same command to resume.", name)
  return {"stopped": "preempted", "run": name}


def write_results(config, specs: Sequence[plan_lib.RunSpec], out_dir: str, timings: dict[str, float]) -> dict[str, Any]:
  """Summarises the finished runs into results.json / results.md / plots."""
  done = [s for s in specs if _is_finished(os.path.join(out_dir, "runs", s.name), plan_lib.num_train_steps(config, s))]
  missing = [s.name for s in specs if s not in done]
  if not done:
    raise ValueError(f"no finished run in {out_dir}/runs: nothing to summarise.")
  base = base_lib.evaluate_base(config, out_dir)  # cached by run_experiment; None without init_from
  results = results_lib.summarise_runs(config, done, out_dir, _save_timings(out_dir, timings), base)
  results["missing_runs"] = missing
  files.write_json(os.path.join(out_dir, "results.json"), results, indent=2, default=float)
  results_md.write_results_md(config, results, out_dir)
  return results


def _save_timings(out_dir: str, timings: dict[str, float]) -> dict[str, float]:
  """Merges ``timings`` into ``out_dir``/timings.json; returns the merged seconds per run."""
  merged = dict(_read_timings(out_dir), **timings)
  files.write_json(os.path.join(out_dir, "timings.json"), merged, indent=2, default=float)
  return merged


def _read_timings(out_dir: str) -> dict[str, float]:
  """Seconds per run: timings.json, else the time from a run's config.json being written
  to its newest checkpoint (an estimate that includes any pause between a stop and a resume)."""
  timings = {}
  runs = files.resolve(out_dir) / "runs"
  for run in sorted(runs.iterdir()) if runs.is_dir() else ():
    config_file = run / ckpt_lib.CONFIG_FILE
    checkpoints = ckpt_lib.checkpoint_dir(os.fspath(run))
    saved = list(checkpoints.iterdir()) if config_file.exists() and checkpoints.is_dir() else []
    if saved:
      newest = max(c.stat().mtime for c in saved)
      seconds = newest - config_file.stat().mtime
      timings[run.name] = seconds if seconds > 0 else float("nan")  # config rewritten by a resume
  path = files.resolve(out_dir) / "timings.json"
  if path.exists():
    timings.update(files.read_json(path))
  return timings


# Submodules reached as attributes (``cyb_jax.experiment.x``) without importing them first (PEP 562).
__getattr__ = cyb_jax.lazy_submodules(
  globals(), ("plan", "base", "results", "results_md", "plots", "efficiency", "analyze_run")
)
