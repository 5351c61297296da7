r"""Samples from a trained run and shows where the model paused (``cyb-generate``).

  cyb-generate --workdir=/tmp/cyb_default --prompt=';12+34=' --max_new_tokens=24
  cyb-generate --workdir=/tmp/text_run --prompt='The cat' --halting=sample \
      --temperature=0.8 --num_samples=3

Each generated token is preceded by one "·" per pause the model took before emitting it;
pause counts follow each sample.
"""

from absl import app
from absl import flags

from cyb_jax.model import samples
from cyb_jax.model.decode import HALTING_POLICIES
from cyb_jax.training import components

_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (as given to cyb-train).", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_PROMPT = flags.DEFINE_string("prompt", "", 'Prompt text (text data: "" starts a fresh document).')
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate.")
_HALTING = flags.DEFINE_enum("halting", "threshold", HALTING_POLICIES, "When to stop pausing.")
_THRESHOLD = flags.DEFINE_float("threshold", 0.5, "threshold halting: answer once P(<don't know>) <= this.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = argmax answers, > 0 = sample at this temperature.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Continuations of the prompt, decoded as one batch.")


def generate_from_run(workdir: str, prompt: str, *, step: int | None = None, **sampling) -> str:
  """Loads a run and returns its pause-marked samples (see samples.sample_with_pauses for ``sampling``)."""
  run = components.load_run(workdir, step)
  return samples.sample_with_pauses(run.model_cfg, run.params, run.data.info, prompt, **sampling)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  print(
    generate_from_run(
      _WORKDIR.value,
      _PROMPT.value,
      step=_STEP.value,
      num_samples=_NUM_SAMPLES.value,
      max_new_tokens=_MAX_NEW_TOKENS.value,
      halting=_HALTING.value,
      threshold=_THRESHOLD.value,
      temperature=_TEMPERATURE.value,
      seed=_SEED.value,
    )
  )


def run():
  """The ``cyb-generate`` entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
