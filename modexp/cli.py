"""`modexp sweep | plan | train | analyze | sample | prepare | bench`.

A thin argparse front end: our own flags are parsed here, everything else is a Hydra override
(`key=value`, comma lists to sweep), and each command hands over to the module that owns it (studies: sweep,
plan tables: plan_view, runs: train and launch). Bad input ends in one line on stderr and exit status 2.

Each command imports its owner inside its function, on purpose: modexp.config loads Hydra and torch (through
modexp.model), seconds that `modexp --help`, `status` and shell completion should not pay.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
from pathlib import Path

from .errors import ModexpError, Terminated

FORMATS = ("table", "csv", "json")


def cmd_plan(args: argparse.Namespace, overrides: list[str]) -> int:
    from .plan_view import print_plan
    from .sweep import build_study

    print_plan(build_study(overrides), args.format, args.convention)
    return 0


def print_composed(overrides: list[str], which: str) -> int:
    """`--cfg job|all`: the composed config (one YAML document per comma combination), nothing run."""
    from omegaconf import OmegaConf

    from .config import compose_config, expand_overrides

    combos = expand_overrides(overrides)
    for i, combo in enumerate(combos):
        cfg = compose_config(combo, export=False, with_hydra=which == "all")
        if len(combos) > 1:
            print(f"--- # {' '.join(combo)}" if i else f"# {' '.join(combo)}")
        print(OmegaConf.to_yaml(cfg, resolve=which == "job"), end="")
    return 0


def cmd_sweep(args: argparse.Namespace, overrides: list[str]) -> int:
    from . import launch
    from .plan_view import print_plan, warnings
    from .sweep import build_study, check_data, run_sweep

    study = build_study(overrides, to_train=True)
    if args.dry_run:
        check_data(study, dry_run=True)  # a study that cannot start must not pass its dry run
        print_plan(study, "table")
        cfg = study.configs[0][1]
        line = launch.get(cfg.launcher.name).describe(cfg)
        if line:
            print(line)
        return 0
    for line in warnings(study):  # the dry run's table shows them; a real sweep says them before it starts
        print(line, file=sys.stderr)
    return run_sweep(
        study, overrides, retry_failed=args.retry_failed, fail_fast=args.fail_fast, detach=args.detach
    )


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> int:
    from .sweep import train_single

    # The log already said "done <run>: val_loss ..."; stdout carries the folder, for scripts.
    print(train_single(overrides))
    return 0


def cmd_status(args: argparse.Namespace, overrides: list[str]) -> int:
    import pandas as pd

    from .status import format_study, run_rows, studies, study_line

    if args.sweep_dir and "=" in args.sweep_dir:  # `modexp status runs_dir=X`: an override, not a folder
        overrides, args.sweep_dir = [args.sweep_dir, *overrides], None
    if args.sweep_dir:
        rows = run_rows(Path(args.sweep_dir))
        if args.format == "json":
            print(json.dumps(rows, indent=2))
        elif args.format == "csv":
            print(pd.DataFrame(rows).to_csv(index=False), end="")
        else:
            print(format_study(Path(args.sweep_dir), rows))
        return 0
    runs_dir = Path(next((o.split("=", 1)[1] for o in overrides if o.startswith("runs_dir=")), "runs"))
    found = studies(runs_dir)
    if not found:
        print(f"no studies under {runs_dir} (a study is a folder with a plan.json, written by modexp sweep)")
    for folder in found:
        print(study_line(folder, as_json=args.format != "table"))
    return 0


def completion_words() -> dict[str, list[str]]:
    """What a shell may complete: commands with their flags, presets (group=NAME) and every setting (key=)."""
    from omegaconf import OmegaConf

    from .config import CONF_DIR, Config

    def keys(node, prefix: str = "") -> list[str]:
        out = []
        for key in node.keys():
            child = node._get_node(key)
            name = f"{prefix}{key}"
            out += keys(child, f"{name}.") if OmegaConf.is_dict(child) and len(child) else [f"{name}="]
        return out

    presets = [
        f"{group.name}={yaml.stem}"
        for group in sorted(CONF_DIR.iterdir())
        if group.is_dir()
        for yaml in sorted(group.glob("*.yaml"))
    ]
    commands = {}
    for name, sub in parser()._subparsers._group_actions[0].choices.items():  # type: ignore[union-attr]
        commands[name] = sorted(o for a in sub._actions for o in a.option_strings if o.startswith("--"))
    return {"commands": commands, "settings": presets + keys(OmegaConf.structured(Config))}


# The word under the cursor is read from COMP_LINE, not COMP_WORDS: bash splits words at '=' (COMP_WORDBREAKS),
# so `sweep=<TAB>` would otherwise complete file names. Bash then replaces only the text after the last '=',
# so the matches are handed over without the `key=` before it. A setting (`key=`) takes no trailing space.
# Only sweep, plan and train take settings; status takes runs_dir= or a folder; the other commands take
# folders or files, so an empty answer lets bash complete paths (-o default). Presets of the user's own
# (--config-dir DIR on the line, else MODEXP_CONFIG_DIR) are listed from DIR/<group>/*.yaml as typed.
BASH_COMPLETION = """# modexp completion for bash: source <(modexp completion bash)
_modexp() {
  local line=${COMP_LINE:0:$COMP_POINT}
  local cur=${line##*[[:space:]]}
  local -a words=($line)
  local n=${#words[@]}
  [ -z "$cur" ] && n=$((n + 1))
  if [ "$n" -le 2 ]; then COMPREPLY=($(compgen -W "%(commands)s" -- "$cur")); return; fi
  local flags="" settings=""
  case "${words[1]}" in
%(cases)s
  esac
  case "${words[1]}" in
    sweep|plan|train) settings="%(settings)s $(_modexp_user_presets)" ;;
    status) settings="runs_dir=" ;;
  esac
  if [[ "$cur" == -* || -n "$settings" ]]; then
    COMPREPLY=($(compgen -W "$flags $settings" -- "$cur"))
  else
    COMPREPLY=()
  fi
  if [[ "$cur" == *=* && "${COMP_WORDBREAKS-}" == *=* ]]; then
    COMPREPLY=("${COMPREPLY[@]#"${cur%%=*}="}")
  fi
  local -a dirs=()
  [ "${words[1]}" = status ] && [[ "$cur" != *=* && "$cur" != -* ]] && dirs=($(compgen -d -- "$cur"))
  if [ "${#dirs[@]}" -gt 0 ]; then
    COMPREPLY+=("${dirs[@]}")
    type compopt >/dev/null 2>&1 && compopt -o filenames
  fi
  if [ "${#COMPREPLY[@]}" -eq 1 ] && [[ "${COMPREPLY[0]}" == *= ]]; then
    type compopt >/dev/null 2>&1 && compopt -o nospace
  fi
}
_modexp_user_presets() {
  local dir="${MODEXP_CONFIG_DIR-}" prev="" w f g
  for w in "${words[@]}"; do
    [ "$prev" = "--config-dir" ] && dir="$w"
    [[ "$w" == --config-dir=* ]] && dir="${w#--config-dir=}"
    prev="$w"
  done
  [ -n "$dir" ] && [ -d "$dir" ] || return 0
  for f in "$dir"/*/*.yaml; do
    [ -e "$f" ] || continue
    g=${f%%/*.yaml}; g=${g##*/}; f=${f##*/}
    printf '%%s ' "$g=${f%%.yaml}"
  done
}
complete -o default -F _modexp modexp
"""
# zsh runs the bash function through its bash-completion emulation (words split at spaces only).
ZSH_PREAMBLE = "# modexp completion for zsh: source <(modexp completion zsh)\nautoload -U +X bashcompinit && bashcompinit\n"


def cmd_completion(args: argparse.Namespace, overrides: list[str]) -> int:
    words = completion_words()
    cases = "\n".join(f'    {c}) flags="{" ".join(f)}" ;;' for c, f in words["commands"].items())
    script = BASH_COMPLETION % {
        "commands": " ".join(words["commands"]),
        "cases": cases,
        "settings": " ".join(words["settings"]),
    }
    print((ZSH_PREAMBLE if args.shell == "zsh" else "") + script)
    return 0


def cmd_analyze(args: argparse.Namespace, overrides: list[str]) -> int:
    from .analysis import analyze

    if overrides and not args.sweep_dir:
        args.sweep_dir = overrides[0]
    if not args.sweep_dir and not args.table:
        raise ModexpError("give a sweep folder (modexp analyze runs/demo) or --table FILE.csv --out DIR")
    result = analyze(
        sweep_dir=Path(args.sweep_dir) if args.sweep_dir else None,
        table=Path(args.table) if args.table else None,
        out=Path(args.out) if args.out else None,
        loss=args.loss,
        split_by=tuple(c for c in (args.split_by or "").split(",") if c),
        figure_formats=args.figure_format,
        figure_size=args.figure_size,
        plugins=args.plugins,
    )
    print(result.summary)
    from .tracking import log_study

    log_study(result, Path(args.sweep_dir) if args.sweep_dir else None, args.wandb)
    return 0


def cmd_sample(args: argparse.Namespace, overrides: list[str]) -> int:
    from . import plugins
    from .rundir import find_run
    from .sample import _check_sampling, sample_cli

    _check_sampling(args.max_new_tokens, args.temperature, args.top_k)  # bad flags first, then the folder
    plugins.load_named(args.plugins)
    print(
        sample_cli(
            str(find_run(args.run_dir)),
            args.prompt,
            args.max_new_tokens,
            args.temperature,
            args.top_k,
            args.show_routing,
            args.seed,
            args.device,
        )
    )
    return 0


def cmd_export(args: argparse.Namespace, overrides: list[str]) -> int:
    from . import plugins
    from .export import export_run
    from .rundir import find_run

    plugins.load_named(args.plugins)
    print(export_run(find_run(args.run_dir), args.out, force=args.force))
    return 0


def cmd_prepare(args: argparse.Namespace, overrides: list[str]) -> int:
    from .prepare import prepare, summary

    if overrides:
        raise ModexpError(f"modexp prepare takes no overrides: {overrides[0]} (see modexp prepare --help)")
    out = Path(args.out).expanduser().absolute()
    meta = prepare(
        args.source,
        args.tokenizer,
        out,
        text_field=args.text_field,
        val_fraction=args.val_fraction,
        limit_tokens=None if args.limit_tokens is None else _whole("--limit-tokens", args.limit_tokens),
        shard_tokens=_whole("--shard-tokens", args.shard_tokens),
    )
    print(summary(meta, out))
    return 0


def _whole(flag: str, value: float, high: float = 1e15) -> int:
    """A count given as a float (1e8): a whole number in [1, high], or one line saying so."""
    if not (math.isfinite(value) and value == int(value) and 1 <= value <= high):
        raise ModexpError(f"{flag} {value:g} is not allowed: give a whole number of tokens in [1, {high:g}]")
    return int(value)


def cmd_selfcheck(args: argparse.Namespace, overrides: list[str]) -> int:
    from .analysis.calibration import run_check

    out = Path(args.out)
    check_out_folder(out, "--out")  # before minutes of simulation, not after them
    print(run_check(args.setting, args.studies, args.replicates, out))
    return 0


def check_out_folder(out: Path, flag: str) -> None:
    """A folder a command will write into: it may exist (as a folder) or not, but no file may stand where it
    or one of its parents must be."""
    for path in [out, *out.parents]:
        if path.exists() or path.is_symlink():
            if not path.is_dir():
                what = "is" if path == out else f"would be inside {path}, which is"
                raise ModexpError(f"{flag} {out} {what} a file, not a folder: give a folder path")
            return


def cmd_bench(args: argparse.Namespace, overrides: list[str]) -> int:
    from .bench import run_bench

    run_bench(
        quick=args.quick, out=Path(args.out), device=args.device, compile=args.compile, threads=args.threads
    )
    print((Path(args.out) / "bench.md").read_text())
    return 0


def _refuse_hydra_internals(overrides: list[str]) -> None:
    """Hydra's own launchers and settings do not drive modexp: say what does, in one line."""
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if key.startswith("hydra/launcher") or key.startswith("hydra.launcher"):
            raise ModexpError(
                f"{override} is Hydra's launcher, which modexp does not use: modexp starts runs itself, "
                "launcher=local (default) or launcher=slurm (submitit), e.g. launcher=slurm launcher.partition=gpu"
            )
        if key.startswith("hydra/") or (key.startswith("hydra.") and not key.startswith("hydra.searchpath")):
            raise ModexpError(
                f"{override} is a Hydra setting modexp does not use: runs go to runs_dir/sweep.name, "
                "comma lists sweep, and presets are sweep=NAME (see --help)"
            )


def _hydra_flags(s: argparse.ArgumentParser, sweeps: bool = True) -> None:
    """What Hydra users type: --cfg job|all, -m/--multirun, --config-dir for their own presets."""
    s.add_argument(
        "--cfg",
        choices=("job", "all"),
        help="print the composed config (job: modexp's; all: with Hydra's) and exit, running nothing",
    )
    s.add_argument(
        "-m",
        "--multirun",
        action="store_true",
        help="accepted for Hydra habits; comma lists sweep without it"
        if sweeps
        else "refused: this trains one run (several runs: modexp sweep)",
    )
    s.add_argument(
        "--config-dir",
        metavar="DIR",
        help="a folder of your own presets (DIR/sweep/NAME.yaml, DIR/model/..., same layout as modexp's conf), "
        "searched after modexp's; also MODEXP_CONFIG_DIR",
    )


def _plugins_flag(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--plugins",
        metavar="MOD[,MOD]",
        help="import these plug-in modules first (their variant kinds); a study's own list is never imported, "
        "only named in a note (also MODEXP_PLUGINS)",
    )


def version_text() -> str:
    """`modexp --version`: the package version and the commit it was built from (modexp/provenance.py)."""
    from . import __version__
    from .provenance import modexp_version

    code = modexp_version()
    dirty = " (uncommitted changes)" if code["dirty"] is True else ""
    return f"modexp {__version__} (commit {code['commit'][:12]}{dirty}, from {code['from']})"


class _Version(argparse.Action):
    """--version, read only when asked (it may run git)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # type: ignore[override]
        print(version_text())
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """argparse, but bad usage is one line like every other modexp error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"modexp: error: {message} (see {self.prog} --help)\n")


def _add_study_commands(sub: argparse._SubParsersAction) -> None:
    """Sweep, plan and train: Hydra overrides after the flags."""
    hydra_help = "Hydra overrides: key=value, comma lists sweep (model.capacity=0.125,0.5)"

    s = sub.add_parser(
        "sweep", help="plan, train every missing run, then fit and plot", description=hydra_help
    )
    s.add_argument("--dry-run", action="store_true", help="print the plan and run nothing")
    s.add_argument(
        "--retry-failed", action="store_true", help="run failed runs again (from their checkpoints)"
    )
    s.add_argument("--fail-fast", action="store_true", help="stop at the first failed run")
    s.add_argument("--detach", action="store_true", help="SLURM: submit and return; run again to reattach")
    _hydra_flags(s)
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("plan", help="one row per planned run", description=hydra_help)
    s.add_argument("--format", choices=FORMATS, default="table")
    s.add_argument(
        "--convention",
        choices=("exact", "6N", "chinchilla"),
        default="exact",
        help="also report FLOPs under this convention (exact is what plans the runs)",
    )
    _hydra_flags(s)
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser(
        "train",
        help="train one model for budget=<FLOPs>",
        description="Hydra overrides: key=value, one value each (to train several, use modexp sweep with comma "
        "lists); budget=<FLOPs> is required",
    )
    _hydra_flags(s, sweeps=False)
    s.set_defaults(func=cmd_train)


def _add_status_commands(sub: argparse._SubParsersAction) -> None:
    """Status and completion."""
    s = sub.add_parser(
        "status",
        help="a study's progress from its folder: done, running, interrupted, failed, pending, ETA",
        description="modexp status [SWEEP_DIR] [runs_dir=...]: without a folder, one line per study under runs_dir",
    )
    s.add_argument(
        "sweep_dir",
        nargs="?",
        help="a sweep folder (runs/demo), or what modexp train made (runs/smoke or a run)",
    )
    s.add_argument("--format", choices=FORMATS, default="table")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("completion", help="shell completion: source <(modexp completion bash)")
    s.add_argument("shell", choices=("bash", "zsh"))
    s.set_defaults(func=cmd_completion)


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    """Analyze."""
    s = sub.add_parser("analyze", help="results table, isoFLOP fits and figures")
    s.add_argument("sweep_dir", nargs="?", help="a sweep folder, e.g. runs/demo")
    s.add_argument("--table", help="analyse a CSV with variant, budget, params, tokens, flops, val_loss")
    s.add_argument("--out", help="folder for fits and figures (default SWEEP_DIR/plots)")
    s.add_argument(
        "--loss",
        choices=("causal", "topk"),
        default="causal",
        help="loss the figures and verdict use: causal (causal-routing val loss, the honest autoregressive "
        "number; default) or topk (top-k routing val loss); the summary reports both verdicts",
    )
    s.add_argument(
        "--split-by",
        metavar="COL[,COL]",
        help="draw separate curves per value of these result columns (e.g. beta2) instead of refusing to pool",
    )
    s.add_argument(
        "--figure-format",
        metavar="FMT[,FMT]",
        help="figure files: png,svg (default), pdf, or any comma list of png, svg, pdf",
    )
    s.add_argument(
        "--figure-size", metavar="WxH", help="figure size in inches, e.g. 6x4 (default: each its own)"
    )
    _plugins_flag(s)
    s.add_argument(
        "--wandb",
        choices=("auto", "online", "offline", "disabled"),
        help="log the analysis as a W&B run (default: the study's tracker.wandb.mode; WANDB_MODE wins)",
    )
    s.set_defaults(func=cmd_analyze)


def _add_run_commands(sub: argparse._SubParsersAction) -> None:
    """Sample and export: a trained run."""
    s = sub.add_parser("sample", help="generate text from a trained run with causal routing")
    s.add_argument(
        "run_dir",
        help="a run folder, e.g. runs/demo/<run_id>, or its end as modexp plan's id column and modexp status "
        "show it (runs/demo/6d0b10c2f1)",
    )
    s.add_argument("--prompt", default="def ", help="text to continue (default: %(default)r)")
    s.add_argument(
        "--max-new-tokens",
        type=float,
        default=200,
        help="tokens to generate, at most 100000 (default: %(default)s)",
    )
    s.add_argument(
        "--temperature", type=float, default=0.8, help="softmax temperature; 0: greedy (default: %(default)s)"
    )
    s.add_argument(
        "--top-k", type=int, default=None, help="sample from the k likeliest tokens only (default: all)"
    )
    s.add_argument(
        "--show-routing", action="store_true", help="under the text, which tokens each routed block processed"
    )
    s.add_argument("--seed", type=int, default=0, help="random seed of the sampling (default: %(default)s)")
    s.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda or cuda:N")
    _plugins_flag(s)
    s.set_defaults(func=cmd_sample)

    s = sub.add_parser(
        "export",
        help="a run's weights as safetensors plus config.json, loadable with modexp.export.load_export",
    )
    s.add_argument("run_dir", help="a run folder, e.g. runs/demo/<run_id>, or its end (runs/demo/6d0b10c2f1)")
    s.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="a new (or empty) folder to write; written beside it, then renamed into place",
    )
    s.add_argument(
        "--force",
        action="store_true",
        help="write into an existing non-empty DIR, replacing only the export's own three files",
    )
    _plugins_flag(s)
    s.set_defaults(func=cmd_export)


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    """Prepare: a corpus."""
    s = sub.add_parser(
        "prepare",
        help="tokenise text, JSONL, Parquet or a Hugging Face dataset into token shards",
        description="Tokenise a corpus into llm.c shards with a validation split, the tokenizer and a "
        "meta.json; train on it with data=tokens data.path=OUT.",
    )
    s.add_argument(
        "source",
        help="stdlib, a text/.jsonl/.json/.parquet file or folder, or hf:NAME[:CONFIG][@SPLIT]",
    )
    s.add_argument(
        "--tokenizer", required=True, help="bytes, bpe:N, a tokenizer.json, a HF name, tiktoken:NAME"
    )
    s.add_argument("--out", required=True, help="the folder to create (atomically)")
    s.add_argument(
        "--text-field", default="text", help="the text column of JSON/Parquet/hub rows (default text)"
    )
    s.add_argument(
        "--val-fraction", type=float, default=0.05, help="share of documents held out (default 0.05)"
    )
    s.add_argument("--limit-tokens", type=float, default=None, help="stop after this many tokens (e.g. 1e8)")
    s.add_argument("--shard-tokens", type=float, default=1e8, help="tokens per shard (default 1e8, as llm.c)")
    s.set_defaults(func=cmd_prepare)


def _add_checks(sub: argparse._SubParsersAction) -> None:
    """Selfcheck and bench."""
    s = sub.add_parser(
        "selfcheck",
        help="check the tool against a known truth: calibration of the verdict's intervals",
        description="modexp selfcheck calibration: simulate studies from a known law, analyse each as "
        "modexp analyze does, and print how often each nominal 90% interval holds the truth",
    )
    s.add_argument("check", choices=("calibration",))
    s.add_argument("--studies", type=int, default=200, help="simulated studies per design (default 200)")
    s.add_argument(
        "--replicates", type=int, default=200, help="bootstrap replicates per analysis (default 200)"
    )
    s.add_argument(
        "--setting",
        action="append",
        metavar="NAME",
        help="a study design to simulate (repeatable; default: every one, as in docs/verdict.md): presets, "
        "presets-noisy-ends, stems-95, cosine, kaplan-shifted, kaplan-null, presets-null, chinchilla-wide, "
        "kaplan-wide, mistuned, two-budgets, m-trend",
    )
    s.add_argument("--out", default="runs/selfcheck", help="folder for coverage.csv and coverage.md")
    s.set_defaults(func=cmd_selfcheck)

    s = sub.add_parser("bench", help="speed ratios measured side by side: MoD vs baseline, ours vs reference")
    s.add_argument("--quick", action="store_true", help="small shapes, about 2 minutes on 2 CPU cores")
    s.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time torch.compile against eager (default: in the full bench, not in --quick)",
    )
    s.add_argument("--threads", type=int, default=None, help="torch threads (default: the bench's choice)")
    s.add_argument("--out", default="runs/bench")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_bench)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="modexp", description="isoFLOP studies of Mixture-of-Depths transformers.")
    p.add_argument("--version", action=_Version, help="version and the commit modexp was built from")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (
        _add_study_commands,
        _add_status_commands,
        _add_analyze,
        _add_run_commands,
        _add_prepare,
        _add_checks,
    ):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, rest = parser().parse_known_args(argv)
    unknown_flags = [a for a in rest if a.startswith("--") and "=" not in a]
    if unknown_flags:
        print(
            f"modexp: error: unknown option {unknown_flags[0]} (see modexp {args.command} --help)",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("modexp").setLevel(logging.INFO)
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    with contextlib.ExitStack() as stack:
        _stop_on_terminate(stack)
        return _run(args, rest, stack)


def _terminate(signum: int, frame: object) -> None:
    # Once: a second SIGTERM must not cut short the stopping of the runs the first one started.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)


def _stop_on_terminate(stack: contextlib.ExitStack) -> None:
    """SIGTERM and SIGHUP stop a command as Ctrl-C does (a sweep stops its runs, marked interrupted, and says
    so in one line) instead of ending it silently with its runs left training; undone on return."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        stack.callback(signal.signal, sig, signal.signal(sig, _terminate))


def _restore_env(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def _run(args: argparse.Namespace, rest: list[str], stack: contextlib.ExitStack) -> int:
    # A sweep names its config's plug-ins to the processes it starts (MODEXP_PLUGINS); undone after the command,
    # so a later command in this process (a notebook, a test) imports only what it is told to.
    stack.callback(_restore_env, "MODEXP_PLUGINS", os.environ.get("MODEXP_PLUGINS"))
    try:
        if getattr(args, "multirun", False):
            if args.command == "train":
                raise ModexpError("-m/--multirun: modexp train trains one run; for several use modexp sweep")
            print(
                "modexp: -m/--multirun is not needed: comma lists already sweep (model.capacity=0.125,0.5)",
                file=sys.stderr,
            )
        if getattr(args, "config_dir", None):  # for this command and the processes it starts, then undone
            before = os.environ.get("MODEXP_CONFIG_DIR")
            os.environ["MODEXP_CONFIG_DIR"] = str(Path(args.config_dir).resolve())
            stack.callback(_restore_env, "MODEXP_CONFIG_DIR", before)
        _refuse_hydra_internals(rest)
        if getattr(args, "cfg", None):
            return print_composed(rest, args.cfg)
        return args.func(args, rest)
    except ModexpError as exc:
        print(f"modexp: error: {exc}", file=sys.stderr)
        return 2
    except Terminated as exc:
        print(f"modexp: stopped by {exc}: rerun the same command to resume", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("modexp: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `modexp plan | head`: the reader left. Point stdout at devnull so the interpreter's final flush
        # does not raise again, and exit as a SIGPIPE'd tool would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
