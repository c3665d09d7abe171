"""Observing a running pg_doorman from outside: the HTTP listener, ``/metrics``, the JSON API and the web console."""
