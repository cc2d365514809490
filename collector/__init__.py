"""The central consumer of the report and session streams: per-host state in
Redis, staleness, the Nagios status CLI and the Prometheus exporter. Shares
only :mod:`wire` with the rest of the project."""
