# Self-discovery, for kind = ct (3D) and cxr (2D): autoencoder on whole scans or radiographs -> latents ->
# kNN class plan -> pseudo-labelled patches.


rule autoencoder:
    input:
        unpack(preprocessed),
    output:
        model="results/{kind}/discovery/autoencoder/model.pt",
        history="results/{kind}/discovery/autoencoder/history.csv",
        loss=report(
            "results/{kind}/discovery/autoencoder/loss.png",
            category="Self-discovery {kind}",
            caption="../report/autoencoder_loss.rst",
        ),
        reconstructions=report(
            "results/{kind}/discovery/autoencoder/reconstructions.png",
            category="Self-discovery {kind}",
            caption="../report/autoencoder_reconstructions.rst",
        ),
    log:
        f"{LOGS}/autoencoder/{{kind}}.log",
    benchmark:
        f"{BENCHMARKS}/autoencoder/{{kind}}.tsv"
    priority: 10
    conda:
        ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=600,
    params:
        dims=dims,
        size=autoencoder_input_size,
        settings=autoencoder_settings,
        code=code("autoencoder"),
    script:
        "../workflow/scripts/autoencoder.py"


rule embed:
    input:
        unpack(preprocessed),
        model=rules.autoencoder.output.model,
        phantoms=phantom_table,
    output:
        latents="results/{kind}/discovery/latents.h5",
        plot=report(
            "results/{kind}/discovery/latents.png", category="Self-discovery {kind}", caption="../report/latents.rst"
        ),
    log:
        f"{LOGS}/embed/{{kind}}.log",
    benchmark:
        f"{BENCHMARKS}/embed/{{kind}}.tsv"
    priority: 10
    conda:
        ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    params:
        dims=dims,
        size=autoencoder_input_size,
        code=code("embed"),
    script:
        "../workflow/scripts/embed.py"


rule plan:
    input:
        latents=rules.embed.output.latents,
        h5=lambda wildcards: preprocessed(wildcards)["h5"],
        manifest=lambda wildcards: preprocessed(wildcards)["manifest"],
    output:
        report(
            "results/{kind}/discovery/classes.tsv", category="Self-discovery {kind}", caption="../report/classes.rst"
        ),
    log:
        f"{LOGS}/plan/{{kind}}.log",
    benchmark:
        f"{BENCHMARKS}/plan/{{kind}}.tsv"
    priority: 10
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        dims=dims,
        settings=discovery_settings,
        code=code("plan"),
    script:
        "../workflow/scripts/plan.py"


rule patches:
    input:
        plan=rules.plan.output[0],
        h5=lambda wildcards: preprocessed(wildcards)["h5"],
    output:
        h5="results/{kind}/discovery/patches.h5",
        montage=report(
            "results/{kind}/discovery/patches.png", category="Self-discovery {kind}", caption="../report/patches.rst"
        ),
    log:
        f"{LOGS}/patches/{{kind}}.log",
    benchmark:
        f"{BENCHMARKS}/patches/{{kind}}.tsv"
    priority: 10
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        dims=dims,
        settings=discovery_settings,
        code=code("patches"),
    script:
        "../workflow/scripts/patches.py"
