"""SIGKILL a real `robust-api certify` mid-run, rerun it: nothing logged is paid again, nothing is counted twice,
and the certificates equal an uninterrupted run's. (A few trials; benchmarks/crash_resume.py runs >= 20.)"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[2] / "benchmarks" / "crash_resume.py"


def load_harness():
    spec = importlib.util.spec_from_file_location("crash_resume_harness", HARNESS)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_killed_runs_resume_paying_only_for_what_is_missing(tmp_path):
    harness = load_harness()
    results = harness.run_trials(3, seed=7, workdir=tmp_path, providers=("aws", "google", "clarifai"),
                                 images=2, n0=5, n=20)
    for result in results:
        description = harness.describe(result)
        killed = [run for run in result.runs if run.killed]
        assert killed, description
        final = result.runs[-1]
        assert not final.killed and final.exit_code == 0, description
        # Every sample already in the log when a run starts is never sent to the provider again.
        assert all(run.relabelled_logged == 0 for run in result.runs), description
        assert all(run.duplicates_in_run == 0 for run in result.runs), description
        # Answers lost at the kill are at most the calls in flight; the run that completes loses none.
        assert all(run.lost_in_flight <= result.lost_bound for run in result.runs), description
        assert final.lost_in_flight == 0, description
        # Billed over all runs = every sample once + what was lost in flight.
        assert sum(run.labelled for run in result.runs) == result.samples + sum(r.lost_in_flight for r in result.runs)
        assert result.log_duplicates == 0 and result.missing_at_end == 0 and result.unknown_labelled == 0, description
        assert result.matches_uninterrupted, description
        assert result.ok, description
