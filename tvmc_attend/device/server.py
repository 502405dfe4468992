"""TVM's RPC server, kept serving after a session crashes (``tvmc-attend device serve``).

Stock ``tvm.exec.rpc_server`` stops accepting connections (and drops off its tracker, while its
processes keep the port) as soon as one session process dies, e.g. of SIGILL when a module built
for another CPU runs. Here such a session ends with a clear error sent to the client and the
server keeps serving. Everything else is TVM's server as is.

This file imports only the standard library and TVM, so the emulated boards run a copy of it
inside their rootfs (``python3 server.py --host ... --port ...``) without installing tvmc_attend.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import sys

SECURITY_WARNING = (
    "warning: a TVM RPC server runs any code uploaded to it, without authentication: expose it "
    "only on a trusted network, or keep it on 127.0.0.1 and reach it through an SSH tunnel "
    "(ssh -L PORT:127.0.0.1:PORT board)"
)


def describe_exit(code: int) -> str:
    """``-4`` -> "killed by SIGILL (illegal instruction: ...)"."""
    if code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"killed by signal {-code}"
    if name == "SIGILL":
        return ("killed by SIGILL (illegal instruction): the module uses instructions this CPU "
                "lacks; build it for this board's target")
    return f"killed by {name}"


def keep_serving_after_session_crashes() -> None:
    """Patch TVM's per-connection handler; runs inside the server's popen worker.

    Passed as ``server_init_callback``: TVM runs it in the worker process that owns the listening
    socket, before it starts accepting.
    """
    from tvm.rpc import _ffi_api
    from tvm.rpc import server as rpc_server

    original = rpc_server._serving
    if getattr(original, "keeps_serving", False):
        return

    def serving(sock, addr, opts, load_library):
        cwd = os.getcwd()
        try:
            original(sock, addr, opts, load_library)
        except RuntimeError as err:  # "Child process N exited unsuccessfully with error code C"
            code = re.search(r"error code (-?\d+)", str(err))
            reason = describe_exit(int(code.group(1))) if code else str(err)
            rpc_server.logger.warning("session from %s ended: %s; still serving", addr, reason)
            with contextlib.suppress(Exception):  # the client may be gone already
                _ffi_api.ReturnException(
                    sock.fileno(), f"RPCSessionError: the remote session process was {reason}"
                )
            sock.close()
            os.chdir(cwd)

    serving.keeps_serving = True
    rpc_server._serving = serving


def serve(host: str, port: int, tracker: tuple[str, int] | None = None, key: str = "",
          port_end: int | None = None) -> None:
    """Run the RPC server in the foreground until it is killed or Ctrl-C."""
    from tvm import rpc

    server = rpc.Server(
        host, port, port_end or port + 1, key=key, tracker_addr=tracker,
        server_init_callback=keep_serving_after_session_crashes,
    )
    where = f" registered with tracker {tracker[0]}:{tracker[1]} under key {key}" if tracker else ""
    print(f"RPC server listening on {host}:{server.port}{where}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` cleans up like Ctrl-C
    try:
        server.proc.join()
    except KeyboardInterrupt:
        pass
    finally:
        server.terminate()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--tracker", help="HOST:PORT of the RPC tracker to register with")
    parser.add_argument("--key", default="", help="device key at the tracker")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    tracker = None
    if args.tracker:
        tracker_host, tracker_port = args.tracker.rsplit(":", 1)
        tracker = (tracker_host.strip("[]"), int(tracker_port))
    serve(args.host, args.port, tracker, args.key)


if __name__ == "__main__":
    main()
