"""Start the ti-studio web UI: flags -> AppServices -> ui.build_app(services).launch()."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="ti-studio web UI")
    parser.add_argument("--model", default=None, help="diffusers folder, .safetensors/.ckpt, hub id, or 'demo' "
                        "(default: first checkpoint in models/Stable-diffusion, else demo)")
    parser.add_argument("--model-config", default=None, help="local diffusers folder with configs for a single-file checkpoint")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--listen", action="store_true", help="bind 0.0.0.0 (default: 127.0.0.1 only)")
    parser.add_argument("--gradio-auth", default=None, help="user:password (comma-separate several)")
    parser.add_argument("--api", action="store_true", help="also serve A1111's HTTP API (/sdapi/v1/…, /docs) on the "
                        "same port")
    parser.add_argument("--api-auth", default=None, help="user:password[,…] for HTTP Basic on every /sdapi route "
                        "(default: --gradio-auth's logins, if any)")
    parser.add_argument("--cors-allow-origins", default=None, help="with --api: origins (comma-separated) whose web "
                        "pages may call the server from a browser (default: none beyond Gradio's localhost rule)")
    parser.add_argument("--data-root", default=".", help="with --listen and no --gradio-auth, the folder fields of "
                        "the page (preprocess source/destination, dataset folder) must lie inside this folder "
                        "(default: the working directory)")
    parser.add_argument("--embeddings-dir", default="embeddings")
    parser.add_argument("--hypernetwork-dir", default="models/hypernetworks")
    parser.add_argument("--models-dir", default="models/Stable-diffusion")
    parser.add_argument("--outputs-dir", default="outputs")
    parser.add_argument("--log-dir", default="textual_inversion")
    parser.add_argument("--templates-dir", default="textual_inversion_templates")
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", choices=["full", "half", "bf16"], default=None)
    parser.add_argument("--no-half", action="store_true", help="same as --precision full")
    return parser.parse_args(argv)


def parse_auth(text: str | None) -> list[tuple[str, str]] | None:
    """`user:pass[,user2:pass2]` -> [(user, pass), …]; None when no login is asked for."""
    if not text:
        return None
    pairs = []
    for item in text.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:  # an empty password would be a login anyone passes
            raise SystemExit(f"--gradio-auth: expected user:password with both parts, got {item.strip()!r}")
        pairs.append((user, password))
    return pairs


def api_credentials(args: argparse.Namespace) -> list[tuple[str, str]] | None:
    """The logins /sdapi asks for: --api-auth, else --gradio-auth's (the page's login covers the API too)."""
    if args.api_auth:
        try:
            return parse_auth(args.api_auth)
        except SystemExit as error:
            raise SystemExit(str(error).replace("--gradio-auth", "--api-auth")) from None
    return parse_auth(args.gradio_auth)


def defer_gradio_cors(server_app) -> None:
    """Let our CORSMiddleware decide: Gradio's own CORS layer answers preflights itself (localhost
    only) unless its parent app configures CORS, which is how it sees a mounted app's middleware."""
    from types import SimpleNamespace

    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware

    layer = server_app.middleware_stack
    while layer is not None:
        if type(layer).__name__ == "CustomCORSMiddleware":
            layer.parent_app = SimpleNamespace(user_middleware=[Middleware(CORSMiddleware)])
            layer._parent_configures_cors = None
            return
        layer = getattr(layer, "app", None)
    raise RuntimeError("Gradio's CORS layer was not found: --cors-allow-origins cannot take effect")


def server_options(args: argparse.Namespace) -> dict:
    """Where and how the server listens: 127.0.0.1 only, unless --listen; a login with --gradio-auth."""
    return {
        "server_name": "0.0.0.0" if args.listen else "127.0.0.1",
        "server_port": args.port,
        "auth": parse_auth(args.gradio_auth),
    }


def data_root_for(args: argparse.Namespace) -> Path | None:
    """The folder the page's folder fields are confined to: only when anyone on the network can
    use the page (--listen without a login); None (no confinement) otherwise."""
    if args.listen and not args.gradio_auth:
        return Path(args.data_root).resolve()
    return None


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    server_options(args)  # a malformed --gradio-auth stops here, before the model loads
    api_logins = api_credentials(args)
    from ti.config import ModelConfig
    from ti.errors import TIError
    from ti.pipeline import default_model_source
    from ui import build_app
    from ui.services import AppPaths, AppServices

    paths = AppPaths(
        embeddings_dir=Path(args.embeddings_dir), models_dir=Path(args.models_dir),
        hypernetwork_dir=Path(args.hypernetwork_dir), outputs_dir=Path(args.outputs_dir),
        log_dir=Path(args.log_dir), templates_dir=Path(args.templates_dir), data_root=data_root_for(args),
    )
    for folder in (paths.embeddings_dir, paths.models_dir, paths.hypernetwork_dir):
        folder.mkdir(parents=True, exist_ok=True)
    precision = "full" if args.no_half else args.precision
    source = args.model or default_model_source(paths.models_dir)
    try:
        services = AppServices.create(paths, ModelConfig(model=source, model_config=args.model_config,
                                                         device=args.device, precision=precision))
    except TIError as exc:
        if source == "demo":
            raise
        print(f"error: {exc}\nstarting with the demo model instead", file=sys.stderr)
        services = AppServices.create(paths, ModelConfig(model="demo", device=args.device, precision=precision))
    if services.model.is_demo:
        print("ti-studio: using the built-in demo model (noise pictures); put a checkpoint in "
              f"{paths.models_dir}/ or pass --model", file=sys.stderr)
    if paths.data_root is not None:
        print(f"ti-studio: open to the network without a login; folder fields are kept inside {paths.data_root} "
              "(--data-root)", file=sys.stderr)
    app = build_app(services)
    app.queue(default_concurrency_limit=4)
    launch_options = dict(**server_options(args),
                          allowed_paths=[str(paths.outputs_dir.resolve()), str(paths.log_dir.resolve())],
                          footer_links=["api", "settings"])
    if not args.api:
        app.launch(**launch_options)
        return 0
    # A1111's way: start the page without blocking, add the API's routes to its FastAPI app, wait.
    from ui.api import build_api_router, redacted_flags

    app_kwargs: dict = {"docs_url": "/docs"}
    origins = [origin.strip() for origin in (args.cors_allow_origins or "").split(",") if origin.strip()]
    if origins:  # only when asked: a page elsewhere must not drive this machine by default
        from starlette.middleware import Middleware
        from starlette.middleware.cors import CORSMiddleware

        app_kwargs["middleware"] = [Middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"],
                                               allow_headers=["*"], allow_credentials=True)]
    server_app, _, _ = app.launch(**launch_options, prevent_thread_lock=True, app_kwargs=app_kwargs)
    if origins:
        defer_gradio_cors(server_app)
    server_app.include_router(build_api_router(services, api_logins, redacted_flags(args)))
    server_app.add_api_route("/internal/ping", lambda: {}, methods=["GET"])
    print(f"ti-studio: A1111 API on /sdapi/v1 ({'HTTP Basic login' if api_logins else 'no login'}); /docs lists it",
          file=sys.stderr)
    app.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
