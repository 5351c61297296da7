"""``results.md`` of the CYB comparison: the results dict (:mod:`cyb_jax.experiment.results`)
as markdown tables, and its plots (:mod:`cyb_jax.experiment.plots`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from cyb_jax import files
from cyb_jax.experiment import plots as experiment_plots


def _two_digits(value: float | None) -> str:
  return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"


def _pm(stat: dict[str, float], digits: int = 3, *, sign: bool = False) -> str:
  """``mean ± std`` (``mean`` for one value); ``sign``: with its sign, a rounded 0 as ``+0``."""
  value = stat["mean"]
  if sign and abs(value) < 0.5 * 10**-digits:
    value = 0.0
  mean = f"{value:{'+' if sign else ''}.{digits}f}"
  if stat["n"] > 1:
    return f"{mean} ± {stat['std']:.{digits}f}"
  return mean


def _names(what: str, names: Sequence[str]) -> str:
  """``what: `a`, `b`.``: a sentence listing row or run names."""
  return f"{what}: " + ", ".join(f"`{n}`" for n in names) + "."


def _paired_lines(paired: dict[str, Any]) -> list[str]:
  """The "paired by seed" section of results.md (none with one seed per row)."""
  paired = {pair: p for pair, p in paired.items() if len(p["seeds"]) > 1}
  if not paired:
    return []
  lines = [
    "",
    "### Paired by seed",
    "",
    "Final eval nll_mix of each CYB row minus its baseline's, seed by seed (same seed: same "
    "initialisation and data order); < 0: the CYB row is better.",
    "",
    "| pair | seeds | mean difference | per seed | CYB better in |",
    "|---|---|---|---|---|",
  ]
  for pair, p in paired.items():
    per_seed = " / ".join(f"{d:+.3f}" for d in p["differences"])
    lines.append(
      f"| {pair} | {len(p['seeds'])} | {p['mean']:+.3f} | {per_seed} | {p['a_better']} of {len(p['seeds'])} |"
    )
  return lines


def _ce_budget_lines(by_budget: dict[str, Any]) -> list[str]:
  """The "ce by budget" section of results.md (none without longer ce runs)."""
  if not by_budget:
    return []
  lines = [
    "",
    "## ce by budget",
    "",
    "ce trained for longer budgets, each run with its own learning-rate schedule, seeds as the "
    "grid's. Drop: how much its final loss falls per doubling of the budget (near 0: ce's loss "
    "has flattened).",
    "",
    "| ce row | steps | train tokens | seeds | final nll_mix | drop per doubling |",
    "|---|---|---|---|---|---|",
  ]
  prev = None
  for p in by_budget["points"]:
    drop = (
      "-"
      if prev is None
      else f"{(prev['nll_mix']['mean'] - p['nll_mix']['mean']) / math.log2(p['tokens'] / prev['tokens']):.4f}"
    )
    lines.append(
      f"| {p['row']} | {p['steps']} | {p['tokens']:,.0f} | {p['nll_mix']['n']} | {_pm(p['nll_mix'])} | {drop} |"
    )
    prev = p
  lines += [
    "",
    "Tokens ce needs, across its budgets (its grid run's eval curve, then the longer runs' final "
    "losses, linear in log tokens), to reach each model's final loss, over that model's tokens "
    "(`>=`: no budget got there). The paper's target for CYB: 3.",
    "",
    "| run | final nll_mix | train tokens | ce tokens to that loss | ratio |",
    "|---|---|---|---|---|",
  ]
  for key, v in by_budget["vs"].items():
    needed = "never" if v["tokens_baseline"] is None else f"{v['tokens_baseline']:,.0f}"
    lines.append(
      f"| {key} | {v['final_loss']:.4f} | {v['tokens']:,.0f} | {needed} | "
      f"{'>= ' if v['lower_bound'] else ''}{v['ratio']:.2f} |"
    )
  if by_budget.get("partial"):
    lines += ["", _names("Left out (not finished for every seed of `ce`)", by_budget["partial"])]
  return lines


WORDS_DIR = "words"  # <out_dir>/words: tools/words_summary.py's side-by-side word view
_WORD_EVAL_BATCHES = 64  # cyb-analyze --eval_batches of the word view: rare words need many positions


def _word_view_lines(config, results: dict[str, Any], out_dir: str) -> list[str]:
  """The "words and part-of-speech tags" section of a text comparison: the commands that write
  the word view of each row's first-seed run (``cyb-analyze``) and put them side by side
  (``tools/words_summary.py``, needs ``--tagged_text``), and links to the views already
  written. None for data that is not text."""
  source = results.get("data") or ""
  if not source.startswith("text:"):
    return []
  tagged = config.get("tagged_text") or ""
  runs = {key: (f"{key}_s{r['seeds'][0]}", r["steps"]) for key, r in results["rows"].items() if r.get("budget") is None}
  analysis = {
    key: os.path.join(out_dir, "runs", run, "analysis", f"step_{steps}_eval{_WORD_EVAL_BATCHES}")
    for key, (run, steps) in runs.items()
  }
  lines = [
    "",
    "## Where each model pauses: words and part-of-speech tags",
    "",
    "`cyb-analyze` writes a text run's word view (`words.md`: word-final against word-internal "
    "pieces, the first piece of contractions such as `wasn` and `didn`, ambiguous pieces such "
    "as `won`; with `--tagged_text`, the text's tagged copy (every word as word/tag), pauses by "
    "part-of-speech tag, e.g. plural nouns `nns` against singular `nn`), and "
    "`tools/words_summary.py` sets the models side by side. For the first seed of every row:",
    "",
    "```bash",
    f"for run in {' '.join(run for run, _ in runs.values())}; do",
    f"  cyb-analyze --workdir={os.path.join(out_dir, 'runs')}/$run --eval_batches={_WORD_EVAL_BATCHES}"
    + (f" --tagged_text={tagged}" if tagged else " --tagged_text=TAGGED_COPY"),
    "done",
    "python tools/words_summary.py "
    + " ".join(f'--analysis="{key}:{path}"' for key, path in analysis.items())
    + f" --out={os.path.join(out_dir, WORDS_DIR)}",
    "```",
  ]
  written = [key for key, path in analysis.items() if files.resolve(os.path.join(path, "words.md")).exists()]
  if written:
    lines += [
      "",
      "Written: " + ", ".join(f"[{key}]({os.path.relpath(analysis[key], out_dir)}/words.md)" for key in written) + ".",
    ]
  summary = files.resolve(os.path.join(out_dir, WORDS_DIR, "words_summary.md"))
  if summary.exists():
    lines += ["", f"Side by side: [{WORDS_DIR}/words_summary.md]({WORDS_DIR}/words_summary.md).", ""]
    if (summary.parent / "pause_rate_by_tag.png").exists():
      lines.append(f"![pause_rate_by_tag.png]({WORDS_DIR}/pause_rate_by_tag.png)")
  return lines


def write_results_md(config, results: dict[str, Any], out_dir: str) -> str:
  """``results.md`` with the tables and ``plots/*.png``; returns its path."""
  plots = experiment_plots.write_plots(results, out_dir)
  init_from = results.get("init_from")
  if init_from:
    start = f"every run fine-tuned from `{init_from}`"
  else:
    start = "fine-tuned from a shared ce checkpoint" if results["from_ce"] else "from scratch"
  lines = [
    f"# CYB comparison ({results['preset']})",
    "",
    f"Data: `{results['data']}`; {start};"
    f" eval: mix protocol (`nll_mix`; step 0 for ce, step K for pause_ce) and "
    f"threshold(tau={config.run.eval.tau}). Mean ± std over seeds.",
    "",
    "What pausing buys: the model's own step-0 loss (its answer without a pause) minus its loss "
    "with its own pauses, at threshold (`step-0 − threshold`) and under the mix (`step-0 − mix`), "
    "beside its threshold pause rate; 0 for ce, > 0 when its pauses lower its loss. A CYB row "
    "ahead of ce with a gain near 0 owes its lead to what training the pause slots did to step 0, "
    "not to pausing. (pause_ce's loss reads step K only: its step-0 read-out is never trained.)",
    "",
    "| run | seeds | eval nll_mix | E[pauses] | compute/token | threshold nll | "
    "threshold acc | threshold pauses | step-0 nll | step-0 − threshold | step-0 − mix | "
    "train tokens | s/run |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  rows = list(results["rows"].items())
  if results.get("base"):
    rows.insert(0, (results["base"]["label"], results["base"]))
  for key, r in rows:
    seconds = r.get("seconds", float("nan"))
    lines.append(
      f"| {key} | {len(r['seeds']) if 'seeds' in r else '-'} | {_pm(r['nll_mix'])} | "
      f"{_pm(r['expected_pauses'], 2)} | {_pm(r['compute_mix'], 2)} | {_pm(r['threshold_nll'])} | "
      f"{_pm(r['threshold_accuracy'])} | {_pm(r['threshold_pauses'], 2)} | "
      f"{_pm(r['step0_nll'])} | {_pm(r['pausing_gain_threshold'], 3, sign=True)} | "
      f"{_pm(r['pausing_gain_mix'], 3, sign=True)} | {r['train_tokens']:,.0f} | "
      f"{'n/a' if math.isnan(seconds) else format(seconds, '.0f')} |"
    )
  if results.get("base"):
    lines += [
      "",
      f"`{results['base']['label']}`: the base model `{results['base']['init_from']}` evaluated once at "
      "step 0, before any fine-tuning, as the ce run (K = 0) starts: its loss on the held-out "
      "fine-tuning data.",
    ]
  lines += [
    "",
    "## Data efficiency",
    "",
    "Tokens the worse model needs to reach the better model's final eval loss, divided "
    "by the better model's tokens (seed-averaged curves; `>=` when it never got there, "
    "a lower bound at equal budgets). The last column makes the same comparison at the "
    "worse model's final loss, which the better one reaches.",
    "",
    "| pair | better | better's final loss | ratio | worse's final loss | ratio there |",
    "|---|---|---|---|---|---|",
  ]
  for pair, e in results["efficiency"].items():
    ratio = f"{'>= ' if e['lower_bound'] else ''}{e['ratio']:.2f}"
    lines.append(
      f"| {pair} | {e['better']} | {e['target_loss']:.4f} | {ratio} | "
      f"{e['worse_final_loss']:.4f} | {e['ratio_at_worse_final']:.2f} |"
    )
  lines += _paired_lines(results.get("paired") or {})
  lines += _ce_budget_lines(results.get("ce_budgets") or {})
  for key, p in results["pauses"].items():
    if "difficulty" in p:
      d = p["difficulty"]
      lines += [
        "",
        f"### Pauses by difficulty: {key}",
        "",
        f"Spearman(level, mean pauses) = {d['spearman_levels']:.2f}; "
        f"with E[pauses]: {d['spearman_levels_expected']:.2f}.",
        "",
        "| level | count | mean pauses | E[pauses] | acc step 0 | acc | gain |",
        "|---|---|---|---|---|---|---|",
      ]
      for g in d["levels"]:
        lines.append(
          f"| {g['name']} | {g['count']} | {g['mean_pauses']:.2f} | "
          f"{g['mean_expected_pauses']:.2f} | {g['accuracy_step0']:.3f} | "
          f"{g['accuracy']:.3f} | {g['gain']:+.3f} |"
        )
    elif "tokens" in p:
      lines += [
        "",
        f"### Tokens that pause most / least (after reading them): {key}",
        "",
        "| most | mean pauses | std | count | least | mean pauses | std | count |",
        "|---|---|---|---|---|---|---|---|",
      ]
      for a, b in zip(p["tokens"]["most_after"], p["tokens"]["least_after"]):
        lines.append(
          f"| `{a['name']}` | {a['mean_pauses']:.2f} | {a['std_pauses']:.2f} | "
          f"{a['count']} | `{b['name']}` | {b['mean_pauses']:.2f} | "
          f"{b['std_pauses']:.2f} | {b['count']} |"
        )
      if p["tokens"].get("ambiguous_after"):
        lines += [
          "",
          f"Most ambiguous contexts of {key} (highest step-0 NLL of the next "
          f"token); Spearman(step-0 NLL, mean pauses) over frequent tokens = "
          f"{_two_digits(p['tokens']['spearman_ambiguity'])}.",
          "",
          "| after | step-0 NLL | mean pauses | std | count | accuracy gain |",
          "|---|---|---|---|---|---|",
        ]
        for g in p["tokens"]["ambiguous_after"]:
          lines.append(
            f"| `{g['name']}` | {g['nll_step0']:.2f} | {g['mean_pauses']:.2f} | "
            f"{g['std_pauses']:.2f} | {g['count']} | {g['gain']:+.3f} |"
          )
  if results["sweeps"]:
    levels = next((list(e["mean_pauses_by_level"]) for e in results["sweeps"] if "mean_pauses_by_level" in e), [])
    lines += [
      "",
      "## Sweeps (one seed)",
      "",
      "Each swept run beside the main runs of the same seed (value `default`: the "
      "run config's own). Threshold pauses k* by level"
      + (f" ({' / '.join(levels)})" if levels else "")
      + ". Tokens ratio: the "
      "baseline's tokens over the CYB run's, each to reach the worse one's final "
      "loss (> 1: the CYB run needs fewer tokens).",
      "",
      "| run | field | value | eval nll_mix | E[pauses] | threshold acc | k* | "
      "Spearman(level, k*) | k* by level | tokens ratio vs ce | vs pause_ce |",
      "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in results["sweeps"]:
      by_level = " / ".join(f"{v:.2f}" for v in e.get("mean_pauses_by_level", {}).values())
      lines.append(
        f"| {e['name']} | {e['field'] or '-'} | "
        f"{'default' if e['value'] is None else e['value']} | {e['nll_mix']:.4f} | "
        f"{e['expected_pauses']:.2f} | {e['threshold_accuracy']:.3f} | "
        f"{e['threshold_pauses']:.2f} | "
        f"{_two_digits(e.get('spearman_levels'))} | "
        f"{by_level or 'n/a'} | {_two_digits(e.get('vs_ce'))} | {_two_digits(e.get('vs_pause_ce'))} |"
      )
  lines += _word_view_lines(config, results, out_dir)
  if results.get("missing_runs"):
    lines += ["", _names("Runs not finished (left out of every table)", results["missing_runs"])]
  lines += ["", "## Plots", ""] + [f"![{os.path.basename(p)}](plots/{os.path.basename(p)})" for p in plots]
  path = os.path.join(out_dir, "results.md")
  files.write_text(path, "\n".join(lines) + "\n")
  return path
