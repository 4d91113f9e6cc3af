# Target-task data: synthetic counterparts written in the public formats (when no root is configured), then one
# HDF5 task file per task read from that format by the same reader that serves real data.


rule synthetic_ncs:
    input:
        annotations=f"{CT_ROOT}/annotations.csv",
        scans=ct_synthetic_scans,
    output:
        directory("results/synthetic/ncs"),
    params:
        splits=config["preprocess"]["ct"]["splits"],
        cube_size=config["tasks"]["ncs"]["cube_size"],
        seed=config["synthetic"]["seed"],
        code=source_hash("tasks/ncs"),
    log:
        f"{LOGS}/synthetic_tasks/ncs.log",
    benchmark:
        f"{BENCHMARKS}/synthetic_tasks/ncs.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    script:
        "../workflow/scripts/synthetic_task.py"


rule synthetic_task:
    output:
        directory("results/synthetic/{dataset}"),
    params:
        settings=config["synthetic"]["tasks"],
        seed=config["synthetic"]["seed"],
        code=lambda wildcards: source_hash(f"tasks/{wildcards.dataset}", "phantom", "brain_phantom"),
    log:
        f"{LOGS}/synthetic_tasks/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/synthetic_tasks/{{dataset}}.tsv"
    wildcard_constraints:
        dataset="lits|brats|siim",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    script:
        "../workflow/scripts/synthetic_task.py"


rule task_data:
    input:
        unpack(task_inputs),
    output:
        h5="results/tasks/{task}/data.h5",
        index="results/tasks/{task}/index.tsv",
        montage=report("results/tasks/{task}/montage.png", category="Target tasks", subcategory="{task}"),
    params:
        settings=task_settings,
        synthetic=task_is_synthetic,
        code=lambda wildcards: source_hash("tasks/taskdata", "tasks/prepare", f"tasks/{TASK_MODULES[wildcards.task]}"),
    log:
        f"{LOGS}/task_data/{{task}}.log",
    benchmark:
        f"{BENCHMARKS}/task_data/{{task}}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        ENV
    script:
        "../workflow/scripts/task_data.py"
