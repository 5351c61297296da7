"""Run configs, usable as files: ``--config=cyb_jax/configs/default.py`` (or ``config_path("default")``).

``base.py`` lists every field with a comment; ``default.py`` is the embedded task with CYB-DP;
``ce.py``, ``pause_ce.py``, ``cyb_ap.py``, ``cyb_va.py`` switch the loss; ``text.py`` (your own
text: ``--config.data.source=text:PATH``), ``tfds_lm.py`` (a prepared TFDS dataset) and
``experiment.py`` (the loss comparison, with presets after ``:``).
"""

import os


def config_path(name: str) -> str:
  """The file of the shipped config ``name`` (e.g. ``"default"``), wherever the package is."""
  path = os.path.join(os.path.dirname(__file__), f"{name}.py")
  if not os.path.exists(path):
    shipped = sorted(
      f[:-3] for f in os.listdir(os.path.dirname(__file__)) if f.endswith(".py") and not f.startswith("_")
    )
    raise ValueError(f"no shipped config {name!r}; there are {shipped}.")
  return path
