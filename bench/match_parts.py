"""Where matching time goes, in one process: the numbers behind docs/benchmarks.md's
"What limits each number".

    python -m bench.match_parts [--rule sshd] LOG

Everything runs over the same lines, read beforehand in batches of 1,000 as the
detector gets them, best of 3:

- start-up: a fresh interpreter importing the matcher and compiling the rule;
- reading: the file into batches (`pyfilter match`'s reader);
- envelopes: each batch's headers read (`envelopes.read_batch`);
- search: the rule's one multi-line search of each batch's messages, with
  nothing done per match;
- bare regex: a two-pattern regex for just sshd's two failure lines of the
  stress log, one `finditer` over the whole file (what plain `re` can do at best);
- matching: `Matcher.match_batch`, then the same with the connection state
  (`decide`) and then all per-match work (`judge`) replaced by nothing, so the
  differences are what those cost.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

from pyfilter.cli.matching import load_rules, read_batches
from pyfilter.detector.matching import Matcher, envelopes
from pyfilter.detector.matching.compiled import CompiledRule
from pyfilter.detector.matching.connections import Connections

BARE = re.compile(r"^(\w{3} [ \d]\d \d\d:\d\d:\d\d) \S+ sshd\[(\d+)\]: (?:Failed \S+ for (?:invalid user )?(.*) "
                  r"from (\S+) port \d+ ssh2|error: PAM: Authentication failure for (.*) from (\S+))$", re.M)
STARTUP = ("from pyfilter.cli.matching import load_rules; from pyfilter.detector.matching import Matcher; "
           "Matcher(load_rules(None, {rule!r}))")


def best(work, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", default="sshd")
    parser.add_argument("log")
    args = parser.parse_args()

    startup = best(lambda: subprocess.run([sys.executable, "-c", STARTUP.format(rule=args.rule)], check=True))
    reading = best(lambda: list(read_batches(args.log)))
    batches = list(read_batches(args.log))
    blocks = ["\n" + "\n".join(envelopes.read_batch(b).messages) for b in batches]
    with open(args.log, encoding="utf-8", errors="replace") as f:
        whole = f.read()
    rules = load_rules(None, args.rule)
    (compiled,) = Matcher(rules).rules
    now = time.time()

    def match_all() -> None:
        matcher = Matcher(rules)  # fresh connection state each time
        for batch in batches:
            matcher.match_batch(batch, None, now)

    rows = [("start-up (imports, catalog, rule)", startup), ("reading the file into batches", reading),
            ("envelopes alone", best(lambda: [envelopes.read_batch(b) for b in batches])),
            ("the rule's search of the messages alone",
             best(lambda: [None for b in blocks for _ in compiled.block_regex.finditer(b)])),
            ("bare two-pattern regex, whole file", best(lambda: [None for _ in BARE.finditer(whole)])),
            ("match_batch", best(match_all))]
    decide, judge = Connections.decide, CompiledRule.judge
    try:
        Connections.decide = lambda self, *a: None  # type: ignore[method-assign]
        rows.append(("match_batch without connection state", best(match_all)))
        CompiledRule.judge = lambda self, *a: None  # type: ignore[method-assign]
        rows.append(("match_batch without any per-match work", best(match_all)))
    finally:
        Connections.decide, CompiledRule.judge = decide, judge  # type: ignore[method-assign]
    print(f"{args.log}: {sum(map(len, batches)):,} lines, rule {args.rule}, best of 3")
    for name, seconds in rows:
        print(f"  {name:42} {seconds:6.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
