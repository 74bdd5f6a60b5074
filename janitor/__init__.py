"""ckpt-janitor: deletes old checkpoint steps only after every consumer has loaded past them."""

__version__ = "0.1.0"
