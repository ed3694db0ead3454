"""The ``nfflowd`` command: parse the verb, dispatch.  No logic beyond that."""

from __future__ import annotations

import argparse
import os
import sys

from nfflowd import __version__

DEFAULT_CONFIG = "/etc/nfflowd.conf"

USAGE = """\
Usage: nfflowd [ -c file ] [ -f ] { start | stop | restart | reload | install | check | help | version }
       nfflowd [ -c file ] status [--json] [--rundir DIR]
       nfflowd [ -c file ] replay LOG...
       nfflowd [ -c file ] who ADDR[:PORT] [--at TIME] [--window S] [--remote ADDR[:PORT]]
                               [--proto P] [--from PATH]... [--json]
       nfflowd lab { up | traffic | flush | down | capture DIR } [--prefix P]
       nfflowd demo
       nfflowd keygen DIR
       nfflowd decode FILE|- [--json]
  -c file     Specify configuration file (instead of /etc/nfflowd.conf)
  -f          Run in the foreground (don't detach)
  start       Starts a new nfflowd if there isn't one running already
  stop        Stops a running nfflowd (every record read is exported and mirrored first)
  restart     Stops a running nfflowd if one is running.  Starts a new one.
  reload      Re-reads the configuration; restarts only the stages whose settings changed
  install     Setup nfflowd to run automatically after reboot (systemd unit) [--root DIR]
  check       Check the configuration file and report the daemon and kernel state
  status      Each stage's state and counters; exit 3 when nfflowd is not running
  replay      Feed saved `conntrack -E` logs through the pipeline; exits when all is delivered
  who         Which private host had public ADDR:PORT at TIME (nfcapd files, JSON mirror lines)
  lab         The built-in NAT lab (network namespaces) used by the demo and tests
  demo        Run nfflowd on the embedded default and show what a collector received
  keygen      Write CURVE keys for links between hosts (tcp://) and say where each goes
  decode      Decode NetFlow v5/v9/IPFIX datagrams (hex lines or a pcap/pcapng capture)
  help        Display this usage info
  version     Display the version of nfflowd
"""

VERBS = ("start", "stop", "restart", "reload", "install", "check", "help", "version",
         "replay", "lab", "demo", "decode", "status", "keygen", "who")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nfflowd", usage=USAGE, add_help=False)
    p.add_argument("-c", dest="config", default=None)
    p.add_argument("-f", dest="foreground", action="store_true")
    p.add_argument("-h", "--help", dest="help", action="store_true")
    p.add_argument("verb", nargs="?", default=None)
    p.add_argument("args", nargs=argparse.REMAINDER)
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.help or ns.verb in (None, "help"):
        sys.stdout.write(USAGE)
        return 0 if ns.help or ns.verb == "help" else 2
    if ns.verb not in VERBS:
        sys.stderr.write(f"nfflowd: unknown command {ns.verb!r}\n{USAGE}")
        return 2
    if ns.verb == "version":
        print(f"nfflowd {__version__}")
        return 0
    if ns.verb == "decode":
        from nfflowd import decode

        return decode.main(ns.args)
    if ns.verb == "lab":
        from nfflowd import lab

        return lab.main(ns.args)
    from nfflowd.ops import commands

    handler = getattr(commands, "cmd_" + ns.verb)
    config = ns.config
    if config is None and os.path.exists(DEFAULT_CONFIG):
        config = DEFAULT_CONFIG
    try:
        rc: int = handler(config, ns.foreground, ns.args)
    except BrokenPipeError:  # e.g. `nfflowd status | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
