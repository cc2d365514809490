"""Everything that runs on a BBS host: the checks, the health-check CLI, the
agent daemon with its publisher and disk spool, and the session reporter the
BBS calls. Shares only :mod:`wire` with the rest of the project."""

__version__ = "0.1.0"
