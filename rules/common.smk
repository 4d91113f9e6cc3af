# Paths, input functions and wildcard constraints shared by the rules.
import glob
import hashlib

from semantic_genesis.methods import METHODS
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
    method="|".join(METHODS),


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
