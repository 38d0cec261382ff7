"""`python -m modelyard_server --model PATH [--name NAME] [--port 8080]`.

Every setting also comes from the environment (MODELYARD_SERVER_<FIELD>, see config.py);
command-line options win over the environment.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from modelyard_server.config import ServerSettings, SettingsError, env_name
from modelyard_server.contracts import EXIT_CONFIG_ERROR

# Short spellings for the options people type most; every field also has --field-name.
_SHORT = {"model_path": "--model", "model_name": "--name", "model_version": "--model-version"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modelyard_server",
        description="Serve an ONNX model over the Open Inference Protocol v2 (HTTP).",
    )
    for name, info in ServerSettings.model_fields.items():
        flags = [f"--{name.replace('_', '-')}"]
        if name in _SHORT:
            flags.insert(0, _SHORT[name])
        if info.default_factory is not None:
            default = "derived, see above"
        else:
            default = info.default if info.default is not None else "unset"
        parser.add_argument(
            *flags,
            dest=name,
            default=None,
            metavar=name.upper(),
            help=f"{info.description} [env {env_name(name)}; default {default}]",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    args = build_parser().parse_args(argv)
    try:
        settings = ServerSettings.from_env(os.environ, **vars(args))
    except SettingsError as exc:
        from modelyard_server.termination import DEFAULT_TERMINATION_LOG, report_load_failure

        target = (
            vars(args).get("termination_log")
            or os.environ.get(env_name("termination_log"))
            or DEFAULT_TERMINATION_LOG
        )
        report_load_failure(target, "InvalidConfig", str(exc))
        return EXIT_CONFIG_ERROR
    # Imported only now: `--help` and config errors should not pay for onnxruntime.
    from modelyard_server.serve import serve

    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
