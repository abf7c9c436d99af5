"""bench/idle.py and bench/report.py: what idle reads from cgroups, and where each table goes in docs/benchmarks.md."""

from __future__ import annotations

import os

import pytest

from bench import idle, report


def test_this_process_cgroup_gives_cpu_time_and_memory():
    try:
        cgroup = idle.Cgroup.of(os.getpid())
        cpu, memory = cgroup.cpu_seconds(), cgroup.memory_bytes()
    except (OSError, KeyError) as exc:  # e.g. the root cgroup of v2, which has no memory.current
        pytest.skip(f"this process's cgroup has no CPU or memory accounting: {exc}")
    assert cpu > 0 and memory > 0


def test_idle_table_replaces_its_own_part_and_survives_the_main_benchmark(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## What limits each number\n\nnoise\n")
    idle.write_doc(doc, ["| first run |"])
    # Prose written around the generated table by hand stays as it is.
    doc.write_text(doc.read_text().replace("## Idle cost\n", "## Idle cost\n\nbefore and after\n"))
    idle.write_doc(doc, ["| second run |"])
    text = doc.read_text()
    assert "| first run |" not in text and "| second run |" in text and "before and after" in text
    assert text.startswith("# Benchmarks\n\n## What limits each number\n\nnoise\n")
    # bench/run.py rewrites the rest of the doc and puts the section back, with the
    # window kinds' replay measurements (bench.replay_kinds), which it does not make.
    doc.write_text(doc.read_text() + "\n## What if: each window kind\n\nslow and per-account\n\n## Next\n"
                   "\n## Reads at a million bans\n\nwhy these reads\n")
    kept = report.kept_sections(doc)
    assert kept.startswith("\n## What if: each window kind\n\nslow and per-account\n\n## Idle cost\n\n"
                           "before and after\n") and "| second run |" in kept and "## Next" not in kept
    # The api's reads (bench/api_reads.py) too, with the prose before its generated part.
    assert kept.endswith("\n## Reads at a million bans\n\nwhy these reads\n")
    assert report.kept_sections(tmp_path / "missing.md") == ""


def test_replays_are_in_their_own_table_against_the_match_not_in_the_matching_table():
    from types import SimpleNamespace

    from bench.procs import Usage

    run = report.Run("1.0.2", "make bench", "now", "0")
    run.files = {"mixed": SimpleNamespace(lines=1000, banned={"198.51.100.1", "198.51.100.2"})}
    run.matching = {"mixed": {
        report.F2B_REGEX: {"usage": Usage(40.0, 40.0, 600), "failures": 200},
        report.OURS: {"usage": Usage(5.0, 5.0, 60), "failures": 200},
        report.REPLAY_SHIPPED: {"usage": Usage(12.5, 20.0, 130), "failures": 200, "bans": 3},
    }}
    matching = "\n".join(report._matching_table(run))
    replays = report._replay_table(run)
    assert report.REPLAY_SHIPPED not in matching and report.OURS in matching
    assert len(replays) == 3 and report.REPLAY_SHIPPED in replays[2] and "**2.50x**" in replays[2]
