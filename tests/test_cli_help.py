"""Every option of every ``samtriton`` subcommand has help text that shows its default."""

import argparse
import subprocess
import sys

import pytest

from samtriton.tools.cli import HelpFormatter, build_parser, parsers


def test_every_option_has_help_and_shows_its_default():
    missing = []
    for parser in parsers(build_parser()):
        formatter = HelpFormatter(parser.prog)
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            text = formatter._get_help_string(action)
            if not (action.help or "").strip():
                missing.append(f"{parser.prog} {action.dest}: no help")
            elif action.option_strings and "default" not in text and "(required)" not in text:
                missing.append(f"{parser.prog} {action.option_strings[0]}: no default shown")
        parser.format_help()  # every %(default)s expands
    assert not missing, "\n".join(missing)


def test_help_lists_annotate_and_defaults():
    out = subprocess.run(
        [sys.executable, "-m", "samtriton.tools.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "annotate" in out.stdout
    for command, expected in (
        ("segment", "(default: 127.0.0.1:8001)"),
        ("annotate", "(default: 8080)"),
        ("annotate", "(required)"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "samtriton.tools.cli", command, "--help"], capture_output=True, text=True, check=True
        )
        assert expected in " ".join(out.stdout.split()), out.stdout


# What each subcommand's options default to, written out here so that a change to a parser
# shows up as a failure: --url / --model come from one parent parser, the AMG options from
# another, with annotate's coarser grid set in its own parser.
CONNECTION = dict(url="127.0.0.1:8001", model="sam")
AMG = dict(points_per_side=32, points_per_batch=64, pred_iou_thresh=0.88, stability_score_thresh=0.95)
DEFAULTS = [
    (
        ["segment", "a.png", "--out", "o"],
        dict(CONNECTION, timeout=60.0, **AMG, crop_n_layers=0, min_mask_region_area=0, auto=False, cutout=False),
    ),
    (
        ["annotate", "a.png", "--out", "o"],
        dict(
            CONNECTION, timeout=60.0, **dict(AMG, points_per_side=16), host="127.0.0.1", port=8080, label_studio_url=""
        ),
    ),
    (["bench", "server"], dict(CONNECTION, batches=[1, 8, 16], prompts=64, repeats=3, clients=4, image=None)),
    (["bench", "gpu"], dict(CONNECTION, batches=[1, 8, 16])),
    (
        ["bench", "compare"],
        dict(
            CONNECTION,
            repository=None,
            model_type="vit_t",
            checkpoint=None,
            repeats=5,
            clients=[1, 2, 4, 8],
            rounds=3,
            batch_prompts=64,
            amg_points_per_side=None,
            out="out/bench",
        ),
    ),
    (
        ["bench", "amg", "a.png"],
        dict(CONNECTION, model_type="vit_t", checkpoint=None, points_per_side=32, markdown=None),
    ),
    (
        ["serve", "--repository", "r"],
        dict(
            host="127.0.0.1",
            grpc_port=8001,
            http_port=8000,
            metrics_port=8002,
            startup_timeout=180.0,
            log_verbose=0,
            session_cache_dir=None,
            drain_timeout=30.0,
        ),
    ),
    (["drain"], dict(http_url="127.0.0.1:8000", timeout=30.0)),
    (
        ["export", "--repository", "r"],
        dict(
            name="sam",
            encoder_backend="python",
            decoder_backend="python",
            max_batch_size=8,
            session_instances=2,
            torch_device="cuda",
            precision="fp16",
            workspace_gib=4.0,
            reference_decoder=False,
        ),
    ),
]


@pytest.mark.parametrize("argv, expected", DEFAULTS, ids=[" ".join(argv[:2]) for argv, _ in DEFAULTS])
def test_defaults(argv, expected):
    args = vars(build_parser().parse_args(argv))
    assert {key: args.get(key, "absent") for key in expected} == expected


def test_compare_takes_a_url_or_a_repository_not_both(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["bench", "compare", "--url", "h:1", "--repository", "r"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
