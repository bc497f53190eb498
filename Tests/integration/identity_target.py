#!/usr/bin/env python3
"""A target that says who it is: on accept it writes one line,
"<name> <peer ip>\\n", then echoes every line it receives until EOF.

    python3 identity_target.py NAME=ADDR:PORT [NAME=ADDR:PORT ...]

The name tells a client which target its connection reached; the peer IP
is the balancer that connected (stickyd connects from its own address), so
one line shows both the target and the instance the router chose. The echo
lets a held connection prove later that it still works. test_ecmp.py runs it
in the backend namespace; a greeter pod would say its name too, but a plain
line keeps thousands of connections fast and needs no gRPC client.
"""

from __future__ import annotations

import asyncio
import signal
import sys

LINE_LIMIT = 4096  # a longer line ends the connection: bounded memory per client


async def serve(name: str, host: str, port: int) -> asyncio.base_events.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[0]
        try:
            writer.write(f"{name} {peer}\n".encode())
            await writer.drain()
            while True:
                line = await reader.readline()
                if not line:
                    break
                writer.write(line)
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=LINE_LIMIT, backlog=4096, reuse_address=True)


async def main(specs: list[str]) -> None:
    servers = []
    for spec in specs:
        name, _, addr = spec.partition("=")
        host, _, port = addr.rpartition(":")
        if not name or not host or not port.isdigit():
            sys.exit(f"identity_target.py: expected NAME=ADDR:PORT, got {spec!r}")
        servers.append(await serve(name, host, int(port)))
    print("serving " + " ".join(specs), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in servers:
        s.close()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1:]))
