r"""Exports a trained CYB run as a Hugging Face-format folder (``cyb-export``).

  cyb-export --workdir=/tmp/ft --out=/tmp/ft_hf

Writes config.json (the base architecture plus K and the pause layout), model.safetensors
(the base tensors under their original names, plus the pause and <don't know> tensors) and,
when the run used a pretrained tokenizer folder, its tokenizer files; `cyb_jax.pretrained.load`
reads the folder back with identical logits.
"""

from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (as given to cyb-train).", required=True)
_OUT = flags.DEFINE_string("out", None, "Output folder (local or gs://).", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")


def export_run(workdir: str, out: str, *, step: int | None = None) -> str:
  """Loads a run and writes it to ``out`` as a Hugging Face-format folder; returns ``out``."""
  from cyb_jax import pretrained  # pylint: disable=g-import-not-at-top
  from cyb_jax.training import components  # pylint: disable=g-import-not-at-top

  run = components.load_run(workdir, step)
  tokenizer_folder = components.pretrained_path(run.config) or None
  pretrained.save(out, run.model_cfg, run.params, copy_files_from=tokenizer_folder)
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  print(f"Wrote {export_run(_WORKDIR.value, _OUT.value, step=_STEP.value)}.")


def run():
  """The ``cyb-export`` entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
