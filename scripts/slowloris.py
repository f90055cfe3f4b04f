"""Holds N idle TCP connections open against a server on loopback for a bounded time (or until SIGTERM),
reconnecting each one the server closes (a slowloris that never starts its TLS handshake). Prints how many the
server closed and how long it held them.

    python3 scripts/slowloris.py HOST:PORT N SECONDS

Loopback only, bounded in connections and in time, as every load test of this project.
"""

import asyncio
import ipaddress
import signal
import sys
import time


async def hold(host: str, port: int, deadline: float, stats: dict) -> None:
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            stats["refused"] += 1
            await asyncio.sleep(0.5)
            continue
        stats["open"] += 1
        opened = time.monotonic()
        try:
            await asyncio.wait_for(reader.read(1), timeout=max(0.1, deadline - time.monotonic()))
            stats["closed_by_server"] += 1
            stats["held_s"].append(time.monotonic() - opened)
        except asyncio.TimeoutError:
            pass
        except OSError:  # reset by the server
            stats["closed_by_server"] += 1
            stats["held_s"].append(time.monotonic() - opened)
        finally:
            stats["open"] -= 1
            writer.close()


async def main() -> None:
    target, n, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    host, port = target.rsplit(":", 1)
    host = host.strip("[]")
    if not ipaddress.ip_address(host).is_loopback:
        sys.exit(f"slowloris only targets loopback (got {host})")
    stats = {"open": 0, "refused": 0, "closed_by_server": 0, "held_s": []}
    deadline = time.monotonic() + secs
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    holders = asyncio.gather(*(hold(host, int(port), deadline, stats) for _ in range(min(n, 10_000))))
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([holders, stopped], return_when=asyncio.FIRST_COMPLETED)
    holders.cancel()
    stopped.cancel()
    await asyncio.gather(holders, stopped, return_exceptions=True)
    held = sorted(stats["held_s"])
    median = held[len(held) // 2] if held else float("nan")
    print(
        f"slowloris: {n} idle connections for {secs:.0f} s: {stats['closed_by_server']} closed by the server "
        f"(median held {median:.1f} s), {stats['refused']} connects refused"
    )


asyncio.run(main())
