r"""Where does a trained model pause? Per-token and per-difficulty pause statistics (``cyb-analyze``).

  cyb-analyze --workdir=/tmp/cyb_default
  cyb-analyze --workdir=/tmp/text_run --step=2000 --tau=0.3 --min_count=50 --top=30

Loads the run's checkpoint (the newest unless --step), runs the model on the run's eval set,
prints the tables and writes <out>/pause_stats.json, <out>/pause_stats.md and <out>/plots/.
"""

import os

from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (as given to cyb-train).", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_TAU = flags.DEFINE_float("tau", None, "Threshold on P(<don't know>) (default: the run's eval.tau).")
_OUT = flags.DEFINE_string("out", None, "Output folder (default: <workdir>/analysis/step_<step>).")
_MIN_COUNT = flags.DEFINE_integer("min_count", 20, "Fewest positions for a token to be ranked.")
_TOP = flags.DEFINE_integer("top", 20, "Tokens listed as most / least pausing.")


def analyze_run(workdir: str, *, step: int | None = None, tau: float | None = None,
                out: str | None = None, min_count: int = 20, top: int = 20) -> str:
  """Loads a run and writes its pause statistics; returns the markdown tables."""
  from cyb_jax import components  # pylint: disable=g-import-not-at-top
  from cyb_jax import files  # pylint: disable=g-import-not-at-top
  from cyb_jax import report  # pylint: disable=g-import-not-at-top
  run = components.load_run(workdir, step)
  protocol = run.protocol if tau is None else run.protocol._replace(tau=tau)
  out = out or os.path.join(workdir, "analysis", f"step_{run.step}")
  text = report.write_analysis(
      out, model_cfg=run.model_cfg, params=run.params, eval_batches=run.data.eval_batches,
      info=run.data.info, protocol=protocol, min_count=min_count, top=top,
      vocab_chunk=components.vocab_chunk(run.config),
      run={"workdir": os.fspath(files.resolve(workdir)), "step": run.step, "loss": run.config.loss.name,
           "max_pauses": run.model_cfg.max_pauses, "pause_layout": run.model_cfg.pause_layout})
  return f"{text}\n\nWrote {out}/pause_stats.json, {out}/pause_stats.md and {out}/plots/."


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  print(analyze_run(_WORKDIR.value, step=_STEP.value, tau=_TAU.value, out=_OUT.value,
                    min_count=_MIN_COUNT.value, top=_TOP.value))


def run():
  """The ``cyb-analyze`` entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
