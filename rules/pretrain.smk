# Pretraining: one job per {kind} (ct = 3D, cxr = 2D) and {method}, on the self-discovered patches or on random crops
# (each method's `data`), plus a gallery of the restoration transforms.


rule random_cubes:
    input:
        manifest=lambda wildcards: preprocessed(wildcards)["manifest"],
        h5=lambda wildcards: preprocessed(wildcards)["h5"],
    output:
        "results/{kind}/pretrain/random_cubes.h5",
    log:
        f"{LOGS}/random_cubes/{{kind}}.log",
    benchmark:
        f"{BENCHMARKS}/random_cubes/{{kind}}.tsv"
    priority: 10
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        dims=dims,
        settings=random_cube_settings,
        code=code("random_cubes"),
    script:
        "../workflow/scripts/random_cubes.py"


rule pretrain:
    input:
        patches=pretrain_samples,
        # The manifest's digest goes into architecture.json with the data source (provenance).
        manifest=lambda wildcards: preprocessed(wildcards)["manifest"],
    output:
        weights="results/{kind}/pretrain/{method}/weights.pt",
        encoder="results/{kind}/pretrain/{method}/encoder.pt",
        architecture="results/{kind}/pretrain/{method}/architecture.json",
        # The same weights as a model package: tensors without pickle, what they are, and a model card.
        safetensors="results/{kind}/pretrain/{method}/model.safetensors",
        package_config="results/{kind}/pretrain/{method}/config.json",
        card="results/{kind}/pretrain/{method}/README.md",
        history="results/{kind}/pretrain/{method}/history.csv",
        curves=report(
            "results/{kind}/pretrain/{method}/curves.png",
            category="Pretraining {kind}",
            subcategory="{method}",
            caption="../report/pretrain_curves.rst",
        ),
        examples=report(
            "results/{kind}/pretrain/{method}/examples.png",
            category="Pretraining {kind}",
            subcategory="{method}",
            caption="../report/pretrain_examples.rst",
        ),
    log:
        f"{LOGS}/pretrain/{{kind}}/{{method}}.log",
    benchmark:
        f"{BENCHMARKS}/pretrain/{{kind}}/{{method}}.tsv"
    wildcard_constraints:
        method="|".join(METHODS),
    priority: 10
    conda:
        ENV
    # Torch threads on the CPU; on a GPU, DataLoader workers (threads - 1); shared among the processes of a
    # multi-GPU run. Snakemake caps threads at --cores and gpu at the profile's limit (profiles/default: this
    # machine's GPUs; gpu 0 trains on the CPU).
    threads: 8
    resources:
        # GPUs per job: above 1, one torchrun process per GPU (DistributedDataParallel).
        gpu=1,
        mem_mb=8000,
        runtime=1440,
    params:
        settings=pretrain_settings,
        source=lambda wildcards: data_source(wildcards.kind),
        code=code("pretrain"),
    script:
        "../workflow/scripts/pretrain.py"


rule export_model:
    input:
        weights="results/{kind}/pretrain/{method}/weights.pt",
        encoder="results/{kind}/pretrain/{method}/encoder.pt",
        architecture="results/{kind}/pretrain/{method}/architecture.json",
    output:
        encoder="results/{kind}/pretrain/{method}/encoder.pt2",
        unet="results/{kind}/pretrain/{method}/unet.pt2",
    log:
        f"{LOGS}/export_model/{{kind}}/{{method}}.log",
    benchmark:
        f"{BENCHMARKS}/export_model/{{kind}}/{{method}}.tsv"
    wildcard_constraints:
        method="|".join(METHODS),
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        code=code("export_model"),
    script:
        "../workflow/scripts/export_model.py"


rule transform_gallery:
    input:
        patches="results/{kind}/discovery/patches.h5",
    output:
        report(
            "results/{kind}/pretrain/transforms.png",
            category="Pretraining {kind}",
            caption="../report/transforms.rst",
        ),
    log:
        f"{LOGS}/transform_gallery/{{kind}}.log",
    benchmark:
        f"{BENCHMARKS}/transform_gallery/{{kind}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        restoration_policy=config["pretrain"]["restoration_policy"],
        transforms=canonical(config["pretrain"]["transforms"]),
        code=code("transform_gallery"),
    script:
        "../workflow/scripts/transform_gallery.py"
