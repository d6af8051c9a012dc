"""Turn a results dict into the markdown table, the target verdicts and the PNG chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

START = "<!-- results:start -->"
END = "<!-- results:end -->"


def save(results: dict[str, Any], path: Path) -> None:
    """Keep one bench's results as JSON and print them without their raw samples."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "samples"}, indent=2))


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b else "n/a"


def targets(results: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """(target, met?, evidence) for each target the project holds itself to."""
    out: list[tuple[str, bool | None, str]] = []
    rt = results.get("command_round_trip")
    if rt:
        ins, dock, host = (
            rt[k]["median_ms"] for k in ("insien", "docker_exec_run", "host_subprocess")
        )
        out.append(
            ("round trip p50 >= 20x faster than exec_run", dock / ins >= 20, _ratio(dock, ins))
        )
        out.append(
            ("round trip p50 within 4x of the host floor", ins / host <= 4, _ratio(ins, host))
        )
    first = results.get("time_to_first_command")
    if first:
        cold = first["insien_cold"]["median_ms"]
        run = first.get("docker_run_rm", first["docker_containers_run"])["median_ms"]
        out.append(
            (
                "cold create -> first command p50 <= docker run --rm true",
                cold <= run,
                f"{cold:.0f} ms vs {run:.0f} ms",
            )
        )
        warm = first.get("insien_warm_pool")
        if warm:
            out.append(
                (
                    "first command p50 below 20 ms from the warm pool",
                    warm["median_ms"] < 20,
                    f"{warm['median_ms']:.1f} ms",
                )
            )
    burst = results.get("burst")
    if burst:
        docker_p50 = burst["docker_run_rm"]["median_ms"]
        for label, key in (("first burst", "insien_first"), ("next burst", "insien_next")):
            p50 = burst[key]["median_ms"]
            out.append(
                (
                    f"burst of {burst['n']} ({label}) p50 >= 2x faster than docker run at once",
                    docker_p50 / p50 >= 2,
                    _ratio(docker_p50, p50),
                )
            )
        out.append(
            (
                "every create of the bursts succeeds",
                burst["succeeded"] == 2 * burst["n"],
                f"{burst['succeeded']} of {2 * burst['n']}",
            )
        )
    stream = results.get("output_streaming")
    if stream:
        out.append(
            (
                "streaming >= 1.0x docker exec cat to a pipe",
                stream["insien_mb_s"] >= stream["docker_exec_cat_mb_s"],
                _ratio(stream["insien_mb_s"], stream["docker_exec_cat_mb_s"]),
            )
        )
        out.append(
            (
                "streaming RSS growth < 64 MiB",
                stream["insien_rss_growth_mib"] < 64,
                f"{stream['insien_rss_growth_mib']:.1f} MiB",
            )
        )
    files = results.get("files")
    if files:
        up = files["insien_upload_mb_s"] >= files["docker_put_archive_mb_s"]
        down = files["insien_download_mb_s"] >= files["docker_get_archive_mb_s"]
        out.append(
            (
                "upload at least as fast as put_archive",
                up,
                _ratio(files["insien_upload_mb_s"], files["docker_put_archive_mb_s"]),
            )
        )
        out.append(
            (
                "download at least as fast as get_archive",
                down,
                _ratio(files["insien_download_mb_s"], files["docker_get_archive_mb_s"]),
            )
        )
    ports = results.get("ports")
    if ports:
        ins, dock = ports["insien"], ports["docker_proxy"]
        out.append(
            (
                "port GET throughput >= 0.5x docker-proxy",
                ins["mb_s"] >= 0.5 * dock["mb_s"],
                _ratio(ins["mb_s"], dock["mb_s"]),
            )
        )
        out.append(
            (
                "port 1 KiB request p50 <= 2x docker-proxy",
                ins["small"]["median_ms"] <= 2 * dock["small"]["median_ms"],
                f"{ins['small']['median_ms']:.2f} vs {dock['small']['median_ms']:.2f} ms",
            )
        )
    egress = results.get("egress")
    if egress:
        out.append(
            (
                "egress download >= 0.5x Docker's bridge",
                egress["insien_mb_s"] >= 0.5 * egress["bridge_mb_s"],
                _ratio(egress["insien_mb_s"], egress["bridge_mb_s"]),
            )
        )
    code = results.get("code_interpreter")
    if code:
        ins = code["insien_warm_context"]["median_ms"]
        floor = code["ipykernel_host"]["median_ms"]
        first = code["first_run_code_pool"]["median_ms"]
        out.append(
            (
                "run_code('1+1') p50 <= 2x jupyter_client + ipykernel on the host",
                ins <= 2 * floor,
                _ratio(ins, floor),
            )
        )
        out.append(
            (
                "create -> first run_code p50 < 100 ms from the warm pool",
                first < 100,
                f"{first:.0f} ms",
            )
        )
    scale = results.get("scale")
    if scale:
        many = scale["sandboxes"] >= 500
        out.append(
            (
                "500 idle sandboxes: orchestrator idle CPU < 2%",
                many and scale["orchestrator_idle_cpu_percent"] < 2,
                f"{scale['sandboxes']} sandboxes, "
                f"{scale['orchestrator_idle_cpu_percent']:.2f}% CPU",
            )
        )
        out.append(
            (
                "500 idle sandboxes: orchestrator RSS < 300 MiB",
                many and scale["orchestrator_rss_mib"] < 300,
                f"{scale['orchestrator_rss_mib']:.0f} MiB",
            )
        )
        out.append(
            (
                "500 idle sandboxes: host memory <= 16 MiB each",
                many and scale["host_memory_per_sandbox_mib"] <= 16,
                f"{scale['host_memory_per_sandbox_mib']:.1f} MiB",
            )
        )
    return out


def markdown(results: dict[str, Any]) -> str:
    meta = results["machine"]
    lines = [
        f"Run on {meta['date']} ({'quick' if results['quick'] else 'full'} run): "
        f"{meta['cpus']} CPUs, kernel {meta['kernel']}, Docker {meta['docker']}, "
        f"Python {meta['python']}.",
        "",
        "| scenario | Insien | baseline | ratio |",
        "| --- | --- | --- | --- |",
    ]
    rt = results.get("command_round_trip")
    if rt:
        ins, dock, host = rt["insien"], rt["docker_exec_run"], rt["host_subprocess"]
        lines.append(
            f"| command round trip p50 / p99 (n={ins['n']}) "
            f"| {ins['median_ms']:.2f} / {ins['p99_ms']:.2f} ms "
            f"| exec_run {dock['median_ms']:.1f} / {dock['p99_ms']:.1f} ms (n={dock['n']}) "
            f"| {_ratio(dock['median_ms'], ins['median_ms'])} faster |"
        )
        lines.append(
            f"| host floor: subprocess.run p50 | | {host['median_ms']:.2f} ms "
            f"| Insien is {_ratio(ins['median_ms'], host['median_ms'])} of it |"
        )
    first = results.get("time_to_first_command")
    if first:
        cold, run, cs = (
            first["insien_cold"],
            first["docker_containers_run"],
            first["docker_create_start"],
        )
        rm = first.get("docker_run_rm", run)
        lines.append(
            f"| time to first command p50 (n={cold['n']}) | {cold['median_ms']:.0f} ms cold "
            f"| docker run --rm {rm['median_ms']:.0f} ms; containers.run "
            f"{run['median_ms']:.0f} ms; create+start {cs['median_ms']:.0f} ms "
            f"| {_ratio(rm['median_ms'], cold['median_ms'])} faster |"
        )
        warm = first.get("insien_warm_pool")
        if warm:
            lines.append(
                f"| time to first command p50 (n={warm['n']}) | {warm['median_ms']:.1f} ms "
                f"from the warm pool | containers.run {run['median_ms']:.0f} ms "
                f"| {_ratio(run['median_ms'], warm['median_ms'])} faster |"
            )
    burst = results.get("burst")
    if burst:
        dock = burst["docker_run_rm"]
        for label, key, pool in (
            ("first", "insien_first", burst["pool_before"]),
            ("next", "insien_next", burst["pool_grown"]),
        ):
            ins = burst[key]
            lines.append(
                f"| burst of {burst['n']} creates at once -> first command, {label} "
                f"(pool {pool}) p50 / p95 | {ins['median_ms']:.0f} / {ins['p95_ms']:.0f} ms "
                f"| docker run --rm x{burst['n']} at once {dock['median_ms']:.0f} / "
                f"{dock['p95_ms']:.0f} ms | {_ratio(dock['median_ms'], ins['median_ms'])} faster |"
            )
    e2b = results.get("e2b_first_command")
    if e2b:
        through, own = e2b["e2b_sdk"], e2b["insien_sdk"]
        lines.append(
            f"| create + first command through the stock e2b SDK p50 (n={through['n']}) "
            f"| {through['median_ms']:.0f} ms | Insien's SDK {own['median_ms']:.0f} ms "
            f"| {_ratio(through['median_ms'], own['median_ms'])} of it |"
        )
    tp = results.get("throughput")
    if tp:
        load = tp["load"]
        ins, dock = tp["insien"], tp["docker_exec_run"]
        lines.append(
            f"| throughput {load['sandboxes']} sandboxes x {load['concurrency']} concurrent "
            f"| {ins['commands_per_s']:.0f} cmd/s, p99 {ins['p99_ms']:.0f} ms "
            f"| {dock['commands_per_s']:.0f} cmd/s, p99 {dock['p99_ms']:.0f} ms "
            f"| {_ratio(ins['commands_per_s'], dock['commands_per_s'])} |"
        )
    stream = results.get("output_streaming")
    if stream:
        lines.append(
            f"| stdout streaming, {stream['bytes'] / 2**20:.0f} MiB, median of "
            f"{stream.get('runs', 1)} "
            f"| {stream['insien_mb_s']:.0f} MB/s, "
            f"server RSS +{stream['insien_rss_growth_mib']:.1f} MiB "
            f"| docker exec cat {stream['docker_exec_cat_mb_s']:.0f} MB/s "
            f"| {_ratio(stream['insien_mb_s'], stream['docker_exec_cat_mb_s'])} |"
        )
    files = results.get("files")
    if files:
        lines.append(
            f"| upload {files['bytes'] / 2**20:.0f} MiB, median of {files.get('runs', 1)} "
            f"| {files['insien_upload_mb_s']:.0f} MB/s "
            f"| put_archive {files['docker_put_archive_mb_s']:.0f} MB/s "
            f"| {_ratio(files['insien_upload_mb_s'], files['docker_put_archive_mb_s'])} |"
        )
        lines.append(
            f"| download {files['bytes'] / 2**20:.0f} MiB, median of {files.get('runs', 1)} "
            f"| {files['insien_download_mb_s']:.0f} MB/s "
            f"| get_archive {files['docker_get_archive_mb_s']:.0f} MB/s "
            f"| {_ratio(files['insien_download_mb_s'], files['docker_get_archive_mb_s'])} |"
        )
    ports = results.get("ports")
    if ports:
        ins, dock = ports["insien"], ports["docker_proxy"]
        lines.append(
            f"| HTTP GET {ports['bytes'] / 2**20:.0f} MiB from a port, median of "
            f"{ports.get('runs', 1)} | {ins['mb_s']:.0f} MB/s "
            f"| `docker run -p` (docker-proxy) {dock['mb_s']:.0f} MB/s "
            f"| {_ratio(ins['mb_s'], dock['mb_s'])} |"
        )
        lines.append(
            f"| HTTP 1 KiB from a port, {ins['small']['n']} requests "
            f"| p50 {ins['small']['median_ms']:.2f} ms, p99 {ins['small']['p99_ms']:.2f} ms "
            f"| docker-proxy p50 {dock['small']['median_ms']:.2f} ms, "
            f"p99 {dock['small']['p99_ms']:.2f} ms "
            f"| {_ratio(ins['small']['median_ms'], dock['small']['median_ms'])} of it |"
        )
    egress = results.get("egress")
    if egress:
        lines.append(
            f"| egress: curl of {egress['bytes'] / 2**20:.0f} MiB inside, median of "
            f"{egress.get('runs', 1)} | {egress['insien_mb_s']:.0f} MB/s through the proxy "
            f"| bridge network {egress['bridge_mb_s']:.0f} MB/s "
            f"| {_ratio(egress['insien_mb_s'], egress['bridge_mb_s'])} |"
        )
    code = results.get("code_interpreter")
    if code:
        ins, floor = code["insien_warm_context"], code["ipykernel_host"]
        pool, cold = code["first_run_code_pool"], code["first_run_code_cold"]
        lines.append(
            f'| `run_code("1+1")` in a warm context p50 (n={ins["n"]}) '
            f"| {ins['median_ms']:.2f} ms | jupyter_client + ipykernel on the host "
            f"{floor['median_ms']:.2f} ms | {_ratio(ins['median_ms'], floor['median_ms'])} of it |"
        )
        lines.append(
            f"| create -> first `run_code` answered p50 (n={pool['n']}) "
            f"| {pool['median_ms']:.0f} ms from the warm pool | cold (no pool) "
            f"{cold['median_ms']:.0f} ms | {_ratio(cold['median_ms'], pool['median_ms'])} faster |"
        )
    scale = results.get("scale")
    if scale:
        stopped = f" (stopped early: {scale['stopped']})" if scale.get("stopped") else ""
        lines.append(
            f"| scale: {scale['sandboxes']} idle sandboxes{stopped} "
            f"| {scale['host_memory_per_sandbox_mib']:.1f} MiB host memory each; "
            f"orchestrator RSS {scale['orchestrator_rss_mib']:.0f} MiB, idle CPU "
            f"{scale['orchestrator_idle_cpu_percent']:.2f}% | — | |"
        )
    lines += ["", "| target | met | evidence |", "| --- | --- | --- |"]
    for name, met, evidence in targets(results):
        verdict = "not measured" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {name} | {verdict} | {evidence} |")
    if results.get("chart"):
        lines += ["", f"![latency distributions]({results['chart']})"]
    return "\n".join(lines)


def update_doc(doc: Path, table: str) -> None:
    text = doc.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{START}\n{table}\n{END}{tail}")


def chart(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    groups = []
    rt = results.get("command_round_trip")
    if rt:
        groups.append(("command round trip", rt["samples"]))
    first = results.get("time_to_first_command")
    if first:
        groups.append(("time to first command", first["samples"]))
    burst = results.get("burst")
    if burst:
        groups.append((f"burst of {burst['n']} creates", burst["samples"]))
    if not groups:
        return False
    figure, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4))
    axes = axes if len(groups) > 1 else [axes]
    for axis, (title, samples) in zip(axes, groups, strict=True):
        axis.boxplot(list(samples.values()), showfliers=False)
        axis.set_xticks(range(1, len(samples) + 1), list(samples), rotation=10)
        axis.set_yscale("log")
        axis.set_ylabel("ms (log scale)")
        axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
