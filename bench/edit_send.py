"""`python -m bench.edit_send`: the CPU the API spends sending one edit job, Celery's `send_task`
(common.queue.enqueue_edit) against the hand-written `EditSender` (common/edit_sender.py), on one Redis.

The two ways alternate round by round (paired: each pair saw the same background load), each round sending
`--sends` jobs back to back from this process, its queue emptied in between. Per send: this process's CPU time
(what a submit costs the API), the wall time, and the Redis server's CPU. Prints a Markdown table, and with
--json the numbers as one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path


def _server_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _round(send: Callable[[str], None], sends: int, redis_pid: int | None) -> dict[str, float]:
    tag = uuid.uuid4().hex[:8]
    server0 = _server_cpu(redis_pid) if redis_pid else 0.0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(sends):
        send(f"edt_{tag}{i}")
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    server = (_server_cpu(redis_pid) - server0) if redis_pid else float("nan")
    return {"cpu_ms": cpu / sends * 1e3, "wall_ms": wall / sends * 1e3, "redis_cpu_ms": server / sends * 1e3}


def bench_edit_send(redis_url: str, rounds: int, sends: int, redis_pid: int | None = None) -> dict[str, object]:
    from common.edit_sender import EditSender
    from common.queue import enqueue_edit, make_celery
    from common.redis_client import redis_client
    from common.settings import Settings

    settings = Settings(redis_url=redis_url, edits_queue=f"bench-send-{uuid.uuid4().hex[:8]}")
    app, client = make_celery(settings), redis_client(redis_url)
    sender = EditSender(app, settings)
    ways: dict[str, Callable[[str], None]] = {
        "send_task": lambda edit_id: enqueue_edit(app, settings, edit_id),
        "EditSender": sender.send,
    }
    try:
        for send in ways.values():  # connections, pools and first-call caches, untimed
            _round(send, min(sends, 200), None)
        client.delete(settings.edits_queue)
        load = [os.getloadavg()[0]]
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in ways}
        for index in range(rounds):
            order = list(ways) if index % 2 == 0 else list(reversed(ways))
            for name in order:
                runs[name].append(_round(ways[name], sends, redis_pid))
                client.delete(settings.edits_queue)
            load.append(os.getloadavg()[0])
    finally:
        client.delete(settings.edits_queue, f"_kombu.binding.{settings.edits_queue}")
        sender.close()
        client.close()
    saved = [a["cpu_ms"] - b["cpu_ms"] for a, b in zip(runs["send_task"], runs["EditSender"], strict=True)]
    quartiles = statistics.quantiles(saved, n=4)
    return {
        "rounds": rounds, "sends_per_round": sends, "load_average": load,
        "median": {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for name, rs in runs.items()},
        "cpu_saved_ms": {"median": statistics.median(saved), "q1": quartiles[0], "q3": quartiles[2],
                         "rounds_saving": sum(s > 0 for s in saved)},
        "runs": runs,
    }  # fmt: skip


def report(result: dict[str, object]) -> str:
    median, saved = result["median"], result["cpu_saved_ms"]
    lines = ["| send | API CPU / send | wall / send | Redis CPU / send |", "|---|---:|---:|---:|"]
    for name, values in median.items():
        lines.append(f"| {name} | {values['cpu_ms']:.3f} ms | {values['wall_ms']:.3f} ms | "
                     f"{values['redis_cpu_ms']:.3f} ms |")  # fmt: skip
    load = result["load_average"]
    lines += ["", f"Paired saving of API CPU per send (send_task − EditSender): median {saved['median']:.3f} ms "
              f"(quartiles {saved['q1']:.3f} … {saved['q3']:.3f}), EditSender cheaper in {saved['rounds_saving']} of "
              f"{result['rounds']} rounds; {result['rounds']} rounds × {result['sends_per_round']} sends each way; "
              f"1-minute load average {min(load):.2f} … {max(load):.2f}."]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.edit_send", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--sends", type=int, default=500, help="jobs sent per round and way")
    parser.add_argument("--redis-url", help="a Redis to use (default: a private redis-server, as the tests start)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.redis_url:
        result = bench_edit_send(args.redis_url, args.rounds, args.sends)
    else:
        from tests.services.redis import EmbeddedRedis

        server = EmbeddedRedis().start()
        try:
            result = bench_edit_send(server.url, args.rounds, args.sends, server.process.pid)
        finally:
            server.close()
    print(report(result))
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
