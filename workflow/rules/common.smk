# Helpers for the rules: config validation, the resolved config file, target lists and input functions.
# No rules here. Everything runs at parse time, before any job; paths are relative to the working directory.

import json
import os
import re
from pathlib import Path

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


# --------------------------------------------------------------------------------------------------- config
def _config_error(message):
    raise WorkflowError(f"Invalid config: {message} (see config/README.md)")


# 1. JSON schema: types, ranges, unknown keys; fills in the schema's defaults. Snakemake's own message prints the
#    whole schema; this names the offending key in one line.
try:
    validate(config, schema="../schemas/config.schema.yaml")
except WorkflowError as err:
    _cause = err.__context__
    if not isinstance(_cause, jsonschema.ValidationError):
        raise
    _where = ".".join(str(p) for p in _cause.absolute_path) or "top level"
    _config_error(f"{_where}: {_cause.message}")


# 2. What the schema cannot say: a joint dataset's members have data folders and its id is not a dataset, fits
#    refer to listed datasets (or joint ids) and models, and their folders exist.
DATASETS = list(config["datasets"])
MODELS = list(config["models"])
JOINT = {
    _j: {"datasets": list(_spec["datasets"]), "same_subjects": bool(_spec.get("same_subjects", False))}
    for _j, _spec in (config.get("joint") or {}).items()
}
for _j, _spec in JOINT.items():
    if _j in DATASETS or Path("data", _j).exists():
        _config_error(f"joint: '{_j}' is also a dataset (listed under datasets or a folder data/{_j}/); "
                      "give the joint dataset its own id")
    for _member in _spec["datasets"]:
        if not Path("data", _member, "dataset.yaml").is_file():
            _config_error(f"joint.{_j}.datasets: '{_member}' has no folder data/{_member}/ with a dataset.yaml")
config["joint"] = JOINT
FITTABLE = DATASETS + list(JOINT)  # what `fits` may name: datasets and joint datasets
if config.get("fits") is None:
    # every listed dataset, and every joint dataset whose members are all listed (an overlay that lists fewer
    # datasets, such as config/test.yaml, does not pull in the default joint datasets)
    _active = [j for j, spec in JOINT.items() if all(m in DATASETS for m in spec["datasets"])]
    FITS = [(d, m) for d in DATASETS + _active for m in MODELS]
else:
    FITS = [(f["dataset"], f["model"]) for f in config["fits"]]
    for _d, _m in FITS:
        if _d not in FITTABLE:
            _config_error(f"fits: dataset '{_d}' is not listed under datasets {DATASETS} or joint {list(JOINT)}")
        if _m not in MODELS:
            _config_error(f"fits: model '{_m}' is not listed under models {MODELS}")
    if len(set(FITS)) < len(FITS):
        _config_error("fits: a (dataset, model) pair is listed twice")
# Each fit's own sampler settings (a `fits` entry's `sampler`) over the sampler section, checked with the section's
# schema: unknown keys and bad values are refused here, before any job. (The CLI repeats the check in
# myoglucose.config.check_sampler_override; the Snakefile does not import the package, which may live only in the
# jobs' environment.)
_SAMPLER_SCHEMA = yaml.safe_load(
    Path(workflow.basedir, "workflow", "schemas", "config.schema.yaml").read_text(encoding="utf-8")
)["properties"]["sampler"]
FIT_SAMPLER_OVERRIDES = {}
for _i, _f in enumerate(config["fits"] or []):
    _over = _f.get("sampler") or {}
    for _k, _v in _over.items():
        if _k not in _SAMPLER_SCHEMA["properties"]:
            _config_error(f"fits.{_i}.sampler: unknown sampler setting '{_k}'; allowed: "
                          f"{sorted(_SAMPLER_SCHEMA['properties'])}")
        _errs = list(jsonschema.Draft202012Validator(_SAMPLER_SCHEMA["properties"][_k]).iter_errors(_v))
        if _errs:
            _config_error(f"fits.{_i}.sampler.{_k}: {_errs[0].message}")
    if _over:
        FIT_SAMPLER_OVERRIDES[(_f["dataset"], _f["model"])] = dict(_over)
config["fits"] = [
    {"dataset": d, "model": m, **({"sampler": FIT_SAMPLER_OVERRIDES[(d, m)]} if (d, m) in FIT_SAMPLER_OVERRIDES
                                  else {})}
    for d, m in FITS
]

for _kind, _ids, _folder in (("datasets", DATASETS, "data"), ("models", MODELS, "models"),
                              ("sbc.dataset", [config["sbc"]["dataset"]], "data"),
                              ("sbc.model", [config["sbc"]["model"]], "models")):
    for _id in _ids:
        if not Path(_folder, _id).is_dir():
            _config_error(f"{_kind}: '{_id}' has no folder {_folder}/{_id}/")

# 3. JAX persistent compilation cache, per user: an exported JAX_COMPILATION_CACHE_DIR (CI, a cluster admin) wins
#    over the config. The folder in effect is exported to every job (sbatch passes the environment on) and written
#    into the resolved config, which the CLI reads.
config["compilation_cache"] = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.expanduser(config["compilation_cache"])
)

# 4. The validated config (defaults filled in, fits expanded) is what every `myoglucose ... --config` reads.
#    It is rewritten at parse time only when its content changes. Rules take it as an ancient() input, so its
#    timestamp never triggers a re-run; instead each rule lists the config sections it depends on in
#    `params: settings=config_sections(...)`, and Snakemake's params rerun trigger re-runs exactly the jobs whose
#    sections changed (a new dpi re-draws figures but does not re-fit). See docs/workflow.md.
RESOLVED_CONFIG = "results/config.resolved.yaml"


def _write_if_changed(path, text):
    path = Path(path)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


_RESOLVED_HEADER = (
    "# Written by workflow/rules/common.smk: the validated config with defaults filled in. Do not edit;\n"
    "# edit config/config.yaml (or pass --configfile) instead.\n"
)
_write_if_changed(
    RESOLVED_CONFIG, f"{_RESOLVED_HEADER}{yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False)}"
)


def config_sections(*names):
    """Canonical JSON of the named config sections: a rerun-trigger param (not used by the command)."""
    return json.dumps({name: config[name] for name in names}, sort_keys=True)


def fit_sampler(wildcards):
    """The sampler settings of one fit: the sampler section with the fit's `fits` entry over it (what the CLI uses)."""
    return {**config["sampler"], **FIT_SAMPLER_OVERRIDES.get((wildcards.dataset, wildcards.model), {})}


def fit_settings(wildcards):
    """Rerun-trigger param of a fit: its solver and sampler settings (the same string as config_sections("solver",
    "sampler") for a fit without its own settings, so adding an override to one fit re-runs that fit only)."""
    return json.dumps({"solver": config["solver"], "sampler": fit_sampler(wildcards)}, sort_keys=True)



# ------------------------------------------------------------------------------------------ rule settings
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]*"
# Tidy tables of a joint id come from rule combine, of any other id from rule prepare.
JOINT_PATTERN = "|".join(re.escape(j) for j in JOINT) or "(?!)"

wildcard_constraints:
    dataset=ID_PATTERN,
    model=ID_PATTERN,


# `diagnose --no-fail` records a failed check in verdict.json instead of stopping the workflow (exit 3).
DIAGNOSE_FLAGS = "" if config["diagnostics"]["fail_on_bad"] else "--no-fail"

# The jobs that solve ODEs (fit, predict, behaviours) ask for one GPU when the config says device: gpu (the CLI then
# refuses to run without one); partition, account and GPU model belong in the profiles, never here.
GPU_RESOURCES = {"gpu": 1} if config["device"] == "gpu" else {}

# Figures written by `myoglucose report` (one per name, in every format of config report.formats); "scenarios"
# only when config predict.scenarios has a scenario without training, "training" only when it has one with training
# or detraining, "post_exercise" only when config predict.post_exercise.enabled. svg goes into the HTML report, the
# other formats are plain outputs.
FIT_FIGURES = {
    "ppc": ("Posterior predictive", "posterior predictive check"),
    "curves": ("Posterior predictive", "condition time courses"),
    "rank": ("Convergence", "rank plots"),
    "pairs": ("Posterior", "pair plot"),
    "forest_groups": ("Posterior", "group-level parameters"),
    "prior_posterior": ("Posterior", "prior vs posterior"),
}


def _is_training_scenario(path):
    """A scenario protocol with a training or detraining event goes to the training figure (weeks, slow
    adaptations); the others to the scenarios figure (the same test as reporting.training_scenarios)."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh) or {}
    except OSError:
        return False  # a missing protocol fails in predict, with its own message
    events = doc.get("events") if isinstance(doc, dict) else None
    return any(isinstance(e, dict) and e.get("type") in ("training", "detraining") for e in events or [])


_TRAINING = [_is_training_scenario(s) for s in config["predict"]["scenarios"] or []]
if not all(_TRAINING):
    FIT_FIGURES["scenarios"] = ("Scenarios", "scenario predictions")
if any(_TRAINING):
    FIT_FIGURES["training"] = ("Scenarios", "training and detraining")
# Tables of `myoglucose report` besides convergence, contraction and priors (csv in the report, tex a plain output).
# The post-exercise clamps (config predict.post_exercise) give a figure and a table of their GIR.
FIT_TABLES = {}
if config["predict"]["post_exercise"]["enabled"]:
    FIT_FIGURES["post_exercise"] = ("Scenarios", "post-exercise insulin sensitivity")
    FIT_TABLES["post_exercise_gir"] = ("Scenarios", "post-exercise GIR table")
FIGURE_DIR = "results/figures/{model}/{dataset}"
OTHER_FORMATS = [fmt for fmt in config["report"]["formats"] if fmt != "svg"]


def fit_figures():
    """svg figures of one fit, flagged for the report (one caption per figure)."""
    return [fit_report_item(f"{name}.svg", category, what) for name, (category, what) in FIT_FIGURES.items()]


def fit_figure_copies():
    """The same figures in the other formats of config report.formats (pdf, png)."""
    return [f"{FIGURE_DIR}/{name}.{fmt}" for name in FIT_FIGURES for fmt in OTHER_FORMATS]


def fit_tables():
    """The optional csv tables of one fit (FIT_TABLES), flagged for the report (one caption each)."""
    return [fit_report_item(f"{name}.csv", category, what) for name, (category, what) in FIT_TABLES.items()]


def fit_report_item(filename, category, what):
    """A file of `myoglucose report` in results/figures/{model}/{dataset}/, flagged for the HTML report with the
    caption workflow/report/<stem>.rst."""
    return report(
        f"{FIGURE_DIR}/{filename}",
        caption=f"../report/{filename.split('.')[0]}.rst",
        category=category,
        subcategory="{model} / {dataset}",
        labels={"model": "{model}", "dataset": "{dataset}", "figure": what},
    )


# --------------------------------------------------------------------------------------- input functions
def raw_files(wildcards):
    """Every file in data/<dataset>/raw/ (an edited or added raw file re-runs prepare)."""
    raw = Path("data", wildcards.dataset, "raw")
    return sorted(str(p) for p in raw.rglob("*") if p.is_file()) if raw.is_dir() else []


def model_files(wildcards):
    """Every file in models/<model>/ (model.yaml, parameters.tsv, observables.tsv, README.md, ...)."""
    folder = Path("models", wildcards.model)
    files = sorted(str(p) for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    return files or [f"models/{wildcards.model}/{name}" for name in ("model.yaml", "parameters.tsv", "observables.tsv")]


def _protocol_paths(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _protocol_paths(value)
    elif isinstance(node, list):
        for value in node:
            yield from _protocol_paths(value)
    elif isinstance(node, str) and node.startswith("protocols/") and node.endswith((".yaml", ".yml")):
        yield node


def dataset_protocols(wildcards):
    """Protocol files that data/<dataset>/dataset.yaml refers to (conditions.tsv column protocol_file), so that
    editing a protocol re-runs the fits and predictions that simulate it. Read from the source, not from
    conditions.tsv, so the job graph is known before prepare runs. A joint dataset: those of its members."""
    members = JOINT[wildcards.dataset]["datasets"] if wildcards.dataset in JOINT else [wildcards.dataset]
    paths = set()
    for member in members:
        meta = Path("data", member, "dataset.yaml")
        if meta.is_file():
            with meta.open(encoding="utf-8") as fh:
                paths.update(_protocol_paths(yaml.safe_load(fh)))
    return sorted(paths)


def joint_member_tables(wildcards):
    """The tidy tables of every member of a joint dataset (rule combine)."""
    return expand("results/tidy/{member}/{table}.tsv", member=JOINT[wildcards.dataset]["datasets"],
                  table=("measurements", "conditions", "provenance"))


def joint_args(wildcards):
    """`--tidy-dir results/tidy/<member>` per member, and `--same-subjects` when config joint says so."""
    spec = JOINT[wildcards.dataset]
    args = [f"--tidy-dir results/tidy/{member}" for member in spec["datasets"]]
    return " ".join(args + (["--same-subjects"] if spec["same_subjects"] else []))


def models_fitted_to(dataset):
    return [m for d, m in FITS if d == dataset]


def comparison_posteriors(wildcards):
    return [f"results/fits/{m}/{wildcards.dataset}/posterior.nc" for m in models_fitted_to(wildcards.dataset)]


def comparison_args(wildcards):
    """`--posterior P --label M` for every model fitted to the dataset (the CLI takes repeated options)."""
    return " ".join(
        f"--posterior results/fits/{m}/{wildcards.dataset}/posterior.nc --label {m}"
        for m in models_fitted_to(wildcards.dataset)
    )


# ------------------------------------------------------------------------------------------------ targets
def final_outputs():
    """Targets of `all` - the outputs of prepare and data_overview for every dataset; of fit, diagnose, predict and
    report_fit for every (dataset, model) of FITS; of behaviours for every model; and of model_comparison for every
    dataset with two or more fitted models. Called after all rules are defined."""
    targets = expand(rules.prepare.output, dataset=DATASETS)
    for dataset, model in FITS:
        for step in (rules.fit, rules.diagnose, rules.predict, rules.report_fit):
            targets += expand(step.output, dataset=dataset, model=model)
    targets += expand(rules.data_overview.output, dataset=DATASETS)
    targets += expand(rules.behaviours.output, model=MODELS)
    compared = [d for d in FITTABLE if len(models_fitted_to(d)) > 1]
    targets += expand(rules.model_comparison.output, dataset=compared)
    if config["sbc"]["enabled"]:
        targets += sbc_outputs()
    return targets


def sbc_threads():
    """Threads of sbc_run (its replications run in parallel processes): config sbc.workers, else every core Snakemake
    was given (at most 16). Without --cores (`snakemake --report`, a cluster executor) asking for the core count
    raises: 4 threads then."""
    if config["sbc"]["workers"]:
        return config["sbc"]["workers"]
    try:
        cores = workflow.cores
    except Exception:  # WorkflowError: no total number of cores defined
        cores = None
    return max(1, min(16, int(cores))) if cores else 4


def sbc_outputs():
    """Targets of `sbc` (workflow/rules/sbc.smk): the rank tables and figures of the simulation-based calibration of
    config sbc.model at the design of config sbc.dataset."""
    where = dict(model=config["sbc"]["model"], dataset=config["sbc"]["dataset"])
    return expand(rules.sbc_run.output, **where) + expand(rules.sbc_figures.output, **where)
