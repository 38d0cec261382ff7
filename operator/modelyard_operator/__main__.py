"""`python -m modelyard_operator`: run the operator against the current kubeconfig or the
pod's service account."""

from __future__ import annotations

import argparse
import logging
import sys

import kopf
from prometheus_client import start_http_server

from modelyard_operator.handlers import watch
from modelyard_operator.settings import Settings, SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelyard-operator", description=__doc__)
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # One line per API request (httpx) and per watch event (kopf's "Handler ... succeeded"
        # for handlers that only enqueue): at 1,200 objects that was most of the operator's
        # output and a good share of its CPU. Reconcilers log what they change themselves.
        for noisy in ("httpx", "kopf.objects"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"modelyard-operator: invalid setting: {error}", file=sys.stderr)
        return 2
    assert watch.start is not None  # registers the handlers
    start_http_server(settings.metrics_port)
    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
