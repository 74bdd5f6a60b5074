"""What dependencies cost a reaction: one incremental pass (a LOADED_STEP publish) over a
directory whose newest steps are a chain of sparse patches, each holding a manifest of
`--manifest-mib` MiB (prime-rl's sparse_update_manifest.json: one entry per patched tensor), all
held by the kept head, against the same tree with no dependency file at all (the baseline, in
the same run).

    .venv/bin/python bench/dependencies_bench.py [--chains 10,50] [--manifest-mib 1] [--out F]

Four figures per chain length: the pass with no dependency at all (baseline), the first pass
after adoption (which parsed each manifest once), later passes (the parsed manifests are kept by
file identity: janitor.fs.pointers), and passes with nothing kept (what it would cost without).
Every step is kept in both trees (--keep-last), so the passes read the same steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import machine, scratch, summary, write_json

from janitor.fs import pointers
from janitor.layouts import BUILT_IN
from janitor.model import ScanOptions
from janitor.ops.incremental import TrackedDirectory
from janitor.ops.managed import ManagedDirectory
from janitor.policy import Policy

LAYOUT = BUILT_IN["prime-rl-broadcasts"]


def manifest(step: int, base: int, size: int) -> bytes:
    """A sparse manifest of about `size` bytes: prime-rl's keys, sorted, one entry a tensor."""
    entry = {"name": "model.layers.0.mlp.down_proj.weight", "shape": [4096, 11008],
             "dtype": "bfloat16", "indices": "tensor_0.indices", "values": "tensor_0.values",
             "numel": 45088768, "changed_numel": 1234567, "checksum": 1234567890123}
    count = max(1, size // len(json.dumps(entry)))
    document = {"format": "prime-rl-sparse-update", "version": 1, "step": step,
                "base_step": base, "compute_dtype": "bfloat16", "compressed": False,
                "patch_file": "sparse_update_patch.safetensors", "tensors": [entry] * count,
                "stats": {}}
    return json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"


def build(root: Path, chain: int, size: int, with_manifests: bool) -> Path:
    """A full step 1, then `chain` patches each on the step before; the consumer at the head."""
    tree = root / "broadcasts"
    tree.mkdir(parents=True)
    for step in range(1, chain + 2):
        directory = tree / f"step_{step}"
        directory.mkdir()
        if step > 1 and with_manifests:
            (directory / "sparse_update_patch.safetensors").write_bytes(b"p" * 4096)
            (directory / "sparse_update_manifest.json").write_bytes(manifest(step, step - 1,
                                                                            size))
        else:
            (directory / "model.safetensors").write_bytes(b"w" * 4096)
        (directory / ".finished").touch()
    return tree


def passes(tree: Path, head: int, repeat: int) -> tuple[float, list[float]]:
    """The first pass after adoption, then `repeat` more, each after a fresh LOADED_STEP. Every
    step is kept by --keep-last in both trees (so a pass reads the same candidates and deletes
    nothing): what differs is the dependency files alone."""
    policy = Policy(progress="loaded-step", keep_last=head + 1)
    options = ScanOptions(layout=LAYOUT, complete_markers=LAYOUT.complete)
    times: list[float] = []
    with TrackedDirectory(ManagedDirectory(str(tree), dry_run=True, policy=policy,
                                           options=options)) as tracked:
        tracked.full_pass()
        for _ in range(repeat + 1):
            temporary = tree / ".LOADED_STEP.tmp"
            temporary.write_bytes(f"{head}\n".encode())
            temporary.rename(tree / "LOADED_STEP")
            started = time.perf_counter()
            tracked.changed_pass(["LOADED_STEP"])
            times.append(time.perf_counter() - started)
    return times[0], times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", default="10,50")
    parser.add_argument("--manifest-mib", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--out")
    args = parser.parse_args()
    size = int(args.manifest_mib * (1 << 20))
    results = []
    print(f"{'chain':>6} {'base p50 ms':>12} {'first ms':>9} {'later p50 ms':>13} "
          f"{'first/base':>10} {'later/base':>10} {'uncached p50 ms':>16}")
    for chain in (int(c) for c in args.chains.split(",")):
        with scratch("deps") as root:
            _, base = passes(build(root / "a", chain, size, False), chain + 1, args.repeat)
            tree = build(root / "b", chain, size, True)
            saved = pointers.SETTLE_NS
            pointers.SETTLE_NS = 0  # the files are seconds old here; in a run, minutes
            try:
                pointers._PARSED.clear()
                first, later = passes(tree, chain + 1, args.repeat)
            finally:
                pointers.SETTLE_NS = saved
            pointers._PARSED.clear()  # and with nothing kept (as for files younger than
            saved_entries = pointers.PARSED_ENTRIES  # SETTLE_NS)
            pointers.PARSED_ENTRIES = 0
            try:
                _, uncached = passes(tree, chain + 1, min(args.repeat, 5))
            finally:
                pointers.PARSED_ENTRIES = saved_entries
        b, la, un = (statistics.median(x) for x in (base, later, uncached))
        print(f"{chain:>6} {b * 1e3:>12.2f} {first * 1e3:>9.1f} {la * 1e3:>13.2f} "
              f"{first / b:>10.1f} {la / b:>10.2f} {un * 1e3:>16.1f}")
        results.append({"chain": chain, "manifest_bytes": size, "baseline": summary(base),
                        "first_s": first, "later": summary(later), "uncached": summary(uncached)})
    if args.out:
        write_json(args.out, {"benchmark": "dependencies", "machine": machine(),
                              "results": results})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
