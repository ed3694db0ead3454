"""nfflowd: NetFlow/IPFIX from Linux netfilter connection tracking."""

__version__ = "0.2.0"
