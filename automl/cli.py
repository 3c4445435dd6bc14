"""The ``automl`` command: parse, call the library, print. User mistakes exit 2, one line."""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path

import click

from automl.discovery import ALLOW_ENV, DISABLE_ENV
from automl.errors import UserError
from automl.paths import RUNS, check_study_name
from automl.search_algorithms import PRUNERS, SAMPLERS

SPACES_PACKAGE = "automl.search_spaces"


class _PluginError(click.ClickException):
    """A plugin problem met while click looks commands up: ``Error: <one line>``, exit 2."""

    exit_code = UserError.exit_code


class _Group(click.Group):
    """Turns a UserError from any command into ``Error: <one line>`` and exit code 2.

    Plugin commands are loaded at the first command lookup, which click makes after parsing
    the group's own options: ``--plugins`` / ``--disable-plugins`` are in force by then.
    """

    _plugin_commands_loaded = False

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)

    def list_commands(self, ctx):
        self._load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx, cmd_name):
        self._load_plugin_commands()
        return super().get_command(ctx, cmd_name)

    def _load_plugin_commands(self) -> None:
        if self._plugin_commands_loaded:
            return
        self._plugin_commands_loaded = True  # first: a plugin's hook may look commands up
        from automl.discovery import discovery_manager

        try:
            discovery_manager().hook.register_commands(cli=self)
        except UserError as exc:
            self._plugin_commands_loaded = False
            raise _PluginError(str(exc)) from None


def _plugin_list_option(flag: str, variable: str, help: str):
    """A group option that exports its value to ``variable`` before any plugin is discovered,
    so this process and every worker process it spawns see the same plugins."""

    def export(ctx, param, value):
        if value is not None:
            os.environ[variable] = value

    return click.option(flag, metavar="NAME,...", is_eager=True, expose_value=False,
                        callback=export, help=f"{help} (sets {variable}).")


@click.group(cls=_Group)
@click.version_option(package_name="automl-recipes", prog_name="automl")
@_plugin_list_option("--plugins", ALLOW_ENV,
                     "Load only these installed plugins; built-ins always load")
@_plugin_list_option("--disable-plugins", DISABLE_ENV,
                     "Never load (or import) these installed plugins")
def cli() -> None:
    """Search image-classification training recipes: techniques are plugins, Optuna searches.

    Start with `automl search` (the embedded digits dataset, runs on a CPU in minutes).
    """


def shipped_spaces() -> dict[str, Path]:
    """Spaces that ship with the package, by file stem."""
    folder = resources.files(SPACES_PACKAGE)
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def resolve_space_path(space: str) -> Path:
    """A file path, or the name of a shipped space (``default``, ``fashion_mnist``)."""
    path = Path(space)
    if path.exists():
        return path
    shipped = shipped_spaces()
    if space in shipped:
        return shipped[space]
    raise UserError(f"{space}: no such file, and not a shipped space (shipped: "
                    f"{', '.join(sorted(shipped))})")


def _common_run_options(func):
    """--out and --storage, shared by the commands that open a study (search, show, export,
    report, dashboard); each adds its own --study-name, whose default differs."""
    func = click.option("--storage", metavar="URL|PATH",
                        help="Optuna RDB URL (sqlite:///x.db, postgresql://...) or journal file; "
                             "default: DIR/study.journal.")(func)
    func = click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path),
                        help="Run directory (default: runs/STUDY_NAME).")(func)
    return func


def _compile_option(func):
    return click.option("--compile", is_flag=True,
                        help="Train through torch.compile (slower start, faster steps on a "
                             "GPU).")(func)


def _log_option(func):
    return click.option("--log", multiple=True, metavar="tensorboard|mlflow",
                        help="Record every trial's epochs and values, one run per trial: "
                             "tensorboard (DIR/tensorboard/), mlflow (experiment STUDY_NAME in "
                             "$MLFLOW_TRACKING_URI, else DIR/mlflow.db); repeat it or give a "
                             "comma list.")(func)


def _data_options(func):
    func = click.option("--download", is_flag=True, default=None,
                        help="Allow downloading the dataset (torchvision sets only).")(func)
    func = click.option("--data-dir", type=click.Path(file_okay=False),
                        help="Where datasets are looked for (and downloaded to).")(func)
    return func


@cli.command()
@click.argument("space", default="default")
@click.option("--n-trials", type=click.IntRange(min=1),
              help="The study's budget of trials, shared by every process that works on it.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              help="Stop starting new trials after this many seconds.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1),
              help="Sampler seed (default: the space's study.seed, 0).")
@click.option("--study-name", help="Study name (default: the space file's stem).")
@_common_run_options
@click.option("--sampler", type=click.Choice(SAMPLERS))
@click.option("--pruner", type=click.Choice(PRUNERS),
              help="Stop weak trials early (default hyperband); off for a study with several "
                   "metrics (study.metric: [val/acc1, model/params]): Optuna cannot prune "
                   "those.")
@click.option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present).")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Trials at once, each in its own worker process (per GPU with --gpus).")
@click.option("--gpus", metavar="all|0,1,...",
              help="Run --jobs workers on each of these GPUs (one study, shared storage).")
@click.option("--gpus-per-trial", "gpus_per_trial", default=1, show_default=True,
              type=click.IntRange(min=1), metavar="K",
              help="Each trial trains on K data-parallel ranks: K GPUs with CUDA (with --gpus, "
                   "the listed GPUs in groups of K; else GPUs 0..K-1), K CPU processes "
                   "(gloo) with --device cpu or without CUDA. The recipe's batch size is the "
                   "global batch: K never changes what is trained, only where.")
@click.option("--min-resource", metavar="N|auto",
              help="Earliest epoch a trial may be pruned at (auto: the training / factor²).")
@click.option("--reduction-factor", type=click.IntRange(min=2),
              help="Hyperband/SHA: keep 1 in this many trials at each rung (default 3).")
@click.option("--startup-trials", type=click.IntRange(min=0),
              help="Random trials before TPE models (and the median pruner prunes); default 5.")
@click.option("--rung-trust", type=click.FloatRange(-1, 1), metavar="RHO",
              help="Prune only at epochs whose scores rank the finished trials like their "
                   "final scores, rank correlation >= RHO (default 0.5; -1: anywhere).")
@click.option("--warm-start/--no-warm-start", default=None,
              help="Evaluate the known recipes right after the baseline (default: on).")
@click.option("--confirm-top", metavar="K|auto",
              help="Re-run the K best trials (and the baseline) with more seeds before naming "
                   "the best; 0 turns it off (auto: one per 20 trials, at most 3).")
@click.option("--seeds", "confirm_seeds", type=click.IntRange(min=1),
              help="More training seeds per confirmed trial (default 2).")
@click.option("--confirm-splits", is_flag=True, default=None,
              help="Confirmation runs also draw another validation split.")
@_compile_option
@_log_option
@_data_options
def search(space, n_trials, timeout, seed, study_name, out, storage, sampler, pruner, device,
           jobs, gpus, gpus_per_trial, min_resource, reduction_factor, startup_trials,
           rung_trust, warm_start, confirm_top, confirm_seeds, confirm_splits, compile, log,
           data_dir, download):
    """Search recipes over SPACE (a YAML file or a shipped space name; default: `default`).

    Running the same command again resumes the study until its --n-trials trials have run;
    the same command on other machines (one --storage database) joins the study. Ctrl-C
    (exit 130) or SIGTERM (exit 143) marks the running trials failed and queues them again.
    The best recipe is kept in DIR/best_recipe.yaml, rewritten whenever the best improves.

    Trial 0 is the baseline (the space's defaults), then the known recipes (warm start);
    at the end the best trials are confirmed with more seeds. Every study setting of the
    space's `study:` section can be overridden here.

    `study.metric` may list several metrics (val/acc1, val/loss, val/balanced_acc,
    model/params, val/<name> of a technique that declares it): the search keeps their Pareto
    front, prunes nothing, confirms nothing, and best_recipe.yaml holds the front's trial best
    on the first metric (the others: automl export --trial N).
    """
    from automl.discovery import technique_catalog
    from automl.interrupts import Interrupted, stop_on_signals
    from automl.report import ConsoleReporter, show_warnings, summary_lines, trials_table
    from automl.search import BEST_RECIPE, SearchSettings, run_search
    from automl.space import load_space
    from automl.study_select import storage_text
    from automl.tracking import parse_targets

    path = resolve_space_path(space)
    name = check_study_name(study_name or path.stem)
    parsed = load_space(path, technique_catalog())
    if parsed.unlisted_note():
        click.echo(parsed.unlisted_note())
    _apply_data_options(parsed.data, data_dir, download)
    settings = SearchSettings.from_space(
        parsed, study_name=name, run_dir=out or RUNS / name, storage=storage,
        device=device, jobs=jobs, gpus=gpus, gpus_per_trial=gpus_per_trial, compile=compile,
        log=parse_targets(log), n_trials=n_trials,
        timeout=timeout, seed=seed, sampler=sampler, pruner=pruner,
        min_resource=_auto_or_int("--min-resource", min_resource, 1),
        reduction_factor=reduction_factor, startup_trials=startup_trials, rung_trust=rung_trust,
        warm_start=warm_start, confirm_top=_auto_or_int("--confirm-top", confirm_top, 0),
        confirm_seeds=confirm_seeds, confirm_splits=confirm_splits)
    show_warnings()
    best = settings.run_dir / BEST_RECIPE
    with stop_on_signals():
        try:
            study = run_search(parsed, settings, ConsoleReporter(settings.metric))
        except Interrupted as exc:
            kept = f"; best recipe so far: {best}" if best.exists() else ""
            click.echo(f"\nstopped by {exc.name}: running trials are marked failed and queued "
                       f"again; run the same command to resume{kept}", err=True)
            sys.exit(exc.exit_code)
    click.echo("\n" + trials_table(study, settings.metric))
    click.echo("\n" + "\n".join(summary_lines(study, storage_text(settings.run_dir, storage))))
    _print_judgement(study)
    if best.exists():
        click.echo(f"\nbest recipe: {best}\nretrain it:  automl train {best}")


def _auto_or_int(option: str, value: str | None, least: int) -> int | str | None:
    if value is None or value == "auto":
        return value
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < least:
        raise UserError(f"{option}: expected auto or an integer >= {least}, got {value!r}")
    return number


def _print_judgement(study) -> None:
    """Confirmation results and the pruning check, where the study has them."""
    from automl.confirm import verdict
    from automl.fidelity import fidelity_lines

    lines = [*verdict(study), *fidelity_lines(study)]
    if lines:
        click.echo("\n" + "\n".join(lines))


def _apply_data_options(data: dict, data_dir, download) -> None:
    if data_dir:
        data["data_dir"] = data_dir
    if download:
        data["download"] = True


_STUDY_NAME_HELP = ("The study (default: the only one in --out/--storage, or with neither in "
                    "the run folders under runs/; of several, the most recently active one; "
                    "the one read is printed).")


@cli.command()
@click.option("--study-name", help=_STUDY_NAME_HELP)
@_common_run_options
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--trial", "trial_number", type=int,
              help="Show this trial in full: state, why it ended, parameters, scores per "
                   "epoch, metrics and a failed trial's traceback.")
def show(study_name, out, storage, top, trial_number):
    """List the best trials of a study, how the trials ended, the best against the baseline,
    the confirmed means and the pruning check (or one trial in full with --trial N)."""
    from automl.report import summary_lines, trial_details, trials_table
    from automl.study_select import select_study

    study = select_study(study_name, out, storage)
    if trial_number is not None:
        click.echo(trial_details(study, trial_number))
        return
    metric = study.user_attrs.get("metric", "value")
    click.echo(trials_table(study, metric, top))
    click.echo("\n" + "\n".join(summary_lines(study)))
    _print_judgement(study)


@cli.command()
@click.option("--study-name", help=_STUDY_NAME_HELP)
@_common_run_options
@click.option("--trial", "trial_number", type=int, help="Export this trial instead of the best.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the recipe here (default: print it).")
@click.option("--format", "fmt", type=click.Choice(["recipe", "timm", "torchvision"]),
              default="recipe", show_default=True,
              help="recipe: this project's YAML (automl train reads it); timm: an args.yaml "
                   "for timm's train.py --config; torchvision: a command line for "
                   "torchvision's references/classification/train.py. The last two list "
                   "what they cannot express in a comment at the top.")
def export(study_name, out, storage, trial_number, output, fmt):
    """Export the best recipe of a study (or --trial N): the confirmed winner when the search
    re-ran its best trials, else the best single score; with several metrics, the Pareto
    front's trial best on the first (automl show lists the front). The file records its
    provenance (study, trial, score, versions)."""
    from automl.confirm import chosen_trial
    from automl.exports import export_text
    from automl.provenance import with_provenance
    from automl.search import trial_recipe
    from automl.study_select import select_study
    from automl.yamlio import write_atomic

    study = select_study(study_name, out, storage)
    study_name = study.study_name
    if trial_number is None:
        try:
            trial = chosen_trial(study)
        except ValueError:
            raise UserError(f"study '{study_name}' has no completed trial yet") from None
    else:
        matches = [t for t in study.trials if t.number == trial_number]
        if not matches:
            raise UserError(f"study '{study_name}' has no trial {trial_number} "
                            f"(it has 0..{len(study.trials) - 1})")
        trial = matches[0]
    chosen = "" if trial_number is not None else " (the best)"
    if trial_number is None and len(study.directions) > 1:
        from automl.objectives import CHOSEN_RULE
        chosen = f" ({CHOSEN_RULE}; the others of the front: automl show, then --trial N)"
    click.echo(f"trial {trial.number}{chosen}", err=True)
    text = export_text(with_provenance(trial_recipe(trial), study, trial), fmt)
    if output:
        write_atomic(output, text)
        click.echo(f"wrote trial {trial.number}'s recipe ({fmt} format) to {output}")
    else:
        click.echo(text, nl=False)


@cli.command()
@click.option("--study-name", help=_STUDY_NAME_HELP)
@_common_run_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; the dashboard can change "
                   "the study, so only on a trusted network).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
def dashboard(study_name, out, storage, host, port):
    """Open optuna-dashboard on a study's storage (every study in it), live while a search
    runs. Needs the extra: pip install 'automl-recipes[dashboard]'."""
    from automl.dashboard import require_dashboard, serve
    from automl.study_select import select_study

    require_dashboard()
    study = select_study(study_name, out, storage)
    click.echo(f"optuna-dashboard: http://{host}:{port}/dashboard/  (Ctrl-C stops it)")
    serve(study, host, port)


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Output directory (default: runs/train-RECIPE_STEM).")
@click.option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1),
              help="Training seed (default: the recipe's seed).")
@click.option("--train-fraction", type=click.FloatRange(0, 1, min_open=True),
              help="Train on this stratified part of the training split (default: 1, all of "
                   "it, even when the search used less).")
@click.option("--include-val", is_flag=True,
              help="Train on training + validation images (a final model; val scores are then "
                   "not held out).")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier run in --out (default: refuse, before training).")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Data-parallel ranks on this machine (GPUs, or CPU processes with --device "
                   "cpu); each takes its share of every batch of the recipe's (global) batch "
                   "size, so the recipe trains the same on any number of ranks.")
@click.option("--nnodes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Machines in the training; run the same command on each, with its own "
                   "--node-rank.")
@click.option("--node-rank", type=click.IntRange(min=0), default=0, show_default=True,
              help="This machine's number, 0..NNODES-1 (node 0 writes the outputs).")
@click.option("--master-addr", default="127.0.0.1", show_default=True,
              help="Where node 0 listens (with --nnodes > 1).")
@click.option("--master-port", type=click.IntRange(1, 65535),
              help="Node 0's port (needed with --nnodes > 1; default on one machine: a free "
                   "one).")
@_compile_option
@_log_option
@_data_options
def train(recipe, out, device, seed, train_fraction, include_val, overwrite, nproc, nnodes,
          node_rank, master_addr, master_port, compile, log, data_dir, download):
    """Retrain RECIPE, evaluate the test split once, save the model, metrics and recipe.

    OUT/model.pt keeps the model with everything needed to use it (automl predict, automl
    evaluate, automl.load_model); metrics.json adds per-class recall, precision and the
    confusion matrix of the test and val splits. A folder holding an earlier run is refused.

    With --nproc/--nnodes (or started by torchrun), the recipe trains with PyTorch's
    DistributedDataParallel; rank 0 prints and writes.
    """
    from automl.distributed import launched_by_torchrun

    if (nproc > 1 or nnodes > 1) and not launched_by_torchrun():
        from automl.launch import launch

        launch(sys.argv[1:], nproc=nproc, nnodes=nnodes, node_rank=node_rank,
               master_addr=master_addr, master_port=master_port)
        return
    main_rank = int(os.environ.get("RANK", "0")) == 0
    from automl.discovery import technique_catalog
    from automl.errors import exception_line
    from automl.replay import replay
    from automl.report import show_warnings
    from automl.space import load_recipe
    from automl.tracking import parse_targets, track_training

    show_warnings()
    parsed = load_recipe(recipe, technique_catalog())
    _apply_data_options(parsed.data, data_dir, download)
    out = out or RUNS / f"train-{recipe.stem}"
    tracking = track_training(parse_targets(log), out, parsed) if main_rank else None
    searched_fraction = parsed.data.get("train_fraction", 1)
    if train_fraction is None and searched_fraction < 1 and main_rank:
        click.echo(f"training on all of the training split (the search used train_fraction "
                   f"{searched_fraction})")
    held_out = "  (not held out: --include-val)" if include_val else ""

    def progress(epoch, epochs, metrics):
        if not main_rank:
            return
        click.echo(f"epoch {epoch:>3}/{epochs}  train/loss {metrics['train/loss']:.4f}  "
                   f"val/acc1 {metrics['val/acc1']:.4f}{held_out}")
        if tracking:
            tracking.epoch(epoch, metrics)

    try:
        metrics = replay(parsed, out, device=device, progress=progress, compile=compile,
                         seed=seed,
                         train_fraction=1.0 if train_fraction is None else train_fraction,
                         include_val=include_val, overwrite=overwrite,
                         reuse_stages=[recipe.parent / "stages"])
    except BaseException as exc:
        if tracking:
            tracking.end("failed", reason=exception_line(exc))
        raise
    if tracking:
        tracking.end("complete", metrics)
    if not main_rank:
        return
    click.echo(f"test/acc1 {metrics['test/acc1']:.4f}  test/balanced_acc "
               f"{metrics['test/balanced_acc']:.4f}  test/loss {metrics['test/loss']:.4f}")
    click.echo(_test_class_table(out))
    click.echo(f"saved {out / 'model.pt'}, {out / 'metrics.json'}, {out / 'recipe.yaml'}")


def _test_class_table(out: Path) -> str:
    """The per-class results of the test split, as saved in OUT/metrics.json."""
    import json

    from automl.class_metrics import class_table

    return "test, per class:\n" + class_table(
        json.loads((out / "metrics.json").read_text())["per_class"]["test"])


@cli.command()
@click.argument("name", required=False)
@click.option("--markdown", is_flag=True, help="Print the catalog as a Markdown table.")
def techniques(name, markdown):
    """List every technique with its method card summary and search space (or one in full).

    Optional techniques are searched on/off; required ones are always on, at their defaults
    when a space leaves them out.
    """
    from automl.discovery import technique_catalog
    from automl.technique import conflicts_of, describe_parameter, markdown_table

    catalog = technique_catalog()
    if markdown:
        click.echo(markdown_table(catalog))
        return
    if name:
        if name not in catalog:
            raise UserError(f"unknown technique '{name}'; valid: {', '.join(sorted(catalog))}")
        selected = {name: catalog[name]}
    else:
        selected = catalog
    for tname, cls in selected.items():
        kind = "optional" if cls.optional else "required: always on, at its defaults unless listed"
        click.echo(f"{tname} ({kind}): {cls.summary()}")
        if name:
            click.echo("\n" + cls.card() + "\n")
        for param in cls.space:
            click.echo(f"    {param:<20} {describe_parameter(cls, param):<40} "
                       f"default {cls.defaults[param]!r}")
        for other, why in conflicts_of(cls, catalog).items():
            click.echo(f"    never on with {other}: {why}")


@cli.command()
def plugins():
    """List loaded plugins, under each the techniques it provides and the hooks each
    implements, then the plugins left out and why."""
    from automl import hookspecs
    from automl.discovery import (
        discovery_manager,
        hook_names,
        plugin_origin,
        skipped_plugins,
        technique_catalog,
        technique_sources,
    )
    from automl.hookspecs import TrainingSpecs

    pm = discovery_manager()
    catalog, sources = technique_catalog(), technique_sources()
    training_hooks = hook_names(TrainingSpecs)
    for plugin_name, plugin in pm.list_name_plugin():
        hooks = [h.name for h in pm.get_hookcallers(plugin) or []]
        click.echo(f"{plugin_name} ({plugin_origin(plugin_name)}): discovery hooks "
                   f"{', '.join(hooks)}")
        for tname, cls in catalog.items():
            if sources[tname] != plugin_name:
                continue
            hooks = [h for h in training_hooks
                     if hasattr(getattr(cls, h, None), f"{hookspecs.PROJECT}_impl")]
            click.echo(f"    {tname:<20} {', '.join(hooks)}")
    for plugin_name, why in skipped_plugins().items():
        click.echo(f"{plugin_name}: not loaded ({why})")


@cli.command()
@click.option("--study-name", help=_STUDY_NAME_HELP)
@_common_run_options
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the page here, the PNGs next to it (default: "
                   "DIR/report/report.html).")
def report(study_name, out, storage, output):
    """Write a study's report: one self-contained HTML page (opens from disk, no network)
    and its plots as PNGs. Needs the extra: pip install 'automl-recipes[report]'."""
    from automl.html_report import report_path, require_report_extra, write_report
    from automl.study_select import select_study

    require_report_extra()
    study = select_study(study_name, out, storage)
    written = write_report(study, output or report_path(study.study_name, out, storage))
    click.echo(f"wrote {written[0]}")
    click.echo(f"plots: {', '.join(p.name for p in written[1:]) or 'none'} "
               f"(in {written[0].parent})")


_MODEL_ARGUMENT = click.argument("model", type=click.Path(path_type=Path))
_INFERENCE_DEVICE = click.option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when "
                                                  "present).")


@cli.command()
@_MODEL_ARGUMENT
@click.argument("images", nargs=-1, required=True)
@click.option("--top", default=3, show_default=True, type=click.IntRange(min=1),
              help="How many of the most likely classes to show per image.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the predictions to a .csv or .json file instead of printing them.")
@_INFERENCE_DEVICE
def predict(model, images, top, output, device):
    """Predict the class of IMAGES (files, or folders searched recursively) with MODEL, the
    model.pt (or run folder) of `automl train`.

    Images of another size or channel count are converted as training read image folders
    (grayscale or RGB, bilinear resize). Prints one line per image: the predicted class,
    its probability and the --top most likely classes.
    """
    from automl.inference import (
        image_files,
        inference_device,
        predict_files,
        prediction_format,
        prediction_lines,
        write_predictions,
    )
    from automl.model_file import load_model

    if output:
        prediction_format(output)  # before any work
    files = image_files(images)
    loaded = load_model(model, inference_device(device))
    predictions = predict_files(loaded, files, top)
    if output:
        write_predictions(output, predictions)
        click.echo(f"wrote {len(predictions)} predictions to {output}")
    else:
        click.echo("\n".join(prediction_lines(predictions)))


@cli.command()
@_MODEL_ARGUMENT
@click.option("--data", required=True, metavar="FOLDER|DATASET",
              help="A labelled image folder (one sub-folder per class, named as the model's "
                   "classes) or a dataset name (digits, cifar10, ...).")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test",
              show_default=True, help="The dataset's split to evaluate (a folder: all of it).")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Where datasets are looked for.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the results (per class, confusion matrix) as JSON.")
@_INFERENCE_DEVICE
def evaluate(model, data, split, data_dir, output, device):
    """Score MODEL (the model.pt or run folder of `automl train`) on labelled images:
    accuracy, balanced accuracy, per-class recall and precision, confusion matrix."""
    import json

    from automl.class_metrics import class_table, confusion_table
    from automl.data import available_datasets
    from automl.inference import evaluate_dataset, evaluate_folder, inference_device
    from automl.model_file import load_model
    from automl.yamlio import write_atomic

    folder = Path(data) if Path(data).is_dir() else None
    if folder is None and data not in available_datasets():
        raise UserError(f"--data {data}: not a folder, nor a dataset (datasets: "
                        f"{', '.join(available_datasets())})")
    loaded = load_model(model, inference_device(device))
    if folder is not None:
        report, source = evaluate_folder(loaded, folder), f"folder {folder}"
    else:
        report = evaluate_dataset(loaded, data, split, data_dir)
        source = f"dataset {data}, {split} split"
    images = sum(report["support"].values())
    click.echo(f"{source}: {images} images  accuracy {report['accuracy']:.4f}  "
               f"balanced accuracy {report['balanced_accuracy']:.4f}")
    click.echo(class_table(report))
    matrix = confusion_table(report)
    if matrix:
        click.echo(matrix)
    if output:
        write_atomic(output, json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {output}")


def main() -> None:
    """Console entry point."""
    cli(prog_name="automl")


__all__ = ["cli", "main", "resolve_space_path", "shipped_spaces"]
