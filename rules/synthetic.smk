# The embedded synthetic chest data set, written in LUNA16 and ChestX-ray14 formats.
# Its rules exist only where that source is synthetic (a data root left null), so nothing can ever be planned
# into a user's data folders.

if SYNTHETIC_CT:

    rule synthetic_ct:
        output:
            scans=[f"{CT_ROOT}/{subset}/{uid}.mhd" for subset, uid in SYNTHETIC_SCANS],
            data=[f"{CT_ROOT}/{subset}/{uid}.raw" for subset, uid in SYNTHETIC_SCANS],
            labels=[f"{CT_ROOT}/phantom-labels/{uid}.{ext}" for _, uid in SYNTHETIC_SCANS for ext in ("mhd", "zraw")],
            annotations=f"{CT_ROOT}/annotations.csv",
            candidates=f"{CT_ROOT}/candidates_V2.csv",
            phantoms=f"{CT_ROOT}/phantoms.tsv",
        log:
            f"{LOGS}/synthetic_ct.log",
        benchmark:
            f"{BENCHMARKS}/synthetic_ct.tsv"
        conda:
            ENV
        threads: 4
        resources:
            mem_mb=4000,
            runtime=60,
        params:
            seed=config["synthetic"]["seed"],
            settings=config["synthetic"]["ct"],
            code=code("synthetic_ct"),
        script:
            "../workflow/scripts/synthetic_ct.py"

    rule montage_ct:
        input:
            scans=rules.synthetic_ct.output.scans,
            phantoms=rules.synthetic_ct.output.phantoms,
        output:
            report("results/synthetic/montage_ct.png", category="Data", caption="../report/montage_ct.rst"),
        log:
            f"{LOGS}/montage_ct.log",
        benchmark:
            f"{BENCHMARKS}/montage_ct.tsv"
        conda:
            ENV
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        params:
            patients=4,
            code=code("montage_ct"),
        script:
            "../workflow/scripts/montage_ct.py"


if SYNTHETIC_CXR:

    rule synthetic_cxr:
        output:
            entries=f"{CXR_ROOT}/Data_Entry_2017.csv",
            train_val=f"{CXR_ROOT}/train_val_list.txt",
            test=f"{CXR_ROOT}/test_list.txt",
            images=directory(f"{CXR_ROOT}/images"),
        log:
            f"{LOGS}/synthetic_cxr.log",
        benchmark:
            f"{BENCHMARKS}/synthetic_cxr.tsv"
        conda:
            ENV
        threads: 4
        resources:
            mem_mb=2000,
            runtime=60,
        params:
            seed=config["synthetic"]["seed"],
            settings=config["synthetic"]["cxr"],
            phantom=config["synthetic"]["ct"],
            code=code("synthetic_cxr"),
        script:
            "../workflow/scripts/synthetic_cxr.py"

    rule montage_cxr:
        input:
            unpack(cxr_inputs),
        output:
            report("results/synthetic/montage_cxr.png", category="Data", caption="../report/montage_cxr.rst"),
        log:
            f"{LOGS}/montage_cxr.log",
        benchmark:
            f"{BENCHMARKS}/montage_cxr.tsv"
        conda:
            ENV
        threads: 1
        resources:
            mem_mb=1000,
            runtime=10,
        params:
            images=12,
            code=code("montage_cxr"),
        script:
            "../workflow/scripts/montage_cxr.py"
