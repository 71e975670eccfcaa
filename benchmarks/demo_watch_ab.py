"""`stagetrace demo` with and without the watch's drift/quality rules (issue 18), for a
side-by-side timing (docs/benchmarks.md):

    /usr/bin/time .venv/bin/python benchmarks/demo_watch_ab.py on  OUT_DIR
    /usr/bin/time .venv/bin/python benchmarks/demo_watch_ab.py off OUT_DIR

``on`` is the demo as it is; ``off`` drops the two model rules from the watch's rules
and the early reference-profile build. Alternate the two on a shared machine and compare
medians; ``OUT_DIR/run/run.json`` has each step's time and the alerts that fired.
"""

from __future__ import annotations

import sys


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("on", "off"):
        raise SystemExit("usage: demo_watch_ab.py on|off OUT_DIR")
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "off":
        from stagetrace.demo import runner
        from stagetrace.incidents import demo

        demo.DEMO_RULES_TOML = demo.DEMO_RULES_TOML[:demo.DEMO_RULES_TOML.index("# The model's inputs against")]

        class _NoReference:
            result = None

            def stop(self) -> None:
                pass

        runner._reference_when_clean_ends = lambda *a, **k: _NoReference()
    from stagetrace.cli import main as cli_main
    cli_main(["demo", "--no-progress", "--out", out])


if __name__ == "__main__":
    main()
