# Outputs users open: ground-truth scores, quality metrics, phy and NWB.


rule ground_truth:
    input:
        sorting="results/{recording}/sorting.h5",
        ground_truth=get_ground_truth,
    output:
        scores="results/{recording}/ground_truth.tsv",
    params:
        ground_truth=config["ground_truth"],
        code=CODE_VERSION,
    log:
        "results/{recording}/logs/ground_truth.log",
    benchmark:
        "results/{recording}/benchmarks/ground_truth.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/ground_truth.py"


rule metrics:
    input:
        sorting="results/{recording}/sorting.h5",
    output:
        metrics="results/{recording}/metrics.tsv",
    params:
        seed=config["seed"],
        code=CODE_VERSION,
    log:
        "results/{recording}/logs/metrics.log",
    benchmark:
        "results/{recording}/benchmarks/metrics.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/metrics.py"


rule export_phy:
    input:
        sorting="results/{recording}/sorting.h5",
        metrics="results/{recording}/metrics.tsv",
    output:
        params="results/{recording}/phy/params.py",
    params:
        recording=get_recording,
        code=CODE_VERSION,
    log:
        "results/{recording}/logs/export_phy.log",
    benchmark:
        "results/{recording}/benchmarks/export_phy.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/export_phy.py"


rule export_nwb:
    input:
        sorting="results/{recording}/sorting.h5",
        metrics="results/{recording}/metrics.tsv",
    output:
        nwb="results/{recording}/sorting.nwb",
    params:
        recording=get_recording,
        code=CODE_VERSION,
    log:
        "results/{recording}/logs/export_nwb.log",
    benchmark:
        "results/{recording}/benchmarks/export_nwb.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/export_nwb.py"
