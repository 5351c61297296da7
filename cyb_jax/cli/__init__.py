"""Command-line programs of cyb_jax (each a `main(argv)` for absl and a `run()` entry point)."""
