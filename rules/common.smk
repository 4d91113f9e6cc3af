# Paths, input functions and wildcard constraints shared by the rules.
import glob
import hashlib

from semantic_genesis.methods import METHODS
from semantic_genesis.tasks.taskdata import TASKS
from semantic_genesis.readers import VOLUME_SUFFIXES
from semantic_genesis.synthetic import synthetic_ct_scans

ENV = "../envs/semantic_genesis.yaml"
LOGS = "results/logs"
BENCHMARKS = "results/benchmarks"


def source_hash(*modules):
    """Digest of the package modules a job runs; as a param, editing them reruns the job (the code trigger of
    Snakemake sees only the script file)."""
    digest = hashlib.sha256()
    for name in modules:
        digest.update(Path(PACKAGE_DIR, "semantic_genesis", f"{name}.py").read_bytes())
    return digest.hexdigest()[:16]


def canonical(settings):
    """A settings mapping with keys sorted at every level: Snakemake compares params by their text, so the order in
    which a config file happens to list keys must not trigger reruns."""
    if isinstance(settings, dict):
        return {k: canonical(settings[k]) for k in sorted(settings)}
    return settings


SYNTHETIC_CT = config["data"]["ct_root"] is None
SYNTHETIC_CXR = config["data"]["cxr_root"] is None
CT_ROOT = "results/synthetic/luna16" if SYNTHETIC_CT else config["data"]["ct_root"]
CXR_ROOT = "results/synthetic/chestxray14" if SYNTHETIC_CXR else config["data"]["cxr_root"]
SYNTHETIC_SCANS = synthetic_ct_scans(
    config["synthetic"]["seed"], config["synthetic"]["ct"]["patients"], config["synthetic"]["ct"]["subsets"]
)
SPLIT_OF_SUBSET = {
    subset: split for split, subsets in config["preprocess"]["ct"]["splits"].items() for subset in subsets
}


def _available_subsets():
    """Configured subsets that hold data; a missing one is reported, not fatal (partial LUNA16 downloads are common)."""
    if SYNTHETIC_CT:
        present = {subset for subset, _ in SYNTHETIC_SCANS}
    else:
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


wildcard_constraints:
    subset="|".join(CT_SUBSETS),
    kind="ct|cxr",
    method="|".join(["scratch", *METHODS]),
    task="|".join(TASKS),
    run=r"\d+",


def ct_subset_inputs(wildcards):
    """Scan headers (scans) and their data files (data) of one subset."""
    folder = os.path.join(CT_ROOT, wildcards.subset)
    if SYNTHETIC_CT:
        uids = [uid for subset, uid in SYNTHETIC_SCANS if subset == wildcards.subset]
        return {"scans": [f"{folder}/{u}.mhd" for u in uids], "data": [f"{folder}/{u}.raw" for u in uids]}
    scans = sorted(p for p in glob.glob(os.path.join(folder, "*")) if p.lower().endswith(VOLUME_SUFFIXES))
    data = sorted(glob.glob(os.path.join(folder, "*.raw")) + glob.glob(os.path.join(folder, "*.zraw")))
    return {"scans": scans, "data": data}


def ct_preprocessed_files():
    return expand("results/ct/preprocessed/{subset}.h5", subset=CT_SUBSETS)


def cxr_inputs(wildcards):
    """ChestX-ray14 index files and image folder."""
    return {
        "entries": f"{CXR_ROOT}/Data_Entry_2017.csv",
        "train_val": f"{CXR_ROOT}/train_val_list.txt",
        "test": f"{CXR_ROOT}/test_list.txt",
        "images": f"{CXR_ROOT}/images",
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
    return canonical(config["discovery"][wildcards.kind]["autoencoder"])


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


def pretrain_settings(wildcards):
    """Everything that decides a pretraining run's result: the kind's section, the method and the shared settings."""
    shared = {k: config["pretrain"][k] for k in ("restoration_policy", "transforms", "device", "amp", "augment")}
    return canonical(
        {**config["pretrain"][wildcards.kind], **shared, "method": wildcards.method, "dims": dims(wildcards)}
    )


def pretrain_outputs(kind):
    """Every pretraining artifact of one kind: each configured method's files and the transform gallery."""
    files = ["weights.pt", "encoder.pt", "architecture.json", "history.csv", "curves.png", "examples.png"]
    methods = config["pretrain"]["methods"]
    return [f"results/{kind}/pretrain/{m}/{f}" for m in methods for f in files] + [
        f"results/{kind}/pretrain/transforms.png"
    ]


# Target tasks: where each one's data comes from (a configured root, or its synthetic counterpart).
TASK_MODULES = {"ncc": "ncc", "ncs": "ncs", "lcs": "lits", "bms": "brats", "dxc": "dxc", "pxs": "siim"}
TASK_ROOTS = {
    task: config["data"][key] or f"results/synthetic/{dataset}"
    for task, key, dataset in (
        ("ncs", "ncs_root", "ncs"),
        ("lcs", "lits_root", "lits"),
        ("bms", "brats_root", "brats"),
        ("pxs", "siim_root", "siim"),
    )
}
FINETUNE_TASKS = config["finetune"]["tasks"]
TABLES = ["adding_semantics", "comparison_3d", "results_2d"]


def ct_synthetic_scans(wildcards):
    """The synthetic LUNA16 scans and phantom label maps that synthetic nodule cubes are cut from."""
    return rules.synthetic_ct.output.scans + rules.synthetic_ct.output.labels


def task_is_synthetic(wildcards):
    """Whether a task's data is the embedded synthetic counterpart (tables say so)."""
    task = wildcards.task
    if task == "ncc":
        return SYNTHETIC_CT
    if task == "dxc":
        return SYNTHETIC_CXR
    return TASK_ROOTS[task].startswith("results/synthetic/")


def task_inputs(wildcards):
    """The files a task's data is prepared from."""
    task = wildcards.task
    if task == "ncc":
        return {
            "candidates": f"{CT_ROOT}/candidates_V2.csv",
            "manifest": "results/ct/scans.tsv",
            "h5": ct_preprocessed_files(),
        }
    if task == "dxc":
        return {
            "h5": "results/cxr/images.h5",
            "manifest": "results/cxr/images.tsv",
            "entries": f"{CXR_ROOT}/Data_Entry_2017.csv",
        }
    if task == "ncs" and not SYNTHETIC_CT and not config["data"]["ncs_root"]:
        raise WorkflowError(
            "data.ncs_root is not set: synthetic nodule cubes are cut from the synthetic LUNA16 phantoms, which "
            "data.ct_root replaces; set data.ncs_root to your nodule cubes, or drop ncs from finetune.tasks"
        )
    return {"root": TASK_ROOTS[task]}


def task_settings(wildcards):
    """The task's config section; CT tasks also get the HU window of preprocessing."""
    settings = dict(config["tasks"][wildcards.task])
    if wildcards.task in ("ncc", "ncs", "lcs"):
        settings["hu_window"] = config["preprocess"]["ct"]["hu_window"]
    return canonical(settings)


def task_kind(task):
    """Which pretrained models serve a task: ct (3D) or cxr (2D)."""
    return "ct" if TASKS[task].dims == 3 else "cxr"


def finetune_inputs(wildcards):
    """The task file and, unless from scratch, the pretrained weights of the task's dimension."""
    inputs = {"data": f"results/tasks/{wildcards.task}/data.h5"}
    if wildcards.method != "scratch":
        folder = f"results/{task_kind(wildcards.task)}/pretrain/{wildcards.method}"
        inputs |= {name: f"{folder}/{name}.{ext}" for name, ext in (("weights", "pt"), ("encoder", "pt"))}
        inputs["architecture"] = f"{folder}/architecture.json"
    return inputs


def finetune_settings(wildcards):
    """Everything that decides one fine-tuning run's result."""
    shared = {k: config["finetune"][k] for k in ("label_fraction", "label_seed", "augment_flips", "device")}
    return canonical(
        {
            **config["finetune"][wildcards.task],
            **shared,
            "task": wildcards.task,
            "method": wildcards.method,
            "run": int(wildcards.run),
            "base_seed": config["finetune"]["seed"],
            # scratch gets the width of the pretrained networks it is compared with
            "base_width": config["pretrain"][task_kind(wildcards.task)]["base_width"],
        }
    )


def finetune_files(name, dims=None):
    """One fine-tuning artifact for every configured task (of one dimension, if given), method and run."""
    return [
        f"results/finetune/{task}/{method}/run{run}/{name}"
        for task in FINETUNE_TASKS
        if dims is None or TASKS[task].dims == dims
        for method in config["finetune"]["methods"]
        for run in range(config["finetune"]["runs"])
    ]
