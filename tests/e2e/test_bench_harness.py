"""The benchmark harness itself works: one small scenario end to end and its report.

Benchmarks are not part of the test run; this only proves `nox -s bench` can run.
"""

from __future__ import annotations

from pathlib import Path

import docker
from bench import report, scenarios

from tests.conftest import IMAGE, Server


async def test_round_trip_scenario_and_report(
    server: Server, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    context = scenarios.Context(server=server, docker=docker_client, image=IMAGE, pool_size=0)
    result = await scenarios.command_round_trip(context, n=20, n_docker=3)
    for name in ("insien", "docker_exec_run", "host_subprocess"):
        summary = result[name]
        assert summary["n"] == len(result["samples"][name])
        assert 0 < summary["min_ms"] <= summary["median_ms"] <= summary["p99_ms"]
    assert not docker_client.containers.list(all=True, filters={"label": "insien.bench"})

    results = {
        "quick": True,
        "machine": {"date": "now", "cpus": 2, "kernel": "k", "docker": "d", "python": "p"},
        "command_round_trip": result,
    }
    table = report.markdown(results)
    assert "command round trip" in table
    assert "round trip p50 >= 20x faster than exec_run" in table
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n{report.START}\nold\n{report.END}\nrest\n")
    report.update_doc(doc, table)
    assert doc.read_text().startswith("intro\n")
    assert "old" not in doc.read_text()
    assert doc.read_text().endswith("rest\n")
