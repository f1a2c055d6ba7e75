"""The second process of ``llmguard demo`` on two cores (``run_demo(jobs=2)``).

It runs the steps that need no Llama testbed (``needs_testbed=False``) in-process, one after the
other, with one torch thread, while the demo's own process builds or reuses the Llama testbed and
runs the other steps. Its log lines go to stderr (prefixed, the demo shows them); its rows and
timings go to the JSON file the demo named. Not a user command: the demo starts it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path


class _LogLines:
    """A Progress that writes only the log lines, for the demo to forward."""

    def stage(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def log(self, message: str) -> None:
        from llmguard.cli.demo_runner import WORKER_LOG

        sys.stderr.write(f"{WORKER_LOG}{message}\n")
        sys.stderr.flush()

    def close(self) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    import torch

    from llmguard.cli.demo_runner import DemoContext, load_steps, run_steps

    config = json.loads((argv if argv is not None else sys.argv[1:])[0])
    torch.set_num_threads(1)
    steps = {k: v for k, v in load_steps().items() if k in config["steps"]}
    ctx = DemoContext(testbed=None, work=Path(config["work"]), device=config["device"], progress=_LogLines(),
                      isolated=config["isolated"], env={"OMP_NUM_THREADS": "1"})
    rows, timings, skipped = run_steps(ctx, steps, config["numbers"], where=" (2nd process)")
    out = Path(config["result"])
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({"rows": [asdict(r) for r in rows], "timings": [asdict(t) for t in timings],
                               "skipped": skipped}))
    tmp.replace(out)


if __name__ == "__main__":
    from llmguard import interrupts

    interrupts.install()
    main()
