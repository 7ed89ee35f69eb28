# Outputs users open: ground-truth scores, quality metrics, phy and NWB.


rule ground_truth:
    input:
        sorting=RESULTS + "/{recording}/sorting.h5",
        ground_truth=get_ground_truth,
    output:
        scores=RESULTS + "/{recording}/ground_truth.tsv",
    params:
        ground_truth=config["ground_truth"],
        code=CODE_VERSION,
    log:
        LOGS + "/ground_truth.log",
    benchmark:
        BENCH + "/ground_truth.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/ground_truth.py"


rule metrics:
    input:
        sorting=RESULTS + "/{recording}/sorting.h5",
    output:
        metrics=RESULTS + "/{recording}/metrics.tsv",
    params:
        seed=config["seed"],
        code=CODE_VERSION,
    log:
        LOGS + "/metrics.log",
    benchmark:
        BENCH + "/metrics.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/metrics.py"


rule export_phy:
    input:
        sorting=RESULTS + "/{recording}/sorting.h5",
        metrics=RESULTS + "/{recording}/metrics.tsv",
    output:
        params=RESULTS + "/{recording}/phy/params.py",
    params:
        recording=get_recording,
        code=CODE_VERSION,
    log:
        LOGS + "/export_phy.log",
    benchmark:
        BENCH + "/export_phy.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/export_phy.py"


rule export_nwb:
    input:
        sorting=RESULTS + "/{recording}/sorting.h5",
        metrics=RESULTS + "/{recording}/metrics.tsv",
    output:
        nwb=RESULTS + "/{recording}/sorting.nwb",
    params:
        recording=get_recording,
        code=CODE_VERSION,
    log:
        LOGS + "/export_nwb.log",
    benchmark:
        BENCH + "/export_nwb.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/export_nwb.py"
