#!/usr/bin/env python3
"""A soak echo target: one process per target, so that the soak can SIGKILL
it like a crashed pod.

    python3 Tests/soak/echo_target.py --port 7101 --name echo-1

Each connection first gets the line b"<name>\\n" (so the client knows which
target it reached, independently of stickyd's access log), then every byte
it sends comes back unchanged, in order. The client checks every byte it
gets back against what it sent: a corruption in either direction shows.
On EOF from the client the target finishes its writes and sends EOF too.
Reads are bounded (64 KiB) and a write waits for the socket to drain before
the next read, so a slow reader holds at most one chunk here.
"""

from __future__ import annotations

import argparse
import asyncio
import signal


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: bytes) -> None:
    try:
        writer.write(name + b"\n")
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        await writer.drain()
    except (ConnectionError, OSError):
        pass  # the client (or stickyd for it) reset: nothing to keep
    finally:
        writer.close()


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--host", default="127.0.0.1")
    args = p.parse_args()
    name = args.name.encode()
    server = await asyncio.start_server(lambda r, w: serve(r, w, name), args.host, args.port,
                                        backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"echo target {args.name} listening on {args.host}:{args.port}", flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
