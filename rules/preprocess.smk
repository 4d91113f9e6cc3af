# 3D preprocessing (one job per LUNA16-style subset) and 2D preprocessing (one job for the radiograph set).


rule preprocess_ct:
    input:
        unpack(ct_subset_inputs),
    output:
        h5="results/ct/preprocessed/{subset}.h5",
        tsv="results/ct/preprocessed/{subset}.tsv",
    log:
        f"{LOGS}/preprocess_ct/{{subset}}.log",
    benchmark:
        f"{BENCHMARKS}/preprocess_ct/{{subset}}.tsv"
    priority: 10
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        settings={k: v for k, v in config["preprocess"]["ct"].items() if k != "splits"},
        split=lambda wildcards: SPLIT_OF_SUBSET[wildcards.subset],
        strict=config["preprocess"]["strict"],
        code=code("preprocess_ct"),
    script:
        "../workflow/scripts/preprocess_ct.py"


rule ct_manifest:
    input:
        unpack(ct_manifest_inputs),
    output:
        report("results/ct/scans.tsv", category="Data", caption="../report/scans.rst"),
    log:
        f"{LOGS}/ct_manifest.log",
    benchmark:
        f"{BENCHMARKS}/ct_manifest.tsv"
    priority: 10
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        code=code("ct_manifest"),
    script:
        "../workflow/scripts/ct_manifest.py"


rule preprocess_cxr:
    input:
        unpack(cxr_inputs),
    output:
        h5="results/cxr/shards/{shard}.h5",
        tsv="results/cxr/shards/{shard}.tsv",
    log:
        f"{LOGS}/preprocess_cxr/{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/preprocess_cxr/{{shard}}.tsv"
    wildcard_constraints:
        shard=r"\d+",
    priority: 10
    conda:
        ENV
    threads: 4
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        settings=config["preprocess"]["cxr"],
        strict=config["preprocess"]["strict"],
        shards=config["preprocess"]["cxr"]["shards"],
        code=code("preprocess_cxr"),
    script:
        "../workflow/scripts/preprocess_cxr.py"


rule cxr_manifest:
    input:
        unpack(cxr_manifest_inputs),
    output:
        h5="results/cxr/images.h5",
        tsv=report("results/cxr/images.tsv", category="Data", caption="../report/images.rst"),
    log:
        f"{LOGS}/cxr_manifest.log",
    benchmark:
        f"{BENCHMARKS}/cxr_manifest.tsv"
    priority: 10
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=code("cxr_manifest"),
    script:
        "../workflow/scripts/cxr_manifest.py"
