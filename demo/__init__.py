"""The live demo of ckpt-janitor (the README's first command): `python -m demo`."""
