# Paths, input functions and wildcard constraints shared by the rules.
import glob
import json
import re

from semantic_genesis.finetune.grid import labels_tag, run_folder
from semantic_genesis.methods import METHODS
from semantic_genesis.networks.package import EXPORTS
from semantic_genesis.runtime.provenance import code_digest
from semantic_genesis.tasks.taskdata import TASKS
from semantic_genesis.preprocess.readers import VOLUME_SUFFIXES, data_files
from semantic_genesis.synthetic.chest import synthetic_ct_scans

ENV = "../envs/semantic_genesis.yaml"
LOGS = "results/logs"
BENCHMARKS = "results/benchmarks"


def code(script):
    """Digest of a rule's script and of every package module it imports, directly or not: as a param, editing any
    of them reruns the rule and nothing else does (Snakemake's code trigger sees only the script file)."""
    return code_digest(PACKAGE_DIR, Path(PACKAGE_DIR, "scripts", f"{script}.py"))


def canonical(settings):
    """A settings mapping with keys sorted at every level: Snakemake compares params by their text, so the order in
    which a config file happens to list keys must not trigger reruns."""
    if isinstance(settings, dict):
        return {k: canonical(settings[k]) for k in sorted(settings)}
    return settings


# Data roots a user configures are read-only: nothing is ever written under them. With a root left null, the embedded
# synthetic data set is generated under results/synthetic/ instead, by rules that exist only then (rules/synthetic.smk,
# rules/tasks.smk). A configured root or file that is missing is an error before any job runs.
SYNTHETIC_CT = config["data"]["ct_root"] is None
SYNTHETIC_CXR = config["data"]["cxr_root"] is None
CT_ROOT = "results/synthetic/luna16" if SYNTHETIC_CT else config["data"]["ct_root"]
CXR_ROOT = "results/synthetic/chestxray14" if SYNTHETIC_CXR else config["data"]["cxr_root"]
NCC_CANDIDATES = config["data"]["ncc_candidates"] or f"{CT_ROOT}/candidates_V2.csv"
SYNTHETIC_SCANS = synthetic_ct_scans(
    config["synthetic"]["seed"], config["synthetic"]["ct"]["patients"], config["synthetic"]["ct"]["subsets"]
)
SPLIT_OF_SUBSET = {
    subset: split for split, subsets in config["preprocess"]["ct"]["splits"].items() for subset in subsets
}


def user_files(key, paths, reader, layout):
    """Paths under (or, for a file key, at) the configured data.<key>, each checked to exist: a missing one stops
    the run before any job, naming the key, the path, the job that reads it and the layout expected."""
    configured = config["data"][key]
    if key.endswith("_root") and not os.path.isdir(configured):
        raise WorkflowError(
            f"data.{key}: the folder {configured} does not exist (expected layout {layout}); fix the path in your config, "
            f"or set data.{key}: null to use the embedded synthetic data"
        )
    for path in paths:
        if not glob.glob(path):
            raise WorkflowError(
                f"data.{key} = {configured}: {path} is missing, which {reader} reads (expected layout {layout}); "
                f"add it there, or point data.{key} at a folder that has it"
            )
    return paths


def _available_subsets():
    """Configured subsets that hold data; a missing one is reported, not fatal (partial LUNA16 downloads are common)."""
    if SYNTHETIC_CT:
        present = {subset for subset, _ in SYNTHETIC_SCANS}
    else:
        user_files("ct_root", [], "rule preprocess_ct", "<root>/<subset>/<id>.mhd (+ .raw), or any SimpleITK volume")
        present = {s for s in SPLIT_OF_SUBSET if os.path.isdir(os.path.join(CT_ROOT, s))}
    for subset in sorted(set(SPLIT_OF_SUBSET) - present):
        print(f"note: configured CT subset '{subset}' has no data under {CT_ROOT}; skipped", file=sys.stderr)
    if not present & set(config["preprocess"]["ct"]["splits"]["train"]):
        raise WorkflowError(
            f"none of the training subsets {config['preprocess']['ct']['splits']['train']} exists under {CT_ROOT} "
            "(set data.ct_root to a LUNA16-style folder, or preprocess.ct.splits to its subset folder names)"
        )
    return sorted(present, key=lambda s: (len(s), s))


CT_SUBSETS = _available_subsets()


# A label fraction's folder (labels100, labels12.5) -> the fraction, as configured.
LABEL_FRACTIONS = {labels_tag(fraction): fraction for fraction in config["finetune"]["label_fractions"]}
# The tables' headline fraction (all labels, unless not configured): its curves and summary.
FULLEST_FRACTION = max(config["finetune"]["label_fractions"])


wildcard_constraints:
    subset="|".join(CT_SUBSETS),
    labels="|".join(re.escape(tag) for tag in LABEL_FRACTIONS),
    kind="ct|cxr",
    method="|".join(["scratch", *METHODS, *config["finetune"]["external"]]),
    task="|".join(TASKS),
    run=r"\d+",


def ct_subset_inputs(wildcards):
    """Scan headers (scans) and their data files (data) of one subset."""
    folder = os.path.join(CT_ROOT, wildcards.subset)
    if SYNTHETIC_CT:
        uids = [uid for subset, uid in SYNTHETIC_SCANS if subset == wildcards.subset]
        return {"scans": [f"{folder}/{u}.mhd" for u in uids], "data": [f"{folder}/{u}.raw" for u in uids]}
    scans = sorted(p for p in glob.glob(os.path.join(folder, "*")) if p.lower().endswith(VOLUME_SUFFIXES))
    # Wherever a header points (another folder, a LIST of slices), its data files are inputs, so editing one reruns
    # the subset; a missing one is not: preprocessing excludes that scan with the reason instead of failing the run.
    data = sorted({str(f) for scan in scans for f in data_files(scan) if f.is_file()})
    return {"scans": scans, "data": data}


def ct_manifest_inputs(wildcards):
    """The per-subset manifests and, when NCS test scans are kept out of pretraining, the NCS data naming them."""
    inputs = {"tsvs": expand("results/ct/preprocessed/{subset}.tsv", subset=CT_SUBSETS)}
    if config["preprocess"]["exclude_target_test_from_pretraining"]:
        if SYNTHETIC_NCS or config["data"]["ncs_root"]:
            inputs["ncs"] = TASK_ROOTS["ncs"]
        else:
            print("note: no NCS data (data.ncs_root) names test scans to keep out of pretraining", file=sys.stderr)
    return inputs


def ct_preprocessed_files():
    return expand("results/ct/preprocessed/{subset}.h5", subset=CT_SUBSETS)


CXR_LAYOUT = "images/<name>.png (or any SimpleITK 2D format), Data_Entry_2017.csv, train_val_list.txt, test_list.txt"


def cxr_inputs(wildcards):
    """ChestX-ray14 index files and image folder (a configured root is checked to hold them)."""
    files = {
        "entries": f"{CXR_ROOT}/Data_Entry_2017.csv",
        "train_val": f"{CXR_ROOT}/train_val_list.txt",
        "test": f"{CXR_ROOT}/test_list.txt",
        "images": f"{CXR_ROOT}/images",
    }
    if not SYNTHETIC_CXR:
        user_files("cxr_root", list(files.values()), "rule preprocess_cxr", CXR_LAYOUT)
    return files


def cxr_manifest_inputs(wildcards):
    """Every radiograph shard (images and manifest rows) and the index files the joined manifest checks."""
    shards = range(config["preprocess"]["cxr"]["shards"])
    return {
        "h5": [f"results/cxr/shards/{k}.h5" for k in shards],
        "tsv": [f"results/cxr/shards/{k}.tsv" for k in shards],
        "entries": f"{CXR_ROOT}/Data_Entry_2017.csv",
        "train_val": f"{CXR_ROOT}/train_val_list.txt",
    }


def synthetic_montages(kind):
    """The synthetic data's montage when that data source is synthetic, so a person can see what was generated."""
    synthetic = SYNTHETIC_CT if kind == "ct" else SYNTHETIC_CXR
    return [f"results/synthetic/montage_{kind}.png"] if synthetic else []


def discovery_settings(wildcards):
    """The discovery section of one kind without the autoencoder: an autoencoder change reaches the plan through
    the latents."""
    section = config["discovery"][wildcards.kind]
    return canonical({k: v for k, v in section.items() if k not in ("autoencoder", "input_size")})


def dims(wildcards):
    return 3 if wildcards.kind == "ct" else 2


def autoencoder_settings(wildcards):
    """The kind's autoencoder section and where it runs (GPU or CPU results differ in rounding)."""
    shared = {k: config["discovery"][k] for k in ("device", "amp")}
    return canonical({**config["discovery"][wildcards.kind]["autoencoder"], **shared})


def autoencoder_input_size(wildcards):
    """Radiographs are resized for the autoencoder; CT thumbnails already have its size."""
    return config["discovery"]["cxr"]["input_size"] if wildcards.kind == "cxr" else None


def preprocessed(wildcards):
    """Manifest and image files of one kind's preprocessing."""
    if wildcards.kind == "ct":
        return {"manifest": "results/ct/scans.tsv", "h5": ct_preprocessed_files()}
    return {"manifest": "results/cxr/images.tsv", "h5": ["results/cxr/images.h5"]}


def phantom_table(wildcards):
    """The synthetic CT phantoms' parameters, to colour the latent plot by anatomy."""
    return [rules.synthetic_ct.output.phantoms] if wildcards.kind == "ct" and SYNTHETIC_CT else []


def discovery_outputs(kind):
    """Every self-discovery artifact of one kind."""
    folder = f"results/{kind}/discovery"
    files = ["patches.h5", "patches.png", "classes.tsv", "latents.h5", "latents.png"]
    files += [f"autoencoder/{name}" for name in ("model.pt", "history.csv", "loss.png", "reconstructions.png")]
    return [f"{folder}/{name}" for name in files]


def method_section(kind, method):
    """The kind's pretraining section with the method's own overrides applied."""
    section = {k: v for k, v in config["pretrain"][kind].items() if k != "method_overrides"}
    return {**section, **config["pretrain"][kind]["method_overrides"].get(method, {})}


def pretrain_settings(wildcards):
    """Everything that decides a pretraining run's result: the method's section, the method and the shared settings."""
    keys = ("restoration_policy", "inpainting_loss", "self_classification_input", "transforms", "device", "amp")
    shared = {k: config["pretrain"][k] for k in (*keys, "augment")}
    section = method_section(wildcards.kind, wildcards.method)
    return canonical({**section, **shared, "method": wildcards.method, "dims": dims(wildcards)})


def pretrain_samples(wildcards):
    """The method's training samples: the self-discovered patches or the random crops."""
    name = (
        "discovery/patches"
        if method_section(wildcards.kind, wildcards.method)["data"] == "patches"
        else "pretrain/random_cubes"
    )
    return f"results/{wildcards.kind}/{name}.h5"


# The self-discovery keys random crops share: a change of classes or neighbours must not redo them.
RANDOM_CUBE_DISCOVERY_KEYS = ("crop_size", "margin_lo", "margin_hi", "air_threshold", "air_fraction")


def random_cube_settings(wildcards):
    """Crop counts and seed, with the kind's crop size, margins and air test."""
    section = config["discovery"][wildcards.kind]
    discovery = {k: section[k] for k in RANDOM_CUBE_DISCOVERY_KEYS if k in section}
    return canonical({"cubes": config["pretrain"]["random_cubes"], "discovery": discovery})


def pretrain_outputs(kind):
    """Every pretraining artifact of one kind: each configured method's files and the transform gallery."""
    files = ["weights.pt", "encoder.pt", "architecture.json", "history.csv", "curves.png", "examples.png"]
    files += ["model.safetensors", "config.json", "README.md"]
    methods = config["pretrain"]["methods"]
    return [f"results/{kind}/pretrain/{m}/{f}" for m in methods for f in files] + [
        f"results/{kind}/pretrain/transforms.png"
    ]


def exported_models():
    """torch.export programs of every configured method's encoder and U-Net, both kinds."""
    methods = config["pretrain"]["methods"]
    return [f"results/{kind}/pretrain/{m}/{part}.pt2" for kind in ("ct", "cxr") for m in methods for part in EXPORTS]


# Target tasks: where each one's data comes from (a configured root, or its synthetic counterpart).
TASK_DATA = {  # task: (root key, synthetic folder under results/synthetic, what the reader needs, layout)
    "ncs": ("ncs_root", "ncs", "index.csv", "index.csv (id, image, mask, split) + image and mask files"),
    "lcs": ("lits_root", "lits", "volume-*.nii*", "volume-N.nii and segmentation-N.nii (LiTS 2017)"),
    "bms": ("brats_root", "brats", "[HL]GG", "{HGG,LGG}/<subject>/<subject>_flair.nii.gz and _seg.nii.gz"),
    "pxs": ("siim_root", "siim", "train-rle.csv", "train-rle.csv and **/<ImageId>.dcm (SIIM-ACR)"),
}
TASK_ROOTS = {
    task: config["data"][key] or f"results/synthetic/{folder}" for task, (key, folder, *_) in TASK_DATA.items()
}
# Synthetic task sets are generated only for tasks without a root (NCS cubes come from the synthetic CT phantoms).
SYNTHETIC_TASK_SETS = [
    folder for task, (key, folder, *_) in TASK_DATA.items() if task != "ncs" and not config["data"][key]
]
SYNTHETIC_NCS = SYNTHETIC_CT and not config["data"]["ncs_root"]
DATASETS = {
    "ct": "LUNA16",
    "cxr": "ChestX-ray14",
    "ncc": "LUNA16 candidates",
    "ncs": "nodule cubes",
    "lcs": "LiTS 2017",
    "bms": "BraTS 2018",
    "dxc": "ChestX-ray14",
    "pxs": "SIIM-ACR pneumothorax",
}
FINETUNE_TASKS = config["finetune"]["tasks"]
TABLES = ["adding_semantics", "comparison_3d", "results_2d"]


def ct_synthetic_scans(wildcards):
    """The synthetic LUNA16 scans and phantom label maps that synthetic nodule cubes are cut from."""
    return rules.synthetic_ct.output.scans + rules.synthetic_ct.output.labels


def task_synthetic(task):
    """Whether a task's data is the embedded synthetic counterpart (tables say so)."""
    if task == "ncc":
        return SYNTHETIC_CT
    if task == "dxc":
        return SYNTHETIC_CXR
    return not config["data"][TASK_DATA[task][0]]


def data_source(name):
    """Where one kind's scans (ct, cxr) or one task's data come from: the record every artifact made from them keeps
    (with the manifest's digest, added by the job: provenance.data_record)."""
    if name in ("ct", "cxr"):
        root, synthetic = (CT_ROOT, SYNTHETIC_CT) if name == "ct" else (CXR_ROOT, SYNTHETIC_CXR)
    else:
        root = {"ncc": CT_ROOT, "dxc": CXR_ROOT}.get(name) or TASK_ROOTS[name]
        synthetic = task_synthetic(name)
    source = {"name": name, "dataset": DATASETS[name], "root": root, "synthetic": synthetic}
    if name == "ncc":
        source["candidates"] = NCC_CANDIDATES
    if name in PREPROCESSING_KEYS:  # how input values were made: the model card says it
        source["preprocessing"] = {k: config["preprocess"][name][k] for k in PREPROCESSING_KEYS[name]}
    return source


PREPROCESSING_KEYS = {"ct": ("hu_window", "spacing_mm", "orientation"), "cxr": ("size",)}


# Tasks whose test cases can come from the pretraining collection: the manifest their overlap is counted against.
OVERLAP_MANIFESTS = {"ncc": "results/ct/scans.tsv", "ncs": "results/ct/scans.tsv", "dxc": "results/cxr/images.tsv"}


def task_inputs(wildcards):
    """The files a task's data is prepared from (and the pretraining manifest its test cases are compared with); a
    configured root is checked to hold what its reader needs."""
    overlap = {"pretraining": OVERLAP_MANIFESTS[wildcards.task]} if wildcards.task in OVERLAP_MANIFESTS else {}
    return {**_task_sources(wildcards), **overlap}


def _task_sources(wildcards):
    """The files a task's data is read from."""
    task = wildcards.task
    if task == "ncc":
        candidates = [NCC_CANDIDATES]
        if not SYNTHETIC_CT:
            key = "ncc_candidates" if config["data"]["ncc_candidates"] else "ct_root"
            user_files(
                key,
                candidates,
                "rule task_data (ncc)",
                "LUNA16 candidates_V2.csv with seriesuid, coordX, coordY, coordZ, class",
            )
        return {"candidates": candidates[0], "manifest": "results/ct/scans.tsv", "h5": ct_preprocessed_files()}
    if task == "dxc":
        entries = f"{CXR_ROOT}/Data_Entry_2017.csv"
        if not SYNTHETIC_CXR:
            user_files("cxr_root", [entries], "rule task_data (dxc)", CXR_LAYOUT)
        return {"h5": "results/cxr/images.h5", "manifest": "results/cxr/images.tsv", "entries": entries}
    if task == "ncs" and not SYNTHETIC_CT and not config["data"]["ncs_root"]:
        raise WorkflowError(
            "data.ncs_root is not set: synthetic nodule cubes are cut from the synthetic LUNA16 phantoms, which "
            "data.ct_root replaces; set data.ncs_root to your nodule cubes, or drop ncs from finetune.tasks"
        )
    key, _, needed, layout = TASK_DATA[task]
    if config["data"][key]:
        user_files(key, [os.path.join(TASK_ROOTS[task], needed)], f"rule task_data ({task})", layout)
    if task == "bms" and config["tasks"]["bms"]["folds"]:
        return {"root": TASK_ROOTS[task], "folds": bms_fold_files()}
    return {"root": TASK_ROOTS[task]}


def bms_fold_files():
    """tasks.bms.folds, each checked to exist before any job runs."""
    folds = config["tasks"]["bms"]["folds"]
    for path in folds:
        if not os.path.isfile(path):
            raise WorkflowError(
                f"tasks.bms.folds: {path} does not exist; list fold files of subject ids (one per line, e.g. the "
                "authors' keras/downstream_tasks/data/bms/fold_1.csv, fold_2.csv, fold_3.csv; the last is the test "
                "fold), or set tasks.bms.folds: [] for a seeded split"
            )
    return folds


def task_settings(wildcards):
    """The task's config section; CT tasks also get the HU window of preprocessing."""
    settings = dict(config["tasks"][wildcards.task])
    if wildcards.task in ("ncc", "ncs", "lcs"):
        settings["hu_window"] = config["preprocess"]["ct"]["hu_window"]
    return canonical(settings)


def task_kind(task):
    """Which pretrained models serve a task: ct (3D) or cxr (2D)."""
    return "ct" if TASKS[task].dims == 3 else "cxr"


# External models (finetune.external): name -> a pretrained folder, or a released checkpoint file of the authors.
EXTERNAL = config["finetune"]["external"]


def external_folder(name):
    """An external model's pretrained folder: the configured folder itself (read, never written), or the import of
    a released checkpoint file under results/external/ (rule import_weights)."""
    path = EXTERNAL[name]
    return path if os.path.isdir(path) else f"results/external/{name}"


def external_dims(name):
    """2 or 3: the dimension of an external model, checked to exist before any job runs."""
    path = EXTERNAL[name]
    key = f"finetune.external.{name}"
    if os.path.isfile(path):
        return 3  # both released checkpoints (Models Genesis, Semantic Genesis) are 3D CT models
    architecture = os.path.join(path, "architecture.json")
    if not os.path.isfile(architecture):
        raise WorkflowError(
            f"{key}: {path} is neither a released checkpoint file nor a pretrained folder with architecture.json; "
            "point it at Genesis_Chest_CT.pt / semantic_genesis_chest_ct.pt, or at a folder written by "
            "`python -m semantic_genesis import-weights`"
        )
    with open(architecture) as handle:
        return int(json.load(handle)["dims"])


def finetune_methods(task):
    """The methods fine-tuned on a task: the configured ones, then the external models of the task's dimension."""
    dims = TASKS[task].dims
    return [*config["finetune"]["methods"], *(name for name in EXTERNAL if external_dims(name) == dims)]


def finetune_inputs(wildcards):
    """The task file and, unless from scratch, the pretrained weights (of the task's dimension, or an external
    model's)."""
    inputs = {"data": f"results/tasks/{wildcards.task}/data.h5", "index": f"results/tasks/{wildcards.task}/index.tsv"}
    if wildcards.method == "scratch":
        return inputs
    if wildcards.method in EXTERNAL:
        folder = external_folder(wildcards.method)
    else:
        folder = f"results/{task_kind(wildcards.task)}/pretrain/{wildcards.method}"
    inputs |= {name: f"{folder}/{name}.{ext}" for name, ext in (("weights", "pt"), ("encoder", "pt"))}
    inputs["architecture"] = f"{folder}/architecture.json"
    return inputs


def finetune_settings(wildcards):
    """Everything that decides one fine-tuning run's result."""
    shared = {k: config["finetune"][k] for k in ("label_seed", "augment_flips", "device")}
    return canonical(
        {
            **config["finetune"][wildcards.task],
            **shared,
            "label_fraction": LABEL_FRACTIONS[wildcards.labels],
            "task": wildcards.task,
            "method": wildcards.method,
            "run": int(wildcards.run),
            "base_seed": config["finetune"]["seed"],
            # scratch gets the width of the pretrained networks it is compared with
            "base_width": config["pretrain"][task_kind(wildcards.task)]["base_width"],
        }
    )


def finetune_files(name, dims=None, fractions=None):
    """One fine-tuning artifact for every configured task (of one dimension, if given), method, label fraction (or
    those given) and run."""
    return [
        f"{run_folder(task, method, fraction, run)}/{name}"
        for task in FINETUNE_TASKS
        if dims is None or TASKS[task].dims == dims
        for method in finetune_methods(task)
        for fraction in fractions or config["finetune"]["label_fractions"]
        for run in range(config["finetune"]["runs"])
    ]
