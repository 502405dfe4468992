"""TVM's RPC server, kept serving after a session crashes (``tvmc-attend device serve``).

Stock ``tvm.exec.rpc_server`` stops accepting connections (and drops off its tracker, while its
processes keep the port) as soon as one session process dies, e.g. of SIGILL when a module built
for another CPU runs. Here such a session ends with a clear error sent to the client and the
server keeps serving. With ``--allow`` it also closes, right after accept() and before TVM
reads a byte, every connection from a peer outside the allowed networks. Everything else is TVM's
server as is.

This file imports only the standard library and TVM, so the emulated boards run a copy of it
inside their rootfs (``python3 server.py --host ... --port ...``) without installing tvmc_attend.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import ipaddress
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Iterable
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SECURITY_WARNING = (
    "warning: a TVM RPC server runs any code uploaded to it, without authentication: expose it "
    "only on a trusted network, or keep it on 127.0.0.1 and reach it through an SSH tunnel "
    "(ssh -L PORT:127.0.0.1:PORT board)"
)
ALLOW_EXAMPLES = "e.g. 192.168.1.20, 192.168.1.0/24 or fd00::/8"
# An emulated board's server is started with this set to the board's name, and answers it to
# any client through EMULATED_FUNC: the device says what it is (no registry lookup to miss).
EMULATED_ENV = "TVMC_ATTEND_EMULATED"
EMULATED_FUNC = "tvmc_attend.emulated"


def exposed_warning(host: str, port: int) -> str:
    """The one-line warning for a server bound beyond loopback without ``--allow``."""
    return (f"warning: the RPC server on {_address(host, port)} runs any code uploaded to it, "
            "without authentication, for anyone who can reach it: pass --allow ADDR[/BITS] for "
            "the machines that may connect, or bind 127.0.0.1 and use an SSH tunnel "
            f"(ssh -L {port}:127.0.0.1:{port} board)")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: binds nobody else can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # another host name: assume it is reachable from the network
        return False


def parse_allow(values: Iterable[str]) -> tuple[Network, ...]:
    """``--allow`` values (``ADDR`` or ``ADDR/BITS``, IPv4 or IPv6) -> networks.

    Raises ValueError with a one-line message naming the flag.
    """
    networks = []
    for value in values:
        try:
            # strict=False: "192.168.1.20/24" means that host's /24, as people write it
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"--allow expects an IP address or network ({ALLOW_EXAMPLES}), "
                             f"got '{value}'") from None
    return tuple(networks)


def peer_allowed(peer: str, allow: Iterable[Network]) -> bool:
    """True when the peer address lies in one of the ``allow`` networks."""
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])  # drop an IPv6 zone ("%eth0")
    except ValueError:
        return False
    candidates = [address]
    # An IPv4 client of a dual-stack (::) socket shows up as ::ffff:a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(candidate in network for candidate in candidates for network in allow)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class AllowListSocket:
    """A listening socket whose accept() closes connections from peers outside ``allow``.

    The check runs right after accept(), before the caller reads a byte, so a refused peer never
    reaches TVM's handshake. Every other attribute is the wrapped socket's (fileno() for select,
    setblocking(), close(), ...). ``placeholder``: for a blocking accept loop that must get a
    connection back (TVM's RPC server); a non-blocking caller (the tracker) just gets the next
    allowed connection or BlockingIOError.
    """

    def __init__(self, sock: socket.socket, allow: Iterable[Network],
                 log: Callable[[str], Any], placeholder: bool = False) -> None:
        self._sock = sock
        self._allow = tuple(allow)
        self._log = log
        self._placeholder = placeholder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def accept(self) -> tuple[socket.socket, Any]:
        while True:
            conn, addr = self._sock.accept()
            if peer_allowed(addr[0], self._allow):
                return conn, addr
            conn.close()
            self._log(f"refused connection from {_address(addr[0], addr[1])}: not in --allow")
            if self._placeholder:
                return _refused_placeholder(), addr


def _refused_placeholder() -> socket.socket:
    """A connection TVM's server reads as a bad handshake and drops at once.

    Blocking in accept() until an allowed peer comes would stop the server's loop from pinging
    its tracker (it renews stale match keys there); this hands control straight back to it.
    """
    ours, theirs = socket.socketpair()
    ours.sendall(b"\0\0\0\0")  # not RPC_MAGIC: TVM closes it and goes back to its loop
    ours.close()
    return theirs


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


def only_allow(allow: Iterable[str]) -> None:
    """Patch TVM's accept loop to refuse peers outside ``allow``; runs in the popen worker."""
    from tvm.rpc import server as rpc_server

    networks = parse_allow(allow)
    original = rpc_server._listen_loop
    if getattr(original, "allow_list", False):
        return

    def listen_loop(sock, *args):
        log = functools.partial(rpc_server.logger.warning, "%s")
        return original(AllowListSocket(sock, networks, log, placeholder=True), *args)

    listen_loop.allow_list = True
    rpc_server._listen_loop = listen_loop  # looked up when the server starts its listen thread


def init_worker(allow: tuple[str, ...] = ()) -> None:
    """TVM's ``server_init_callback``: everything this server changes, set up in the worker.

    Passed as ``functools.partial(init_worker, allow)``: TVM's popen pool pickles it (with
    cloudpickle, so it also works when this file runs as a script in an emulated board).
    """
    keep_serving_after_session_crashes()
    if allow:
        only_allow(allow)
    emulated = os.environ.get(EMULATED_ENV)
    if emulated:
        import tvm

        tvm.register_global_func(EMULATED_FUNC, lambda: emulated, override=True)


def serve(host: str, port: int, tracker: tuple[str, int] | None = None, key: str = "",
          port_end: int | None = None, allow: Iterable[str] = (),
          threads: int | None = None) -> None:
    """Run the RPC server in the foreground until it is killed or Ctrl-C.

    ``allow`` (``--allow`` values, already validated): only these peers may connect.
    ``threads``: TVM's pool size in the sessions (default: ``TVM_NUM_THREADS`` if set, else
    every core; TVM alone would take half of an x86 machine's logical CPUs). Set before TVM's
    pool exists; the session processes inherit it.
    """
    if threads or not os.environ.get("TVM_NUM_THREADS"):
        os.environ["TVM_NUM_THREADS"] = str(threads or len(os.sched_getaffinity(0)))
    from tvm import rpc

    allow = tuple(allow)
    server = rpc.Server(
        host, port, port_end or port + 1, key=key, tracker_addr=tracker,
        server_init_callback=functools.partial(init_worker, allow),
    )
    where = f" registered with tracker {tracker[0]}:{tracker[1]} under key {key}" if tracker else ""
    only = f"; only {', '.join(allow)} may connect" if allow else ""
    print(f"RPC server listening on {_address(host, server.port)}{where}{only}", flush=True)
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
    parser.add_argument("--allow", action="append", default=[], metavar="ADDR[/BITS]",
                        help="only peers in this network may connect (repeatable)")
    parser.add_argument("--threads", type=int, help="TVM threads per session (default: all)")
    args = parser.parse_args(argv)
    try:
        parse_allow(args.allow)
    except ValueError as err:
        parser.error(str(err))
    logging.basicConfig(level=logging.INFO)
    tracker = None
    if args.tracker:
        tracker_host, tracker_port = args.tracker.rsplit(":", 1)
        tracker = (tracker_host.strip("[]"), int(tracker_port))
    serve(args.host, args.port, tracker, args.key, allow=args.allow, threads=args.threads)


if __name__ == "__main__":
    main()
