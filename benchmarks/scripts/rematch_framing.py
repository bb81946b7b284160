"""Rescore a finished `dfx protocol` run's held-out generator rows with the framing-matched AUC.

    python benchmarks/scripts/rematch_framing.py RUN OUT

Reads RUN/protocol.json's recorded config (so options that no longer have a flag keep their
value), writes the new report to OUT. Hard-link RUN's folds/ and cache/ into OUT first
(`cp -al RUN/folds RUN/cache OUT/`): folds whose key matches are reused, not retrained.
Laundering is turned off (it is not part of a fold's key); the shortcut baseline is on.
"""

import json
import sys
from pathlib import Path

from dfx.trainer import protocol


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    run, out = argv
    config = json.loads((Path(run) / "protocol.json").read_text())["config"]
    config.update(out=out, groups=["stylegan2", "sd21", "progan"], launder=False, baseline=True, progress=False)
    protocol.run(protocol.ProtocolConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
