"""What the subcommands share: the help formatter, the parent parsers of the connection and
automatic-mask options, and the expansion of image arguments into files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List

from samtriton import contract as C
from samtriton.transport import DEFAULT_TIMEOUT_S, DEFAULT_URL


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default: appended unless the help text already says it; a flag's is "off"."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if action.required:
            return f"{text} (required)"
        if action.default is None:
            return f"{text} (default: not set)"
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{text} (default: {'on' if action.default else 'off'})"
        return text + " (default: %(default)s)"


def parsers(parser: argparse.ArgumentParser):
    """``parser`` and all its subcommands' parsers, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases repeat a parser
                yield from parsers(child)


# Each function below returns a new parent parser: a subcommand's set_defaults changes the
# defaults of the option objects it was given, so two subcommands must never share them.


def connection_options(timeout: bool = False, or_repository: bool = False) -> argparse.ArgumentParser:
    """Parent parser of a subcommand that calls a running server: ``--url`` and ``--model``;
    with ``timeout``, ``--timeout`` (seconds per call); with ``or_repository``, ``--repository``
    as the alternative to ``--url`` (a model repository to serve in-process instead)."""
    parent = argparse.ArgumentParser(add_help=False)
    where = parent.add_mutually_exclusive_group() if or_repository else parent
    where.add_argument("--url", default=DEFAULT_URL, help="the samtriton server's gRPC address HOST:PORT")
    if or_repository:
        where.add_argument("--repository", help="serve this model repository on the embedded tritonserver instead")
    parent.add_argument("--model", default=C.DEFAULT_MODEL_NAME, help="deployment name on the server")
    if timeout:
        parent.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per server call")
    return parent


def amg_options(title: str = "automatic masks", crops: bool = False) -> argparse.ArgumentParser:
    """Parent parser of the automatic mask generator's options, under ``title`` in the help,
    with SamAutomaticMaskGenerator's defaults; with ``crops``, also its crop and clean-up options."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group(title)
    group.add_argument("--points-per-side", type=int, default=32, help="grid points per image side")
    group.add_argument("--points-per-batch", type=int, default=64, help="prompts per request")
    group.add_argument("--pred-iou-thresh", type=float, default=0.88, help="drop masks whose predicted IoU is lower")
    group.add_argument(
        "--stability-score-thresh", type=float, default=0.95, help="drop masks whose stability score is lower"
    )
    if crops:
        group.add_argument("--crop-n-layers", type=int, default=0, help="layers of image crops (0: none)")
        group.add_argument(
            "--min-mask-region-area",
            type=int,
            default=0,
            help="remove holes and islands smaller than this, in pixels (needs OpenCV)",
        )
    return parent


def amg_settings(args) -> dict:
    """The SamAutomaticMaskGenerator keyword arguments among parsed ``amg_options``."""
    names = (
        "points_per_side",
        "points_per_batch",
        "pred_iou_thresh",
        "stability_score_thresh",
        "crop_n_layers",
        "min_mask_region_area",
    )
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def image_paths(inputs: List[str], missing_ok: bool = False):
    """Image files of ``inputs`` (files, or folders' images). With ``missing_ok``, returns
    (paths, inputs that do not exist) instead of stopping at the first missing one."""
    suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
    paths, missing = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes))
        elif path.exists():
            paths.append(path)
        elif missing_ok:
            missing.append(item)
        else:
            raise SystemExit(f"samtriton: no such image or folder: {item}")
    return (paths, missing) if missing_ok else paths
