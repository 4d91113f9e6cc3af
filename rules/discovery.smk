# Self-discovery (3D): autoencoder on whole-scan thumbnails -> latents -> kNN class plan -> pseudo-labelled patches.


rule autoencoder_ct:
    input:
        manifest="results/ct/scans.tsv",
        h5=ct_preprocessed_files(),
    output:
        model="results/ct/discovery/autoencoder/model.pt",
        history="results/ct/discovery/autoencoder/history.csv",
        loss=report("results/ct/discovery/autoencoder/loss.png", category="Self-discovery 3D"),
        reconstructions=report(
            "results/ct/discovery/autoencoder/reconstructions.png", category="Self-discovery 3D"
        ),
    params:
        settings=config["discovery"]["ct"]["autoencoder"],
        code=source_hash("autoencoder", "embedding", "preprocess_ct"),
    log:
        f"{LOGS}/autoencoder_ct.log",
    benchmark:
        f"{BENCHMARKS}/autoencoder_ct.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=600,
    conda:
        ENV
    script:
        "../workflow/scripts/autoencoder_ct.py"


rule embed_ct:
    input:
        manifest="results/ct/scans.tsv",
        h5=ct_preprocessed_files(),
        model=rules.autoencoder_ct.output.model,
        phantoms=[rules.synthetic_ct.output.phantoms] if SYNTHETIC_CT else [],
    output:
        latents="results/ct/discovery/latents.h5",
        plot=report("results/ct/discovery/latents.png", category="Self-discovery 3D"),
    params:
        code=source_hash("autoencoder", "embedding", "preprocess_ct"),
    log:
        f"{LOGS}/embed_ct.log",
    benchmark:
        f"{BENCHMARKS}/embed_ct.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        ENV
    script:
        "../workflow/scripts/embed_ct.py"


rule plan_ct:
    input:
        latents=rules.embed_ct.output.latents,
        h5=ct_preprocessed_files(),
    output:
        report("results/ct/discovery/classes.tsv", category="Self-discovery 3D"),
    params:
        settings=discovery_settings_ct(),
        code=source_hash("discovery", "self_discovery", "patches", "embedding"),
    log:
        f"{LOGS}/plan_ct.log",
    benchmark:
        f"{BENCHMARKS}/plan_ct.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        ENV
    script:
        "../workflow/scripts/plan_ct.py"


rule patches_ct:
    input:
        plan=rules.plan_ct.output[0],
        h5=ct_preprocessed_files(),
    output:
        h5="results/ct/discovery/patches.h5",
        montage=report("results/ct/discovery/patches.png", category="Self-discovery 3D"),
    params:
        settings=discovery_settings_ct(),
        code=source_hash("discovery", "self_discovery", "patches"),
    log:
        f"{LOGS}/patches_ct.log",
    benchmark:
        f"{BENCHMARKS}/patches_ct.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    conda:
        ENV
    script:
        "../workflow/scripts/patches_ct.py"
