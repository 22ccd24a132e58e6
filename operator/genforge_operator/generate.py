"""`genforge generate MODEL[:VERSION] | --uri FOLDER`: images from a trained model version.

Resolves the version as a FineTune does (pinned, else promoted, else latest; a LoRA adapter
version is followed to its complete model and merged) from the GenModel in the cluster
(kubeconfig and namespace as for kubectl), or takes a model folder with `--uri`; then the
trainer package generates: N PNGs plus `samples.jsonl` (file, seed, label/prompt, model,
version, steps), image i from seed+i. Needs `genforge[trainer]` (torch, diffusers).
"""

from __future__ import annotations

import argparse
import sys

from .api import parse_resource
from .plan import Blocked, resolve_model_version


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", metavar="MODEL[:VERSION]",
                        help="a GenModel (and version: pinned, else promoted, else latest)")
    parser.add_argument("--uri", help="a model folder instead (a version's …/model), e.g. file:///data/runs/…/model")
    parser.add_argument("-n", "--count", type=int, default=16, help="images (default 16)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--label", help="class label (class-conditional unet2d-ddpm; default: each label in turn)")
    what.add_argument("--prompt", help="text prompt (stable-diffusion)")
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed+i (default 0)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM sampling steps (default 25)")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="classifier-free guidance (a model trained with classDropout; 1: none; "
                             "default: the GenModel's config.guidanceScale, 1 with --uri)")
    parser.add_argument("-o", "--output", required=True, help="folder for the PNGs and samples.jsonl")
    parser.add_argument("--namespace", "-N", default=None, help="the GenModel's namespace (default: kubeconfig's)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def _from_cluster(ref: str, namespace: str | None) -> tuple[str, tuple[str, ...], str, str, float]:
    from kubernetes import config as kube_config

    from .kube import Kube

    name, _, version = ref.partition(":")
    if namespace is None:
        try:
            namespace = kube_config.list_kube_config_contexts()[1]["context"].get("namespace") or "default"
        except (kube_config.ConfigException, OSError, KeyError, TypeError):
            namespace = "default"
    body = Kube.from_env().get("GenModel", namespace, name)
    if body is None:
        raise LookupError(f"GenModel {namespace}/{name} not found")
    model = parse_resource(body)
    chain = resolve_model_version(model, version or None)
    if isinstance(chain, Blocked):
        raise LookupError(chain.message)
    return chain.uri, chain.adapters, name, chain.version, model.spec.config.guidance_scale


def run(args: argparse.Namespace) -> int:
    if bool(args.model) == bool(args.uri):
        print("genforge generate: give MODEL[:VERSION] or --uri FOLDER (one of them)", file=sys.stderr)
        return 2
    try:
        from genforge_trainer.exitcodes import TrainerError
        from genforge_trainer.generate import generate
    except ImportError as exc:
        print(f"genforge generate needs the trainer package (pip install 'genforge[trainer]'): {exc}", file=sys.stderr)
        return 2
    try:
        if args.uri:
            uri, adapters, name, version, guidance = args.uri, (), "", "", 1.0
        else:
            uri, adapters, name, version, guidance = _from_cluster(args.model, args.namespace)
        records = generate(uri, args.output, count=args.count, seed=args.seed, steps=args.steps, label=args.label,
                           prompt=args.prompt, adapters=adapters, model_name=name, version=version,
                           device=args.device,
                           guidance_scale=args.guidance_scale if args.guidance_scale is not None else guidance)
    except (LookupError, TrainerError) as exc:
        print(f"genforge generate: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(records)} images and samples.jsonl to {args.output}"
          + (f" ({name} {version})" if name else ""))
    return 0
