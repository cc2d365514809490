"""rq jobs that turn host state into alerts: rules, the alert state machine,
silences, and delivery by mail and Slack. Shares only :mod:`wire` with the
rest of the project."""
