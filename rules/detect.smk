# Detection: a temporal PCA basis fitted once, then detection + features per chunk.


rule feature_basis:
    input:
        chunks=get_pca_sample,
        noise="results/{recording}/preprocess/noise.h5",
    output:
        basis="results/{recording}/detect/basis.h5",
    params:
        recording=get_recording,
        margin_samples=get_margin("detect"),
        segments=get_pca_segments,
        detect=get_detect_settings,
        seed=config["seed"],
        code=CODE_VERSION,
    log:
        "results/{recording}/logs/feature_basis.log",
    benchmark:
        "results/{recording}/benchmarks/feature_basis.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/feature_basis.py"


rule detect:
    input:
        chunks=get_preprocessed_window("detect"),
        noise="results/{recording}/preprocess/noise.h5",
        basis="results/{recording}/detect/basis.h5",
    output:
        peaks=bulk("results/{recording}/detect/t{chunk}.npz"),
    params:
        recording=get_recording,
        chunk=get_chunk,
        margin_samples=get_margin("detect"),
        detect=get_detect_settings,
        code=CODE_VERSION,
    resources:
        mem_mb=get_job_mem_mb,
    log:
        "results/{recording}/logs/detect/t{chunk}.log",
    benchmark:
        "results/{recording}/benchmarks/detect/t{chunk}.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/detect.py"


rule merge_spikes:
    input:
        peaks=get_detected,
        basis="results/{recording}/detect/basis.h5",
    output:
        spikes="results/{recording}/spikes.h5",
    params:
        recording=get_recording,
        code=CODE_VERSION,
    log:
        "results/{recording}/logs/merge_spikes.log",
    benchmark:
        "results/{recording}/benchmarks/merge_spikes.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/merge_spikes.py"
