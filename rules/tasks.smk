# Target-task data: synthetic counterparts written in the public formats (when no root is configured), then one
# HDF5 task file per task read from that format by the same reader that serves real data.
# Synthetic sets exist only for tasks whose root is left null: nothing is written under a configured root.

if SYNTHETIC_NCS:

    rule synthetic_ncs:
        input:
            annotations=f"{CT_ROOT}/annotations.csv",
            scans=ct_synthetic_scans,
        output:
            directory("results/synthetic/ncs"),
        log:
            f"{LOGS}/synthetic_tasks/ncs.log",
        benchmark:
            f"{BENCHMARKS}/synthetic_tasks/ncs.tsv"
        conda:
            ENV
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            splits=config["preprocess"]["ct"]["splits"],
            cube_size=config["tasks"]["ncs"]["cube_size"],
            seed=config["synthetic"]["seed"],
            code=code("synthetic_ncs"),
        script:
            "../workflow/scripts/synthetic_ncs.py"


if SYNTHETIC_TASK_SETS:

    rule synthetic_task:
        output:
            directory("results/synthetic/{dataset}"),
        log:
            f"{LOGS}/synthetic_tasks/{{dataset}}.log",
        benchmark:
            f"{BENCHMARKS}/synthetic_tasks/{{dataset}}.tsv"
        wildcard_constraints:
            dataset="|".join(SYNTHETIC_TASK_SETS),
        conda:
            ENV
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            settings=config["synthetic"]["tasks"],
            seed=config["synthetic"]["seed"],
            code=code("synthetic_task"),
        script:
            "../workflow/scripts/synthetic_task.py"


rule task_data:
    input:
        unpack(task_inputs),
    output:
        h5="results/tasks/{task}/data.h5",
        index="results/tasks/{task}/index.tsv",
        montage=report(
            "results/tasks/{task}/montage.png",
            category="Target tasks",
            subcategory="{task}",
            caption="../report/task_montage.rst",
        ),
    log:
        f"{LOGS}/task_data/{{task}}.log",
    benchmark:
        f"{BENCHMARKS}/task_data/{{task}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        settings=task_settings,
        synthetic=lambda wildcards: task_synthetic(wildcards.task),
        code=code("task_data"),
    script:
        "../workflow/scripts/task_data.py"
