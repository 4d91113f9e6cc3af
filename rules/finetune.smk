# Fine-tuning: one job per task, initialisation (scratch or a pretraining method), label fraction and run; then the
# result tables and, over the label fractions, the label-efficiency figures.


rule finetune:
    input:
        unpack(finetune_inputs),
    output:
        metrics="results/finetune/{task}/{method}/{labels}/run{run}/metrics.json",
        predictions="results/finetune/{task}/{method}/{labels}/run{run}/predictions.h5",
        history="results/finetune/{task}/{method}/{labels}/run{run}/history.csv",
        curves="results/finetune/{task}/{method}/{labels}/run{run}/curves.png",
    log:
        f"{LOGS}/finetune/{{task}}/{{method}}/{{labels}}/run{{run}}.log",
    benchmark:
        f"{BENCHMARKS}/finetune/{{task}}/{{method}}/{{labels}}/run{{run}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=720,
    params:
        settings=finetune_settings,
        source=lambda wildcards: data_source(wildcards.task),
        code=code("finetune"),
    script:
        "../workflow/scripts/finetune.py"


if EXTERNAL:

    rule import_weights:
        input:
            checkpoint=lambda wildcards: EXTERNAL[wildcards.name],
        output:
            weights="results/external/{name}/weights.pt",
            encoder="results/external/{name}/encoder.pt",
            architecture="results/external/{name}/architecture.json",
            safetensors="results/external/{name}/model.safetensors",
            package_config="results/external/{name}/config.json",
            card="results/external/{name}/README.md",
        log:
            f"{LOGS}/import_weights/{{name}}.log",
        benchmark:
            f"{BENCHMARKS}/import_weights/{{name}}.tsv"
        wildcard_constraints:
            name="|".join(EXTERNAL),
        conda:
            ENV
        threads: 1
        resources:
            mem_mb=4000,
            runtime=10,
        params:
            code=code("import_weights"),
        script:
            "../workflow/scripts/import_weights.py"


rule tables:
    input:
        metrics=finetune_files("metrics.json"),
        histories=finetune_files("history.csv", fractions=[FULLEST_FRACTION]),
    output:
        csv=[
            report(
                f"results/tables/{name}.csv",
                category="Results",
                subcategory="Tables",
                caption="../report/tables.rst",
            )
            for name in TABLES
        ],
        text=[f"results/tables/{name}.{ext}" for name in TABLES for ext in ("md", "tex")],
        runs="results/tables/runs.csv",
        numbers="results/tables/summary.csv",
        summary=report("results/tables/summary.md", category="Results", caption="../report/summary.rst"),
        bars=report("results/tables/adding_semantics.png", category="Results", caption="../report/adding_semantics.rst"),
        curves=[
            report(f"results/tables/curves_{task}.png", category="Results", caption="../report/finetune_curves.rst")
            for task in FINETUNE_TASKS
        ],
    log:
        f"{LOGS}/tables.log",
    benchmark:
        f"{BENCHMARKS}/tables.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        label_fraction=FULLEST_FRACTION,
        code=code("tables"),
    script:
        "../workflow/scripts/tables.py"


rule label_efficiency:
    input:
        metrics=finetune_files("metrics.json"),
    output:
        table=report(
            "results/tables/label_efficiency.csv",
            category="Results",
            subcategory="Label efficiency",
            caption="../report/label_efficiency.rst",
        ),
        text="results/tables/label_efficiency.md",
        figures=[
            report(
                f"results/tables/label_efficiency_{task}.png",
                category="Results",
                subcategory="Label efficiency",
                caption="../report/label_efficiency.rst",
            )
            for task in FINETUNE_TASKS
        ],
    log:
        f"{LOGS}/label_efficiency.log",
    benchmark:
        f"{BENCHMARKS}/label_efficiency.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=code("label_efficiency"),
    script:
        "../workflow/scripts/label_efficiency.py"
