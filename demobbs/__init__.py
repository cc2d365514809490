"""A small MTBBS-like telnet BBS used by the demo and the end-to-end tests;
it reports its sessions through :mod:`agent.reporter` exactly as MTBBS would."""
