"""The exporter's web page: the fleet at a glance and each host's history.

Served by ``mtbbs-collector exporter`` beside ``/metrics``, read-only, from
the same Redis state the status CLI and the exporter read. :mod:`.data`
reads Redis into plain dicts (also the JSON API), :mod:`.charts` draws SVG,
:mod:`.pages` writes the HTML, :mod:`.i18n` holds the labels and
:mod:`.server` routes requests and guards the door (bind, basic auth).
"""
