"""The ``heml`` command line: serve, models, predict, keys, demo (and train/audit/bench).

Thin by design: argparse, then one library call. Exit codes: 0 success, 1 a failed remote call
or runtime failure, 2 bad usage or bad input; failures print one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

from ._version import __version__
from .errors import HemlError, InputError, KeyFileError, ModelError, RemoteError

DEFAULT_PORT = 50051


class CliError(Exception):
    """A failure with its exit code and one-line reason."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> int:
    from .server.options import ServerConfig
    from .server.supervisor import NoModelsError, Supervisor, configure_logging

    configure_logging(args.log_level)
    try:
        config = ServerConfig(
            models_dir=str(Path(args.models).resolve()),
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
            max_concurrent_rpcs=args.max_concurrent_rpcs,
            reload_seconds=args.reload_seconds,
            drain_seconds=args.drain_seconds,
            grace_seconds=args.grace_seconds,
            api_keys=args.api_keys,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
            max_samples_per_request=args.max_samples_per_request,
            state=args.state,
        )
    except ValueError as exc:  # inconsistent flags (e.g. --tls-cert without --tls-key)
        raise CliError(str(exc)) from exc
    try:
        return Supervisor(config).run()
    except (NoModelsError, HemlError) as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        raise CliError(str(exc), 1) from exc


# ---------------------------------------------------------------------- models
def _client(args: argparse.Namespace, keys=None):
    from .client import Client

    def pem(path, flag):
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read {flag} {path}: {exc.strerror}") from None

    if (args.cert is None) != (args.key is None):
        raise CliError("--cert and --key go together (client certificate and its private key)")
    from .errors import InsecureTransport

    try:
        return Client(
            args.server,
            keys=keys,
            api_key=args.api_key,
            timeout=args.timeout,
            root_certificates=pem(args.ca, "--ca"),
            client_cert=pem(args.cert, "--cert"),
            client_key=pem(args.key, "--key"),
            insecure=args.insecure,
        )
    except InsecureTransport:
        raise CliError(
            f"refusing a plaintext connection to {args.server}: pass --ca PEM (the server's "
            "CA) for TLS, or --insecure to accept that the network can read and impersonate it"
        ) from None


def cmd_models(args: argparse.Namespace) -> int:
    with _client(args) as client:
        models = client.models()
        server = client.server_info()
    if args.json:
        print(json.dumps([_model_summary(m) for m in models], indent=1))
        return 0
    rows = [("MODEL", "VERSION", "TASK", "FEATURES", "OUTPUTS", "DP GUARANTEE", "AUDIT")]
    for m in models:
        dp = "not private"
        if m.is_private:  # the mechanism and the rest of the DP block: --json
            dp = f"ε={m.dp.get('epsilon'):g}, δ={m.dp.get('delta'):g}"
        audit = "-"
        if m.audit:
            lb = m.audit.get("epsilon_lower_bound")
            audit = f"ε_lb={lb:.2f}" if isinstance(lb, int | float) else "attached"
        rows.append(
            (m.name, str(m.version), m.task, str(m.n_features), str(m.n_outputs), dp, audit)
        )
    rows = [tuple(_fit(cell, 28) for cell in r) for r in rows]  # the table fits 100 columns
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    print(
        f"\n{len(models)} model(s) on {args.server} (heml {server.server_version}, protocol "
        f"{server.protocol_version}, TenSEAL {server.tenseal_version})"
    )
    return 0


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _model_summary(m) -> dict:
    return {
        "name": m.name,
        "version": m.version,
        "task": m.task,
        "n_features": m.n_features,
        "n_outputs": m.n_outputs,
        "classes": None if m.classes is None else [str(c) for c in m.classes],
        "inputs": m.input_names,
        "dp": m.dp,
        "audit": m.audit,
        "layouts": {k: p.to_dict() for k, p in m.plans.items()},
    }


# ---------------------------------------------------------------------- predict
def _read_header(path: Path) -> list[str]:
    import pandas as pd

    try:
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except pd.errors.EmptyDataError:
        raise CliError(f"{path} is empty: expected a CSV file with a header row") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot parse {path} as CSV: {str(exc).strip()}") from None


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from .links import finish_predict, finish_predict_proba

    path = None if args.file == "-" else Path(args.file)
    if path is not None and not path.is_file():
        raise CliError(f"no such file: {path}")
    if args.chunk_size < 1:
        raise CliError(f"--chunk-size must be at least 1, got {args.chunk_size}")
    source = sys.stdin.buffer if path is None else path
    label = "stdin" if path is None else path.name
    keep = [c for c in (args.keep or "").split(",") if c]
    header = None if path is None else _read_header(path)  # checked before any network call
    if header is not None:
        missing_keep = [c for c in keep if c not in header]
        if missing_keep:
            raise CliError(f"--keep names column(s) not in {label}: {', '.join(missing_keep)}")
    keys = args.keys
    if keys is not None and not Path(keys).exists():
        raise CliError(f"key file {keys} does not exist (create it with `heml keys generate`)")
    output = Path(args.output) if args.output else None
    with _client(args, keys=keys) as client:
        model = client.model(args.model, args.version)
        info = model.info
        if header is not None:
            _check_columns(header, keep, info, label)
        try:
            reader = pd.read_csv(source, chunksize=args.chunk_size)
        except pd.errors.EmptyDataError:
            raise CliError(f"{label} is empty: expected a CSV file with a header row") from None
        rows = 0
        # the output appears only complete: rows go to a temporary file beside it, renamed
        # over it once every chunk was scored (a failed run leaves no partial file)
        out, tmp = (sys.stdout, None) if output is None else _temporary_beside(output)
        progress = _progress(None if path is None else _count_rows(path), args.quiet)
        try:
            try:
                for i, chunk in enumerate(reader):
                    if i == 0 and header is None:
                        _check_columns([str(c) for c in chunk.columns], keep, info, label)
                    try:
                        scores = model.scores(chunk[info.input_names])
                    except InputError as exc:
                        # CSV line numbers: line 1 is the header, data row 0 is line 2
                        raise CliError(
                            exc.located(lambda r, base=rows: f"line {base + r + 2} of {label}")
                        ) from None
                    result = pd.DataFrame({c: chunk[c].to_numpy() for c in keep})
                    pred = finish_predict(
                        scores, info.task, info.link, info.classes, info.output_ndim
                    )
                    if np.ndim(pred) == 2:
                        for j in range(pred.shape[1]):
                            result[f"prediction_{j}"] = pred[:, j]
                    else:
                        result["prediction"] = pred
                    if info.task != "regression" and info.link != "none":
                        proba = finish_predict_proba(scores, info.task, info.link)
                        for j, label_j in enumerate(info.classes):
                            result[f"proba_{label_j}"] = proba[:, j]
                    result.to_csv(out, header=(i == 0), index=False)
                    rows += len(chunk)
                    progress.update(len(chunk))
            except (pd.errors.ParserError, UnicodeDecodeError) as exc:
                raise CliError(f"cannot parse {label} as CSV: {str(exc).strip()}") from None
            if tmp is not None:
                out.flush()
                os.fsync(out.fileno())
                out.close()
                os.replace(tmp, output)
                tmp = None
        finally:
            progress.close()
            if tmp is not None:
                out.close()
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
    if not args.quiet:
        dest = args.output or "stdout"
        print(f"scored {rows} row(s) with {info.name} v{info.version} -> {dest}", file=sys.stderr)
    return 0


def _check_columns(header: list[str], keep: list[str], info, label: str) -> None:
    missing_keep = [c for c in keep if c not in header]
    if missing_keep:
        raise CliError(f"--keep names column(s) not in {label}: {', '.join(missing_keep)}")
    missing = [c for c in info.input_names if c not in header]
    if missing:
        shown = ", ".join(missing[:10]) + (
            f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        raise CliError(f"{label} lacks column(s) model {info.name!r} needs: {shown}")


def _temporary_beside(path: Path):
    """An open text file beside ``path`` (same folder, so the final rename is atomic)."""
    import tempfile

    folder = path.parent
    if not folder.is_dir():
        raise CliError(f"-o {path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    return os.fdopen(fd, "w", newline="", encoding="utf-8"), tmp


def _count_rows(path: Path) -> int | None:
    """Data rows of a CSV file (lines after the header), for the progress bar; None if big."""
    if path.stat().st_size > 256 << 20:
        return None
    lines, last = 0, b"\n"
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return max(0, lines + (last != b"\n") - 1)


def _progress(total: int | None, quiet: bool):
    """Rows scored, on stderr, only for a person watching a terminal."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit=" rows",
        unit_scale=True,
        desc="scoring",
        file=sys.stderr,
        disable=quiet or not sys.stderr.isatty(),
        mininterval=0.5,
        delay=0.5,  # nothing is drawn for calls that end (or fail) within half a second
    )


# ---------------------------------------------------------------------- keys
def cmd_keys_generate(args: argparse.Namespace) -> int:
    from .he.keys import KeySet

    out = Path(args.out)
    if out.exists() and not args.force:
        raise CliError(f"{out} exists; pass --force to replace it (old replies become unreadable)")
    KeySet().save(out)
    print(
        f"wrote a master secret to {out} (mode 0600): a key per server and model is derived "
        "from it; keep it private",
        file=sys.stderr,
    )
    return 0


# ---------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(epsilon=args.epsilon, private=not args.no_dp, workers=args.workers)


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="heml",
        description="Differentially private linear models, scored on CKKS-encrypted features.",
    )
    p.add_argument("-V", "--version", action="version", version=f"heml {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser(
        "serve",
        help="serve a folder of model files over gRPC",
        description=(
            "Serve every *.json model file in a folder over gRPC. Clients send CKKS-encrypted "
            "features; the server scores ciphertexts and never holds a secret key. Files added "
            "or replaced in the folder are picked up without a restart."
        ),
    )
    s.add_argument("--models", required=True, metavar="DIR", help="folder of *.json model files")
    s.add_argument("--host", default="127.0.0.1", help="address to bind")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    s.add_argument(
        "--workers", type=int, default=1, help="worker processes (up to one per core pays off)"
    )
    s.add_argument("--max-concurrent-rpcs", type=int, default=64, help="calls in flight per worker")
    s.add_argument(
        "--max-samples-per-request",
        type=int,
        default=1 << 20,
        metavar="N",
        help="sample slots one call may compute",
    )
    s.add_argument(
        "--reload-seconds",
        type=float,
        default=2.0,
        help="seconds between re-reads of the model folder (0: never)",
    )
    s.add_argument(
        "--drain-seconds",
        type=float,
        default=1.0,
        help="on SIGTERM, seconds of health NOT_SERVING before new calls are refused",
    )
    s.add_argument(
        "--grace-seconds", type=float, default=30.0, help="on SIGTERM, seconds in-flight calls get"
    )
    sec = s.add_argument_group("security (docs/security.md)")
    sec.add_argument(
        "--api-keys", metavar="FILE", help="require API keys from FILE (`heml keys issue`)"
    )
    sec.add_argument("--tls-cert", metavar="PEM", help="server certificate chain (TLS only)")
    sec.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    sec.add_argument(
        "--tls-client-ca", metavar="PEM", help="require client certificates from this CA (mTLS)"
    )
    sec.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="serve Prometheus /metrics on PORT"
    )
    sec.add_argument(
        "--metrics-host",
        metavar="ADDR",
        help="address for /metrics (default 127.0.0.1, whatever --host is)",
    )
    s.add_argument(
        "--state",
        default="embedded",
        metavar="URL",
        help=(
            "where quotas, model-privacy keys and API-key revocations live: 'embedded' (this "
            "host) or redis://host:6379/0 (rediss:// for TLS), shared by every replica; "
            "'env' reads the URL from HEML_STATE_URL, keeping a password out of ps "
            "(docs/deploy.md)"
        ),
    )
    s.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="server log verbosity (stderr)",
    )
    s.set_defaults(func=cmd_serve)

    def remote(parser):
        server = os.environ.get("HEML_SERVER")
        parser.add_argument(
            "--server",
            required=server is None,
            default=server,
            metavar="HOST[:PORT]",
            help=f"the heml server (port {DEFAULT_PORT} when omitted; or set HEML_SERVER)",
        )
        parser.add_argument(
            "--api-key",
            default=os.environ.get("HEML_API_KEY"),
            help="API key, if the server requires one (or set HEML_API_KEY)",
        )
        parser.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
        parser.add_argument("--ca", metavar="PEM", help="CA that signed the server's certificate")
        parser.add_argument("--cert", metavar="PEM", help="TLS client certificate (mTLS)")
        parser.add_argument("--key", metavar="PEM", help="TLS client private key (mTLS)")
        parser.add_argument(
            "--insecure",
            action="store_true",
            help="allow plaintext to a server that is not on this machine (no TLS)",
        )

    m = sub.add_parser("models", help="list the models a server serves")
    remote(m)
    m.add_argument("--json", action="store_true", help="machine-readable output")
    m.set_defaults(func=cmd_models)

    pr = sub.add_parser("predict", help="score a CSV file under encryption")
    remote(pr)
    pr.add_argument("--model", required=True, help="name of the model (see `heml models`)")
    pr.add_argument("--version", type=int, default=None, help="model version (default: the latest)")
    pr.add_argument("file", metavar="FILE.csv", help="CSV file with a header row; - for stdin")
    pr.add_argument("-o", "--output", help="output CSV (default: stdout)")
    pr.add_argument("--keep", metavar="COL,…", help="input columns to copy into the output")
    pr.add_argument("--keys", metavar="FILE", help="key file from `heml keys generate`")
    pr.add_argument("--chunk-size", type=int, default=16384, help="rows per chunk (memory bound)")
    pr.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    pr.set_defaults(func=cmd_predict)

    k = sub.add_parser("keys", help="client HE key files; API keys (issue, revoke, list)")
    ksub = k.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    kg = ksub.add_parser("generate", help="create a secret-key file (mode 0600)")
    kg.add_argument("-o", "--out", required=True, metavar="FILE", help="key file to write")
    kg.add_argument("--force", action="store_true", help="replace an existing file")
    kg.set_defaults(func=cmd_keys_generate)
    from .server.auth_cli import register as register_api_keys

    register_api_keys(ksub)  # heml keys issue | revoke | list

    d = sub.add_parser("demo", help="train, serve and score encrypted, end to end, in one go")
    d.add_argument("--epsilon", type=float, default=1.0, help="DP budget of the demo model")
    d.add_argument("--no-dp", action="store_true", help="train without differential privacy")
    d.add_argument("--workers", type=int, default=1, help="server worker processes")
    d.set_defaults(func=cmd_demo)

    for module in ("heml.dp.cli", "heml.audit.cli", "heml.bench", "heml.healthcheck"):
        if importlib.util.find_spec(module.rsplit(".", 1)[0]) and importlib.util.find_spec(module):
            importlib.import_module(module).register(sub)
    _show_defaults(p)
    return p


class _DefaultsFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default is None
            or default is False
            or default in ("", argparse.SUPPRESS)
            or action.required
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Apply ``_DefaultsFormatter`` to a parser and all its subcommands (also those that the
    dp, audit and bench modules register)."""
    parser.formatter_class = _DefaultsFormatter
    for action in parser._actions:
        if action.help is None and action.option_strings and action.default not in (None, False):
            action.help = "(default: %(default)s)"  # argparse skips options without help
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _show_defaults(child)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"heml {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except (InputError, ModelError, KeyFileError) as exc:
        print(f"heml {args.command}: {exc}", file=sys.stderr)
        return 2
    except RemoteError as exc:
        print(f"heml {args.command}: {exc}", file=sys.stderr)
        return 1
    except HemlError as exc:
        print(f"heml {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"heml {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
