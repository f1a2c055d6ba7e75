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

    from llmguard.cli.demo_runner import DemoContext, Unit, load_steps, run_units

    config = json.loads((argv if argv is not None else sys.argv[1:])[0])
    torch.set_num_threads(1)
    steps = load_steps()
    # in the order the demo gave (its schedule); a step registered only in the demo's process (a
    # test's) is left to that process
    units = [Unit(step, part, 0.0) for step, part in config["units"] if step in steps]
    out = Path(config["result"])
    skipped: dict[str, str] = {}
    done: list = []

    def report(running: list | None = None) -> None:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps({"results": [asdict(r) for r in done], "skipped": skipped, "running": running}))
        tmp.replace(out)

    class _Tracking(_LogLines):
        def stage(self, name: str, total: int | None = None) -> None:
            report(running=current[0])

    current: list = [None]

    def after_unit(results) -> None:
        done[:] = results
        report()

    def loader():
        from llmguard.testbed import build

        return build(config["testbed"], seed=config["seed"])  # waits for the demo's build (file lock), then reuses it

    ctx = DemoContext(testbed=None, work=Path(config["work"]), device=config["device"], progress=_Tracking(),
                      isolated=config["isolated"], env={"OMP_NUM_THREADS": "1"}, share_files=True, fresh=config["fresh"],
                      testbed_loader=loader)
    original_claim = ctx.claim

    def claim(key: str) -> bool:
        ok = original_claim(key)
        if ok:
            step, _, part = key.partition("@")
            current[0] = [step, part or None]
        return ok

    ctx.claim = claim  # type: ignore[method-assign]
    run_units(ctx, steps, units, config["numbers"], skipped, where=" (2nd process)", report=after_unit)
    report()


if __name__ == "__main__":
    from llmguard import interrupts

    interrupts.install()
    main()
