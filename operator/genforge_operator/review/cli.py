"""`genforge review MODEL[:VERSION] | --uri FOLDER`: rate samples 👍 / 👎 in a browser, then
fine-tune on the ratings.

1. Resolves the version as `genforge generate` does (kubeconfig and namespace as for kubectl);
2. generates ``--per-label`` samples of each label into the review folder — or reuses the
   samples already there when they are of the same model version (a folder holding another
   model's samples is refused: ratings never land in another model's file);
3. serves the review page (review/server.py) on 127.0.0.1:``--port``; ``--host`` anything
   else requires a token, printed once;
4. prints the `preference` FineTune the page's button creates, as YAML, for GitOps users.

The review folder is where the FineTune's trainer reads the ratings and images, so it must
be storage the trainer pods see: by default ``/data/feedback/<namespace>/<model>/<version>``
when the data volume is mounted at /data (the chart's review component, or `genforge local`
with ``GENFORGE_PATH_MAP`` exported as it prints), else ``./genforge-review/…`` — then give
``--feedback-uri`` (the folder as the pods see it) or copy the folder there yourself.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from ..config import OperatorConfig
from .finetune import DEFAULT_LEARNING_RATE, DEFAULT_STEPS, FineTuneRequest, manifest, source_of, to_yaml
from .server import SAMPLES, ReviewApp, is_loopback, read_samples

DATA_MOUNT = "/data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", metavar="MODEL[:VERSION]",
                        help="a GenModel (and version: pinned, else promoted, else latest)")
    parser.add_argument("--uri", help="a model folder instead (no fine-tune offered: no GenModel to add it to)")
    parser.add_argument("--namespace", "-N", default=None, help="the GenModel's namespace (default: kubeconfig's)")
    parser.add_argument("--per-label", type=int, default=8, help="samples per label (default 8)")
    parser.add_argument("--prompt", help="prompt for a stable-diffusion model")
    parser.add_argument("--seed", type=int, default=0, help="sample i uses seed+i (default 0)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM sampling steps (default 25)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dir", help="review folder: samples, images and ratings.jsonl (default: see above)")
    parser.add_argument("--data-root", default=DATA_MOUNT,
                        help=f"where the data volume is mounted in trainer pods (default {DATA_MOUNT})")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; others need the token)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    parser.add_argument("--rater", default=None, help="default rater name on the page (default: your login)")
    parser.add_argument("--dataset", help="the FineTune's datasetRef (default: the Dataset of the run that made "
                                          "the version)")
    parser.add_argument("--feedback-uri", help="ratings.jsonl as the trainer pods see it (default: file:// of the "
                                               "folder, mapped back through GENFORGE_PATH_MAP)")
    parser.add_argument("--finetune-steps", type=int, default=DEFAULT_STEPS, help=f"default {DEFAULT_STEPS}")
    parser.add_argument("--learning-rate", type=float, default=DEFAULT_LEARNING_RATE,
                        help=f"default {DEFAULT_LEARNING_RATE:g} (measured: docs/benchmarks.md)")
    parser.add_argument("--beta", type=float, default=None, help="preference.beta (default: the CRD's, 5000)")
    parser.add_argument("--print-yaml", action="store_true",
                        help="print the FineTune for the folder's ratings and exit (no server)")


# ---------------------------------------------------------------------------- paths


def _path_map() -> dict[str, str]:
    try:
        mapping = OperatorConfig.from_env().path_map()
    except ValueError as exc:
        raise SystemExit(f"genforge review: {exc}") from exc
    return {k.rstrip("/") or "/": v for k, v in mapping.items()}


def to_local(pod_path: str) -> Path:
    """A path as pods see it → this machine's (through GENFORGE_PATH_MAP, longest prefix)."""
    best = max((m for m in _path_map() if pod_path == m or pod_path.startswith(m.rstrip("/") + "/")),
               key=len, default=None)
    if best is None:
        return Path(pod_path)
    return Path(_path_map()[best]) / pod_path[len(best):].lstrip("/")


def to_pod(local: Path) -> str:
    """This machine's path → as pods see it (the reverse of GENFORGE_PATH_MAP; itself otherwise)."""
    local = local.resolve()
    for mount, folder in sorted(_path_map().items(), key=lambda kv: -len(kv[1])):
        root = Path(folder).resolve()
        if local == root or root in local.parents:
            rest = local.relative_to(root).as_posix()
            return mount if rest == "." else f"{mount.rstrip('/')}/{rest}"
    return str(local)


def default_folder(namespace: str, model: str, version: str, data_root: str = DATA_MOUNT) -> Path:
    data = to_local(data_root)
    if data.is_dir() and os.access(data, os.W_OK):
        return to_local(f"{data_root.rstrip('/')}/feedback/{namespace}/{model}/{version}")
    return Path("genforge-review") / namespace / model / version


# ---------------------------------------------------------------------------- cluster


def _namespace(given: str | None) -> str:
    if given:
        return given
    from kubernetes import config as kube_config

    try:
        return kube_config.list_kube_config_contexts()[1]["context"].get("namespace") or "default"
    except (kube_config.ConfigException, OSError, KeyError, TypeError):
        return "default"


def _resolve(ref: str, namespace: str) -> tuple[dict[str, Any], Any, Any]:
    from ..api import parse_resource
    from ..kube import Kube
    from ..plan import Blocked, resolve_model_version

    kube = Kube.from_env()
    name, _, version = ref.partition(":")
    body = kube.get("GenModel", namespace, name)
    if body is None:
        raise LookupError(f"GenModel {namespace}/{name} not found")
    chain = resolve_model_version(parse_resource(body), version or None)
    if isinstance(chain, Blocked):
        raise LookupError(chain.message)
    return body, chain, kube


def run(args: argparse.Namespace) -> int:
    if bool(args.model) == bool(args.uri):
        print("genforge review: give MODEL[:VERSION] or --uri FOLDER (one of them)", file=sys.stderr)
        return 2
    if args.per_label < 1:
        print("genforge review: --per-label must be at least 1", file=sys.stderr)
        return 2
    try:
        return _run(args)
    except LookupError as exc:
        print(f"genforge review: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    offer: FineTuneRequest | None = None
    unavailable: str | None = None
    kube = None
    if args.uri:
        uri, adapters, name, version, namespace = args.uri, (), "", "", ""
        digest = hashlib.sha256(args.uri.encode()).hexdigest()[:12]
        folder = Path(args.dir) if args.dir else Path("genforge-review") / f"uri-{digest}"
        unavailable = "a model folder (--uri) has no GenModel to add a fine-tuned version to"
    else:
        namespace = _namespace(args.namespace)
        body, chain, kube = _resolve(args.model, namespace)
        uri, adapters, name, version = chain.uri, chain.adapters, body["metadata"]["name"], chain.version
        folder = Path(args.dir) if args.dir else default_folder(namespace, name, version, args.data_root)

    existing = read_samples(folder) if (folder / SAMPLES).is_file() else []
    if existing:
        first = existing[0]
        if (first.get("model"), first.get("version"), first.get("uri")) != (name, version, uri):
            theirs = f"{first.get('model')}:{first.get('version')}" if first.get("model") else first.get("uri")
            print(f"genforge review: {folder} holds samples of {theirs}, not of "
                  f"{f'{name}:{version}' if name else uri}; choose another --dir (ratings of one model never "
                  f"go into another's file)", file=sys.stderr)
            return 1
        print(f"reusing {len(existing)} samples in {folder}", flush=True)
    elif args.print_yaml:
        print(f"genforge review: {folder} has no samples yet", file=sys.stderr)
        return 1
    else:
        try:
            from genforge_trainer.exitcodes import TrainerError
            from genforge_trainer.generate import generate
        except ImportError as exc:
            print(f"genforge review needs the trainer package to generate samples "
                  f"(pip install 'genforge[trainer]'): {exc}", file=sys.stderr)
            return 2
        try:
            records = generate(uri, folder, per_label=args.per_label, seed=args.seed, steps=args.steps,
                               prompt=args.prompt, adapters=adapters, model_name=name, version=version,
                               device=args.device)
        except TrainerError as exc:
            print(f"genforge review: {exc}", file=sys.stderr)
            return 1
        print(f"generated {len(records)} samples into {folder}", flush=True)

    if kube is not None:
        found = source_of(body, version, lambda kind, n: kube.get(kind, namespace, n))
        dataset = args.dataset or found.get("dataset")
        feedback = args.feedback_uri or f"file://{to_pod(folder)}/ratings.jsonl"
        offer = FineTuneRequest(namespace=namespace, model=name, version=version, dataset=dataset or "",
                                feedback_uri=feedback, steps=args.finetune_steps,
                                learning_rate=args.learning_rate, beta=args.beta,
                                hardware=found.get("hardware"), budget=found.get("budget"))
        if not dataset:
            unavailable = (f"the run that made {name}:{version} is gone, so its Dataset is unknown: "
                           f"start genforge review with --dataset NAME")
    if args.print_yaml:
        if offer is None or unavailable:
            print(f"genforge review: {unavailable}", file=sys.stderr)
            return 1
        print(to_yaml(manifest(offer)), end="")
        return 0

    token = None if is_loopback(args.host) else secrets.token_urlsafe(24)
    app = ReviewApp(folder, token=token, loopback_only=is_loopback(args.host), finetune=offer,
                    finetune_unavailable=unavailable, cluster=(lambda: _clusters(kube)) if kube else None,
                    default_rater=args.rater if args.rater is not None else _login())
    return serve(app, args.host, args.port, offer=offer, unavailable=unavailable)


def _clusters(kube):
    from .finetune import ClusterFineTunes

    return ClusterFineTunes(kube.api_client)


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def serve(app: ReviewApp, host: str, port: int, *, offer: FineTuneRequest | None, unavailable: str | None) -> int:
    import asyncio

    from aiohttp import web

    async def main() -> None:
        runner = web.AppRunner(app.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        shown = "127.0.0.1" if is_loopback(host) else host
        url = f"http://{shown if ':' not in shown else f'[{shown}]'}:{bound}/"
        if app.token:
            print(f"review page: {url}?token={app.token}\n(the token is printed this once; every request needs it)",
                  flush=True)
        else:
            print(f"review page: {url}", flush=True)
        print(f"ratings: {app.journal.path} (append-only; the preference FineTune's feedback format)", flush=True)
        if offer is not None and not unavailable:
            print("the page's 'fine-tune on these ratings' creates this FineTune (GitOps: commit it instead):\n"
                  + to_yaml(manifest(offer)), flush=True)
        elif unavailable:
            print(f"no fine-tune offered: {unavailable}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"genforge review: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0
