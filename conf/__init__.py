"""The runner's Hydra configs, shipped inside the package as ``runner.conf``."""
